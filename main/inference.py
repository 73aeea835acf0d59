"""Inference: test splits or one audio file -> per-frame FLAME vertices, motion and 287-dim coefficients.

Evaluation mode (every sample of the ``INFER.split`` JSONs of every dataset of the config)::

    python inference.py --config config/faceformer.yaml [--checkpoint P] [--overwrite] [SECTION.key=value ...]

writes, for each sample (DESIGN.md 6)::

    {INFER.output_root}/{INFER.exp_name}/{DATASET}/{STYLE_ID}/{i}.npy   (5023,3) float32, i = 0..N-1, nothing else
    {INFER.coeff_root}/{INFER.exp_name}/{DATASET}/{STYLE_ID}/motion.npy      (N,51) float32
                                                            /coeffs287.npy   (N,287) float32
                                                            /meta.json       sample_id, dataset, style_id, speaker,
                                                                             audio_path, fps, n_frames, checkpoint,
                                                                             condition_style

The model predicts motion at the checkpoint's DATA.target_fps (25 by default; a run config with
another framing is refused). ``INFER.output_fps: native`` (default) resamples it to the sample's
own fps with the linear rule of DESIGN.md 3, so N = round(T * fps / target_fps) equals the ground-truth
frame count (MultiModal200: 20 fps); a number resamples to that rate instead. Vertices are FLAME of
the motion with the sample's shape (its first ``FLAME.n_shape`` dims, as in training) or zeros.

Single-audio mode (any sample rate, channel count and length)::

    python inference.py [--config CFG] --audio speech.wav [--style STYLE] [--out DIR] [--render]

writes ``DIR/vertices/{i}.npy``, ``DIR/motion.npy``, ``DIR/coeffs287.npy``, ``DIR/meta.json`` and with
``--render`` ``DIR/video.mp4`` (main/render.py). Default DIR: ``results/single/<wav stem>``; output fps
DATA.target_fps unless ``INFER.output_fps`` is a number; vertices use zero shape and ``FLAME.model_path``.

Streaming (main/stream.py, README "Live / streaming")::

    python inference.py --audio speech.wav --stream [--chunk_ms 200] [--lookahead_ms 300] [--left_context_ms 1000]
    ... | python inference.py --audio - [--stdout_vertices]     (raw 16-bit mono 16 kHz PCM on stdin)

feeds the audio chunk by chunk as if live and writes the single-audio files, each frame's vertices as
soon as the frame is final, plus ``DIR/stream_stats.json``. ``INFER.attention_window`` (default 600
frames) bounds the decoder's attention in every mode.

Checkpoint: ``--checkpoint``, else ``INFER.checkpoint``, else ``{TRAIN.save_path}/best_model.pth``. The
model is built from the MODEL section saved in the checkpoint (the weights must fit it) and its style
classes are the checkpoint's ``styles``. A test speaker that is not a training style is conditioned on
``INFER.condition_style`` (default: the first training style), which the log says.

Results are written whole or not at all (main/results.py): each sample's folders are filled under a
temporary name and renamed into place, ``meta.json`` last. Existing results are never overwritten
silently: a sample that already has results (complete, or left incomplete by a killed run) is an error
unless ``--overwrite`` (``INFER.overwrite=true``: redo all) or ``--resume`` (``INFER.resume=true``: keep
complete samples, make the missing ones). Temporary folders of a crashed run are removed and reported.
Before generating, the output folders are checked for writability and free space for the planned
frames. Two test samples mapping to one folder are an error before anything is written. Ctrl-C /
SIGTERM stop at once (the sample in progress is discarded) with a line saying how to continue.

Log file (console + file, appended): ``--log FILE``, else ``DIR/inference.log`` in single-audio mode, and
in evaluation mode one derived from ``INFER.output_root``: for a relative root,
``<its first component>/inference.log`` (the default root gives ``results/inference.log``); for an
absolute root, ``<the nearest ancestor folder named results>/inference.log``, or
``<parent of the root>/inference.log`` if there is none.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass

if __name__ == "__main__":  # run as a script: make the repo importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from dataset.audio import fit_audio_to_frames, load_audio, normalize_audio  # noqa: E402
from dataset.flame_params import resample_motion  # noqa: E402
from main import results as RT  # noqa: E402
from main.checkpoint import check_state_dict, load_checkpoint  # noqa: E402
from utils.config import Config, load_config  # noqa: E402
from utils.errors import DataError, Interrupted, UserError, run_reporting_user_errors  # noqa: E402
from utils.framing import DEFAULT_FPS, WAV2VEC2_SAMPLE_RATE, framing_from_config  # noqa: E402
from utils.runtime import pick_device, setup_logger  # noqa: E402

DEFAULT_CONFIG = "config/faceformer.yaml"
# Raw RMS below this (-80 dBFS) counts as silence. normalize_audio maps a raw RMS s to
# s / sqrt(s^2 + 1e-7), so in normalised audio the same threshold is a std of about 0.3.
SILENT_RMS = 1e-4
SILENT_NORMALISED_STD = 0.3

log = logging.getLogger("inference")


class InferenceError(UserError, RuntimeError):
    """Inference cannot run as asked (bad audio, unknown style, existing results, ...); the message
    names the file, key or folder and what was expected."""


class AudioError(InferenceError):
    """An audio file that cannot be used: missing, empty, corrupt or shorter than one frame."""


# ----------------------------------------------------------------------------------------------
# Paths
# ----------------------------------------------------------------------------------------------

def default_log_file(path: str) -> str:
    """Where the evaluation-mode log goes for an output root (see the module docstring)."""
    path = os.path.normpath(path)
    if not os.path.isabs(path):
        return os.path.join(path.split(os.sep)[0], "inference.log")
    parts = path.split(os.sep)
    for i in range(len(parts) - 1, 0, -1):
        if parts[i] == "results":
            return os.path.join(os.sep.join(parts[:i + 1]) or os.sep, "inference.log")
    return os.path.join(os.path.dirname(path), "inference.log")


def results_mode(overwrite: bool, resume: bool) -> str:
    """--overwrite / --resume (or INFER.overwrite / INFER.resume) -> main/results.py's select_todo mode."""
    if overwrite and resume:
        raise InferenceError("--overwrite (INFER.overwrite) and --resume (INFER.resume) exclude each other: "
                             "redo all results, or keep the complete ones")
    return "overwrite" if overwrite else "resume" if resume else "new"


# ----------------------------------------------------------------------------------------------
# Audio
# ----------------------------------------------------------------------------------------------

def read_speech(path: str, sr: int = WAV2VEC2_SAMPLE_RATE, logger: logging.Logger | None = None,
                fps: float = DEFAULT_FPS, normalise: bool = True) -> np.ndarray:
    """Audio file of any rate / channel count -> (N,) float32 mono at ``sr``, normalised (raw with
    ``normalise=False``: streaming normalises as the audio arrives).

    Defined behaviour for bad input: missing, empty (0 bytes or 0 samples), corrupt, truncated, or
    shorter than one motion frame at ``fps`` (40 ms at 25 fps) -> AudioError naming the file (and
    its duration); all-silent audio works (normalisation gives zeros, not NaN) with a warning.
    """
    logger = logger or log
    if not os.path.isfile(path):
        raise AudioError(f"audio file not found: {path}")
    if os.path.getsize(path) == 0:
        raise AudioError(f"audio file {path} is empty (0 bytes); expected a wav/flac/ogg/mp3 with speech")
    try:
        raw = load_audio(path, sr)
    except DataError as e:
        raise AudioError(str(e)) from None
    seconds = raw.shape[0] / sr
    if seconds < 1.0 / fps:
        raise AudioError(f"audio file {path} is {seconds * 1000:.1f} ms long; expected at least "
                         f"{1000 / fps:.0f} ms (one motion frame at {fps} fps)")
    rms = float(np.sqrt(np.mean(np.square(raw, dtype=np.float64))))
    if rms < SILENT_RMS:
        logger.warning("audio file %s is silent (RMS %.2g < %.0e): the face will barely move", path, rms,
                       SILENT_RMS)
    if not normalise:
        return raw.astype(np.float32)
    audio = normalize_audio(raw)
    if not np.isfinite(audio).all():  # normalize_audio's eps should make this impossible; never pass NaN on
        raise AudioError(f"audio file {path}: normalisation produced NaN/inf (RMS {rms:.3g})")
    return audio


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------

def resolve_checkpoint(cfg, checkpoint: str | None) -> str:
    path = checkpoint or cfg.INFER.checkpoint or os.path.join(cfg.TRAIN.save_path, "best_model.pth")
    if not os.path.isfile(path):
        how = ("--checkpoint" if checkpoint else "INFER.checkpoint" if cfg.INFER.checkpoint
               else "TRAIN.save_path (best_model.pth in it)")
        raise InferenceError(f"checkpoint not found: {path} (from {how}); train first (python train.py "
                             f"--config ...) or pass --checkpoint PATH")
    return path


def load_model(path: str, cfg, device: torch.device, logger: logging.Logger | None = None):
    """Checkpoint -> (FaceFormer in eval mode on ``device``, style class names).

    The MODEL section saved in the checkpoint is used (it is what the weights were trained with);
    the config's is only a fallback for checkpoints without one.
    """
    from models.faceformer import FaceFormer
    from models.wav2vec import AudioEncoderLoadError

    logger = logger or log
    ckpt = load_checkpoint(path)  # data only (weights_only), layout checked; CheckpointError otherwise
    styles = [str(s) for s in ckpt["styles"]]
    saved = (ckpt.get("config") or {}).get("MODEL")
    model_cfg = Config(dict(saved)) if saved else cfg.MODEL
    framing = checkpoint_framing(ckpt, cfg, path)
    try:
        model = FaceFormer(model_cfg, n_styles=len(styles), framing=framing)
    except AudioEncoderLoadError as err:
        # The checkpoint holds every weight; the pretrained files are only needed for the wav2vec2
        # architecture. So an offline machine can still run it: build the architecture from
        # MODEL.audio_encoder_config, or Wav2Vec2Config()'s defaults (= wav2vec2-base-960h) when that is
        # unset, with random init; the strict load_state_dict below proves the guess fits.
        logger.warning("%s\nBuilding the wav2vec2 architecture from MODEL.audio_encoder_config (None = "
                       "wav2vec2-base) instead; the checkpoint supplies the weights.", err)
        offline_cfg = Config(dict(model_cfg, audio_encoder_pretrained=False))
        model = FaceFormer(offline_cfg, n_styles=len(styles), framing=framing)
        try:
            check_state_dict(ckpt["model"], model, path)
        except UserError:
            raise err from None
    else:
        check_state_dict(ckpt["model"], model, path)  # names missing / unexpected / mismatched weights
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    logger.info("checkpoint %s (epoch %s), %d style classes: %s", path, ckpt.get("epoch", "?"), len(styles),
                styles)
    return model, styles


def checkpoint_framing(ckpt: dict, cfg, path: str):
    """The framing the checkpoint was trained with (its saved DATA/MODEL sections; the run config's
    for checkpoints without them). A run config with another framing is refused: the audio would be
    cut into frames the model was not trained on."""
    saved = ckpt.get("config") or {}
    trained = framing_from_config(saved, f"checkpoint {path}") if "DATA" in saved and "MODEL" in saved \
        else framing_from_config(cfg)
    check_framing(trained, cfg, path)
    return trained


def check_framing(trained, cfg, path: str):
    run = framing_from_config(cfg)
    if trained != run:
        raise InferenceError(f"checkpoint {path} was trained with DATA.sample_rate={trained.sample_rate}, "
                             f"DATA.target_fps={trained.fps}, but this run's config has DATA.sample_rate="
                             f"{run.sample_rate}, DATA.target_fps={run.fps}: use the training config or set "
                             f"DATA.target_fps={trained.fps} DATA.sample_rate={trained.sample_rate}")


def pick_condition_style(cfg, styles: list[str]) -> str:
    """INFER.condition_style (checked) or the first training style."""
    name = cfg.INFER.condition_style
    if name is None:
        return styles[0]
    if str(name) not in styles:
        raise InferenceError(f"INFER.condition_style is '{name}', which is not a trained style; trained "
                             f"styles: {', '.join(styles)}")
    return str(name)


def window_frames(cfg) -> tuple[int, int]:
    """(window, overlap) in frames from INFER.window_seconds / overlap_seconds, checked."""
    w, o = cfg.INFER.window_seconds, cfg.INFER.overlap_seconds
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (w, o)) or w <= 0:
        raise InferenceError(f"INFER.window_seconds ({w!r}) must be a positive number of seconds and "
                             f"INFER.overlap_seconds ({o!r}) a number")
    fps = framing_from_config(cfg).fps
    window, overlap = max(1, int(round(w * fps))), int(round(o * fps))
    if not 0 <= 2 * overlap < window:
        raise InferenceError(f"INFER.overlap_seconds ({o}) must be >= 0 and less than half of "
                             f"INFER.window_seconds ({w})")
    return window, overlap


def attention_window(cfg) -> int | None:
    """INFER.attention_window checked: frames the decoder attends (None = unbounded, from 0)."""
    w = cfg.INFER.attention_window
    if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 or w != int(w):
        raise InferenceError(f"INFER.attention_window is {w!r}; expected a whole number of frames (0 = unbounded)")
    return int(w) or None


def check_infer_config(cfg):
    """INFER values that would otherwise fail late, after some results were written."""
    window_frames(cfg)
    attention_window(cfg)
    b = cfg.INFER.batch_size
    if isinstance(b, bool) or not isinstance(b, int) or b < 1:
        raise InferenceError(f"INFER.batch_size is {b!r}; expected a positive integer")
    framing_from_config(cfg)  # DATA.sample_rate / DATA.target_fps the model can honour (ConfigError)


@contextlib.contextmanager
def full_fp32():
    """TF32 off for the block (cuDNN enables it for convolutions by default). Measured on an H100 with
    a small model: TF32 in the wav2vec2 CNN changed the generated motion by 2e-3 relative, which the
    autoregressive loop carries on; without it GPU and CPU agree to 4e-5. Results should not depend
    on the machine, and inference is cheap."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@torch.no_grad()
def generate_motion(model, audios: list[torch.Tensor], style_idx: list[int], n_frames: list[int], cfg,
                    device: torch.device, progress: bool = False) -> list[np.ndarray]:
    """Generate one batch of clips. audios: (N_b,) normalised 16 kHz tensors; returns (T_b,51) arrays.

    Clips are right-padded to the longest; generation is causal, so each clip's first T_b frames do
    not depend on the padding. Long audio (> INFER.window_seconds) is encoded in overlapping windows.
    ``progress``: a tqdm bar over generated frames (one decoder step = one call of the output map).
    """
    B, n_max = len(audios), max(int(a.shape[0]) for a in audios)
    audio = torch.zeros(B, n_max)
    mask = torch.zeros(B, n_max, dtype=torch.bool)
    for b, a in enumerate(audios):
        audio[b, :a.shape[0]] = a
        mask[b, :a.shape[0]] = True
    window, overlap = window_frames(cfg)
    bar = tqdm(total=max(n_frames), desc="generate", unit="frame", disable=not progress, leave=False)

    def one_frame(*_):  # a forward hook's return value would replace the output: return None
        bar.update(1)
    hook = model.output_map.register_forward_hook(one_frame) if progress else None
    try:
        with full_fp32():
            out = model.generate(audio.to(device), torch.tensor(style_idx, dtype=torch.long, device=device),
                                 max(n_frames), audio_mask=mask.to(device), window_frames=window,
                                 overlap_frames=overlap, attention_window=attention_window(cfg))
    finally:
        if hook is not None:
            hook.remove()
        bar.close()
    out = out.float().cpu().numpy()
    return [np.ascontiguousarray(out[b, :t]) for b, t in enumerate(n_frames)]


def to_output_fps(motion25: np.ndarray, fps: float, model_fps: float = DEFAULT_FPS) -> np.ndarray:
    """(T,51) at the model's ``model_fps`` (DATA.target_fps, 25 by default) -> (round(T * fps / model_fps), 51)
    float32, linear rule of DESIGN.md 3."""
    if float(fps) == model_fps:
        return motion25.astype(np.float32)
    return resample_motion(motion25, model_fps, float(fps)).astype(np.float32)


def sample_arrays(flame, motion: np.ndarray, shape: np.ndarray | None,
                  detail: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The coefficient-tree arrays of a sample: motion (T,51) and coeffs287 (T,287), float32; the
    287's detail block is ``detail`` (128,) (the sample's EMOCA detail code) or zeros."""
    from models.flame import motion_to_coeffs287
    return {"motion": motion.astype(np.float32),
            "coeffs287": np.asarray(motion_to_coeffs287(motion, shape=shape, detail=detail),
                                    dtype=np.float32)}


# ----------------------------------------------------------------------------------------------
# Evaluation mode
# ----------------------------------------------------------------------------------------------

@dataclass
class Job:
    """One test sample and where its results go."""
    ref: object            # dataset.data_item.SampleRef
    vert_dir: str
    coeff_dir: str
    style: str             # the training style it is conditioned on
    out_fps: float


RERUN_HOW = ("rerun with --resume (INFER.resume=true) to keep complete samples and make the missing ones, "
             "with --overwrite (INFER.overwrite=true) to redo all, or set another INFER.exp_name")


def check_clashes(cfg, refs):
    """Two samples with the same output folder (dataset + style id) -> ResultsError listing them all."""
    RT.check_clashes([(RT.sample_dirs(cfg, r.dataset, r.style_id)[0], f"sample '{r.sample_id}' ({r.json_path})")
                      for r in refs], "give each test sample its own style_id in the JSON")


def plan_jobs(cfg, refs, styles: list[str], logger: logging.Logger | None = None) -> list[Job]:
    """SampleRefs -> Jobs (output folders, conditioning style, output fps); logs untrained speakers."""
    logger = logger or log
    fallback = pick_condition_style(cfg, styles)
    jobs, untrained = [], {}
    for ref in refs:
        if ref.speaker in styles:
            style = ref.speaker
        else:
            style = fallback
            untrained.setdefault(ref.speaker, []).append(ref.sample_id)
        out_fps = ref.fps if cfg.INFER.output_fps == "native" else float(cfg.INFER.output_fps)
        jobs.append(Job(ref, *RT.sample_dirs(cfg, ref.dataset, ref.style_id), style, out_fps))
    for speaker, ids in untrained.items():
        logger.info("speaker '%s' (%d test sample(s)) is not a training style: conditioned on '%s' "
                    "(INFER.condition_style)", speaker, len(ids), fallback)
    return jobs


def jobs_to_write(cfg, jobs: list[Job], mode: str, flames: dict, logger: logging.Logger) -> list[Job]:
    """Clean a crashed run's temporary folders, pick the jobs ``mode`` asks for (select_todo), and check
    that their results fit: writable folders, free space for the planned frames."""
    dirs = [(j.vert_dir, j.coeff_dir) for j in jobs]
    RT.clean_stale_temps([d for pair in dirs for d in pair], logger)
    todo = [j for j, t in zip(jobs, RT.select_todo(dirs, mode, RERUN_HOW)) if t]
    if mode == "resume":
        logger.info("--resume: %d complete sample(s) kept, %d to generate", len(jobs) - len(todo), len(todo))
    need = {os.path.join(cfg.INFER.output_root, cfg.INFER.exp_name): 0,
            os.path.join(cfg.INFER.coeff_root, cfg.INFER.exp_name): 0}
    vert_root, coeff_root = need
    for j in todo:
        frames = int(round(_audio_seconds(j.ref.audio_path) * j.out_fps)) + 1
        n_vertices = int(flames[j.ref.dataset].v_template.shape[0])
        need[vert_root] += RT.sample_bytes(frames, n_vertices) - RT.sample_bytes(frames, 0)
        need[coeff_root] += RT.sample_bytes(frames, 0)
    RT.check_can_write(need, "inference results")
    return todo


def run_test_splits(cfg, checkpoint: str | None = None, overwrite: bool = False,
                    logger: logging.Logger | None = None, resume: bool = False) -> list[dict]:
    """Evaluation inference over every dataset's ``INFER.split`` JSONs. Returns the summary rows
    (dataset, samples, frames, audio_s, wall_s, rtf)."""
    from dataset.dataset import FaceDataset
    from dataset.index import split_refs
    from models.flame import load_flame_for

    logger = logger or log
    inf = cfg.INFER
    mode = results_mode(bool(overwrite or inf.overwrite), bool(resume or inf.resume))
    split = inf.split or "test"
    if os.path.abspath(inf.output_root) == os.path.abspath(inf.coeff_root):
        raise InferenceError(f"INFER.output_root and INFER.coeff_root are both {inf.output_root}; the vertex "
                             f"folders must hold nothing but frames: give the coefficients another root")
    check_infer_config(cfg)

    ckpt_path = os.path.abspath(resolve_checkpoint(cfg, checkpoint))
    device = pick_device(inf.device, logger)

    # 1. Plan and check every output folder before anything is loaded or written.
    all_refs = split_refs(cfg, split, problems=[])  # bad entries are reported by the validation below
    if not all_refs and not any(ds.get(split) for ds in cfg.DATA.datasets.values()):
        raise InferenceError(f"no dataset of the config has a '{split}' split (DATA.datasets.*.{split})")
    check_clashes(cfg, all_refs)
    model, styles = load_model(ckpt_path, cfg, device, logger)
    flames = {name: load_flame_for(cfg, name, device=device) for name in {r.dataset for r in all_refs}}
    jobs = jobs_to_write(cfg, plan_jobs(cfg, all_refs, styles, logger), mode, flames, logger)

    # 2. Load-check every sample once (DATA.bad_samples: error raises here, skip leaves them out).
    data = FaceDataset(cfg, split, styles, train=False, check=True, log=logger)
    index_of = {(r.json_path, r.sample_id): i for i, r in enumerate(data.refs)}
    jobs = [j for j in jobs if (j.ref.json_path, j.ref.sample_id) in index_of]
    style_index = {s: i for i, s in enumerate(styles)}
    logger.info("%s split: %d sample(s) to generate, output %s, coefficients %s, output fps %s", split,
                len(jobs), os.path.join(inf.output_root, inf.exp_name), os.path.join(inf.coeff_root, inf.exp_name),
                inf.output_fps)

    rows, written = [], 0
    batch_size = int(inf.batch_size)
    try:
        for name in cfg.DATA.datasets:
            ds_jobs = [j for j in jobs if j.ref.dataset == name]
            if not ds_jobs:
                continue
            t0 = time.perf_counter()
            # Longest first, so a batch holds clips of similar length (little padding).
            order = sorted(ds_jobs, key=lambda j: -_audio_seconds(j.ref.audio_path))
            n_frames_out, audio_s = 0, 0.0
            bar = tqdm(total=len(order), desc=f"{split}/{name}", unit="clip")
            for s in range(0, len(order), batch_size):
                batch = order[s:s + batch_size]
                items = [data[index_of[(j.ref.json_path, j.ref.sample_id)]] for j in batch]
                for j, it in zip(batch, items):
                    if float(it["audio"].std()) < SILENT_NORMALISED_STD:
                        logger.warning("%s: audio %s is silent", j.ref.where, j.ref.audio_path)
                motions = generate_motion(model, [it["audio"] for it in items],
                                          [style_index[j.style] for j in batch],
                                          [int(it["n_frames"]) for it in items], cfg, device)
                for j, it, m25 in zip(batch, items, motions):
                    motion = to_output_fps(m25, j.out_fps, model.framing.fps)
                    shape = it["shape"].numpy()
                    meta = RT.build_meta(j.ref.sample_id, name, j.ref.style_id, j.ref.speaker, j.ref.audio_path,
                                         j.out_fps, motion.shape[0], ckpt_path, j.style)
                    RT.write_sample(j.vert_dir, j.coeff_dir, flames[name].motion_to_vertices(motion, shape),
                                    sample_arrays(flames[name], motion, shape, it["detail"].numpy()), meta)
                    written += 1
                    n_frames_out += motion.shape[0]
                    audio_s += int(it["n_frames"]) / model.framing.fps
                bar.update(len(batch))
            bar.close()
            wall = time.perf_counter() - t0
            rows.append({"dataset": name, "samples": len(ds_jobs), "frames": n_frames_out, "audio_s": audio_s,
                         "wall_s": wall, "rtf": wall / audio_s if audio_s else float("nan")})
    except (Interrupted, KeyboardInterrupt) as e:
        signum = getattr(e, "signum", signal.SIGINT)
        raise Interrupted(signum, f"interrupted ({signal.Signals(signum).name}) after {written} of {len(jobs)} "
                                  f"sample(s); complete samples are kept, the one in progress was discarded; "
                                  f"continue with --resume (INFER.resume=true)") from None
    logger.info("summary (%s, checkpoint %s):\n%s", split, ckpt_path, format_summary(rows))
    return rows


def _audio_seconds(path: str) -> float:
    """Duration from the file header (cheap); 0 if unreadable (the load reports the real error)."""
    try:
        import soundfile as sf
        return float(sf.info(path).duration)
    except Exception:
        return 0.0


def format_summary(rows: list[dict]) -> str:
    """Per-dataset table plus a total: samples, frames, seconds of audio, wall seconds, real-time factor."""
    head = f"{'dataset':<20} {'samples':>8} {'frames':>9} {'audio_s':>9} {'wall_s':>8} {'RTF':>7}"
    lines = [head, "-" * len(head)]
    total = {"dataset": "total", "samples": 0, "frames": 0, "audio_s": 0.0, "wall_s": 0.0}
    for r in rows + ([total] if len(rows) != 1 else []):
        if r is not total:
            for k in ("samples", "frames", "audio_s", "wall_s"):
                total[k] += r[k]
        else:
            total["rtf"] = total["wall_s"] / total["audio_s"] if total["audio_s"] else float("nan")
        lines.append(f"{r['dataset']:<20} {r['samples']:>8d} {r['frames']:>9d} {r['audio_s']:>9.1f} "
                     f"{r['wall_s']:>8.1f} {r['rtf']:>7.3f}")
    lines.append("RTF = wall seconds / audio seconds (< 1: faster than real time)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Single-audio mode
# ----------------------------------------------------------------------------------------------

def run_single(cfg, audio_path: str, style: str | None = None, checkpoint: str | None = None,
               out_dir: str | None = None, overwrite: bool = False, render: bool = False,
               logger: logging.Logger | None = None, loaded: tuple | None = None, resume: bool = False) -> dict:
    """One audio file -> DIR/vertices/{i}.npy, DIR/motion.npy, DIR/coeffs287.npy, DIR/meta.json
    (+ DIR/video.mp4 with ``render``). Returns the meta dict (plus ``out_dir``). Progress bars over the
    generated and the written frames. ``resume``: a complete DIR is kept as it is.

    ``loaded``: a ``(model, styles)`` pair from ``load_model`` to reuse (several files, benchmarks);
    by default the checkpoint is loaded here."""
    from models.flame import load_flame_for

    logger = logger or log
    mode = results_mode(bool(overwrite or cfg.INFER.overwrite), bool(resume or cfg.INFER.resume))
    out_dir = out_dir or os.path.join("results", "single", os.path.splitext(os.path.basename(audio_path))[0])
    vert_dir = os.path.join(out_dir, "vertices")
    RT.clean_stale_temps([vert_dir, os.path.join(out_dir, RT.META)], logger)
    if mode == "resume" and RT.is_complete(vert_dir, out_dir):
        logger.info("--resume: %s already holds complete results: nothing to do", out_dir)
        return dict(RT.read_meta(out_dir), out_dir=out_dir)
    files = [os.path.join(out_dir, n) for n in ("motion.npy", "coeffs287.npy", RT.META, "video.mp4")]
    if mode == "new" and ((os.path.isdir(vert_dir) and os.listdir(vert_dir)) or any(map(os.path.exists, files))):
        raise InferenceError(f"{out_dir} already holds results; rerun with --overwrite to replace them, "
                             f"--resume to keep them if complete, or choose another --out")
    fr = framing_from_config(cfg)
    out_fps = fr.fps if cfg.INFER.output_fps == "native" else float(cfg.INFER.output_fps)
    check_infer_config(cfg)

    # Audio and style problems are reported before the (slow) model load.
    audio = read_speech(audio_path, fr.sample_rate, logger, fr.fps)
    ckpt_path = os.path.abspath(resolve_checkpoint(cfg, checkpoint))
    device = pick_device(cfg.INFER.device, logger)
    model, styles = loaded or load_model(ckpt_path, cfg, device, logger)
    check_framing(model.framing, cfg, ckpt_path)  # also for a model loaded by the caller
    if style is None:
        style = pick_condition_style(cfg, styles)
        logger.info("no --style given: conditioning on '%s' (trained styles: %s)", style, ", ".join(styles))
    elif style not in styles:
        raise InferenceError(f"--style '{style}' is not a trained style; trained styles: {', '.join(styles)}")

    t0 = time.perf_counter()
    n = fr.frames_in(audio.shape[0])
    flame = load_flame_for(cfg, None, device=device)
    n_out = int(round(n * out_fps / fr.fps))
    RT.check_can_write({out_dir: RT.sample_bytes(n_out, int(flame.v_template.shape[0]))}, "results")
    audio = fit_audio_to_frames(audio, n, fr.samples_per_frame)  # cut or zero-pad by < half a frame
    motion25 = generate_motion(model, [torch.from_numpy(audio)], [styles.index(style)], [n], cfg, device,
                               progress=True)[0]
    motion = to_output_fps(motion25, out_fps, fr.fps)
    from main.stream import VertexFrames
    verts = VertexFrames(flame, motion)  # (T,V,3), converted chunk by chunk as they are written

    if os.path.exists(files[-1]):
        os.remove(files[-1])  # a video of earlier results must not pass for these
    meta = RT.build_meta(os.path.splitext(os.path.basename(audio_path))[0], None, style, None, audio_path,
                         out_fps, motion.shape[0], ckpt_path, style)
    RT.write_sample(vert_dir, out_dir, verts, sample_arrays(flame, motion, None), meta, coeff_in_place=True,
                    progress=True)
    wall = time.perf_counter() - t0
    logger.info("%s: %.2f s of audio -> %d frames at %s fps in %s (%.1f s, RTF %.3f)", audio_path,
                n / fr.fps, motion.shape[0], out_fps, out_dir, wall, wall / (n / fr.fps))
    if render:
        try:
            from main.render import render_sequence
        except ImportError as e:
            raise InferenceError(f"--render needs main/render.py and its dependencies (pyrender, trimesh, "
                                 f"imageio-ffmpeg): {e}") from None
        mp4 = os.path.join(out_dir, "video.mp4")
        render_sequence(verts, flame.faces, mp4, out_fps, audio=os.path.abspath(audio_path))
        logger.info("video: %s", mp4)
    return dict(meta, out_dir=out_dir)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="FaceFormer inference: the test splits of a config (default) or one audio file (--audio).",
        epilog="Overrides: SECTION.key=value, e.g. INFER.exp_name=run2 INFER.output_fps=25 INFER.device=cpu")
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML config (default {DEFAULT_CONFIG})")
    p.add_argument("--checkpoint", help="model checkpoint (default INFER.checkpoint, else "
                                        "TRAIN.save_path/best_model.pth)")
    p.add_argument("--overwrite", action="store_true", help="replace existing results (INFER.overwrite=true)")
    p.add_argument("--resume", action="store_true", help="keep complete results, make the missing ones, e.g. "
                                                         "after a crash (INFER.resume=true)")
    p.add_argument("--audio", help="single-audio mode: this audio file (any rate / channels / length)")
    p.add_argument("--style", help="single-audio mode: trained style to condition on (default: the first)")
    p.add_argument("--out", help="single-audio mode: output folder (default results/single/<audio stem>)")
    p.add_argument("--render", action="store_true", help="single-audio mode: also render DIR/video.mp4")
    p.add_argument("--log", help="log file (default: see the module docstring; results/inference.log)")
    p.add_argument("--stream", action="store_true", help="single-audio mode fed chunk by chunk as if live "
                   "(main/stream.py); --audio - reads raw 16-bit mono 16 kHz PCM from stdin (always streaming)")
    p.add_argument("--chunk_ms", type=float, help="streaming: chunk length (default INFER.stream_chunk_ms)")
    p.add_argument("--lookahead_ms", type=float, help="streaming: lookahead (default INFER.stream_lookahead_ms)")
    p.add_argument("--left_context_ms", type=float, help="streaming: past audio the encoder sees, < 0 = all "
                                                         "(default INFER.stream_left_context_ms)")
    p.add_argument("--stdout_vertices", action="store_true", help="streaming: also write each frame's vertices "
                   "to stdout as soon as final, raw float32 (V,3) little-endian bytes (the log goes to stderr)")
    p.add_argument("overrides", nargs="*", help="SECTION.key=value")
    args = p.parse_intermixed_args(argv)
    args.stream = args.stream or args.audio == "-"
    if args.stream and (args.audio is None or args.render):
        p.error("--stream needs --audio FILE (or --audio - for stdin) and does not --render")
    if not args.stream and (args.chunk_ms is not None or args.lookahead_ms is not None
                            or args.left_context_ms is not None or args.stdout_vertices):
        p.error("--chunk_ms, --lookahead_ms, --left_context_ms and --stdout_vertices belong to --stream")
    if args.audio is None and (args.style or args.out or args.render):
        p.error("--style, --out and --render belong to single-audio mode: give --audio too")
    return args


def cli(argv=None):
    """Run as the command line asks; raises a UserError (utils/errors.py) on user errors and
    Interrupted on SIGINT/SIGTERM."""
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.audio:
        stem = "stdin" if args.audio == "-" else os.path.splitext(os.path.basename(args.audio))[0]
        out = args.out = args.out or os.path.join("results", "single", stem)
        logger = setup_logger("inference", args.log or os.path.join(out, "inference.log"))
        if args.stream:
            from main.stream import run_stream
            return run_stream(cfg, args, logger)
        logger.info("single-audio inference: %s (config %s, overrides %s)", args.audio, args.config, args.overrides)
        return run_single(cfg, args.audio, args.style, args.checkpoint, out, args.overwrite, args.render, logger,
                          resume=args.resume)
    logger = setup_logger("inference", args.log or default_log_file(cfg.INFER.output_root))
    logger.info("inference on the %s split (config %s, overrides %s)", cfg.INFER.split, args.config, args.overrides)
    return run_test_splits(cfg, args.checkpoint, args.overwrite, logger, resume=args.resume)


def main(argv=None):
    """cli() with user errors and interrupts as one line (console and, once set up, the log file) and
    exit status 1 / 130 (SIGINT) / 143 (SIGTERM)."""
    run_reporting_user_errors("inference", cli, argv, logger=logging.getLogger("inference"))


if __name__ == "__main__":
    main()
