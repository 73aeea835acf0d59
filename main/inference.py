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

The model predicts 25 fps motion. ``INFER.output_fps: native`` (default) resamples it to the sample's
own fps with the linear rule of DESIGN.md 3, so N = round(T25 * fps / 25) equals the ground-truth
frame count (MultiModal200: 20 fps); a number resamples to that rate instead. Vertices are FLAME of
the motion with the sample's shape (its first ``FLAME.n_shape`` dims, as in training) or zeros.

Single-audio mode (any sample rate, channel count and length)::

    python inference.py [--config CFG] --audio speech.wav [--style STYLE] [--out DIR] [--render]

writes ``DIR/vertices/{i}.npy``, ``DIR/motion.npy``, ``DIR/coeffs287.npy``, ``DIR/meta.json`` and with
``--render`` ``DIR/video.mp4`` (main/render.py). Default DIR: ``results/single/<wav stem>``; output fps
25 unless ``INFER.output_fps`` is a number; vertices use zero shape and ``FLAME.model_path``.

Checkpoint: ``--checkpoint``, else ``INFER.checkpoint``, else ``{TRAIN.save_path}/best_model.pth``. The
model is built from the MODEL section saved in the checkpoint (the weights must fit it) and its style
classes are the checkpoint's ``styles``. A test speaker that is not a training style is conditioned on
``INFER.condition_style`` (default: the first training style), which the log says.

Existing results are never overwritten silently: a non-empty output folder is an error unless
``--overwrite`` (or ``INFER.overwrite=true``), in which case the folder is emptied first so no stale
frames remain. Two test samples mapping to one folder are an error before anything is written.

Log file (console + file, appended): ``--log FILE``, else ``DIR/inference.log`` in single-audio mode, and
in evaluation mode one derived from ``INFER.output_root``: for a relative root,
``<its first component>/inference.log`` (the default root gives ``results/inference.log``); for an
absolute root, ``<the nearest ancestor folder named results>/inference.log``, or
``<parent of the root>/inference.log`` if there is none.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from dataset.data_item import DataError, audio_frames, load_audio, normalize_audio, resample_motion  # noqa: E402
from utils.config import Config, ConfigError, load_config  # noqa: E402
from utils.utils import pick_device, setup_logger  # noqa: E402

DEFAULT_CONFIG = "config/faceformer.yaml"
MOTION_FPS = 25          # the model's frame rate (DATA.target_fps is 25 in every config)
# Raw RMS below this (-80 dBFS) counts as silence. normalize_audio maps a raw RMS s to
# s / sqrt(s^2 + 1e-7), so in normalised audio the same threshold is a std of about 0.3.
SILENT_RMS = 1e-4
SILENT_NORMALISED_STD = 0.3

log = logging.getLogger("inference")


class InferenceError(RuntimeError):
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


def _nonempty_dir(path: str) -> bool:
    return os.path.isdir(path) and bool(os.listdir(path))


def fresh_dir(path: str):
    """Make ``path`` an empty folder (the caller has checked that overwriting is allowed)."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)
    os.makedirs(path)


# ----------------------------------------------------------------------------------------------
# Audio
# ----------------------------------------------------------------------------------------------

def read_speech(path: str, sr: int = 16000, logger: logging.Logger | None = None) -> np.ndarray:
    """Audio file of any rate / channel count -> (N,) float32 mono at ``sr``, normalised.

    Defined behaviour for bad input: missing, empty (0 bytes or 0 samples), corrupt, or shorter than
    one motion frame (40 ms) -> AudioError naming the file (and its duration); all-silent audio works
    (normalisation gives zeros, not NaN) with a warning.
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
    if seconds < 1.0 / MOTION_FPS:
        raise AudioError(f"audio file {path} is {seconds * 1000:.1f} ms long; expected at least "
                         f"{1000 / MOTION_FPS:.0f} ms (one motion frame at {MOTION_FPS} fps)")
    rms = float(np.sqrt(np.mean(np.square(raw, dtype=np.float64))))
    if rms < SILENT_RMS:
        logger.warning("audio file %s is silent (RMS %.2g < %.0e): the face will barely move", path, rms,
                       SILENT_RMS)
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
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise InferenceError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "styles" not in ckpt:
        raise InferenceError(f"checkpoint {path}: expected a dict with 'model' and 'styles' (written by "
                             f"python train.py), got {type(ckpt).__name__} with keys "
                             f"{sorted(ckpt) if isinstance(ckpt, dict) else '-'}")
    styles = [str(s) for s in ckpt["styles"]]
    if not styles:
        raise InferenceError(f"checkpoint {path}: has no style classes")
    saved = (ckpt.get("config") or {}).get("MODEL")
    model_cfg = Config(dict(saved)) if saved else cfg.MODEL
    try:
        model = FaceFormer(model_cfg, n_styles=len(styles))
    except AudioEncoderLoadError as err:
        # The checkpoint holds every weight; the pretrained files are only needed for the wav2vec2
        # architecture. So an offline machine can still run it: build the architecture from
        # MODEL.audio_encoder_config, or Wav2Vec2Config()'s defaults (= wav2vec2-base-960h) when that is
        # unset, with random init; the strict load_state_dict below proves the guess fits.
        logger.warning("%s\nBuilding the wav2vec2 architecture from MODEL.audio_encoder_config (None = "
                       "wav2vec2-base) instead; the checkpoint supplies the weights.", err)
        offline_cfg = Config(dict(model_cfg, audio_encoder_pretrained=False))
        model = FaceFormer(offline_cfg, n_styles=len(styles))
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError:
            raise err from None
    else:
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise InferenceError(f"checkpoint {path}: weights do not fit the model built from its MODEL "
                                 f"config: {str(e).splitlines()[0]}") from None
    model.to(device).eval()
    logger.info("checkpoint %s (epoch %s), %d style classes: %s", path, ckpt.get("epoch", "?"), len(styles),
                styles)
    return model, styles


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
    window, overlap = max(1, int(round(w * MOTION_FPS))), int(round(o * MOTION_FPS))
    if not 0 <= 2 * overlap < window:
        raise InferenceError(f"INFER.overlap_seconds ({o}) must be >= 0 and less than half of "
                             f"INFER.window_seconds ({w})")
    return window, overlap


def check_infer_config(cfg):
    """INFER values that would otherwise fail late, after some results were written."""
    window_frames(cfg)
    b = cfg.INFER.batch_size
    if isinstance(b, bool) or not isinstance(b, int) or b < 1:
        raise InferenceError(f"INFER.batch_size is {b!r}; expected a positive integer")
    if int(cfg.DATA.target_fps) != MOTION_FPS:
        raise InferenceError(f"DATA.target_fps is {cfg.DATA.target_fps}; the model runs at {MOTION_FPS} fps")
    if int(cfg.DATA.sample_rate) != 16000:
        raise InferenceError(f"DATA.sample_rate is {cfg.DATA.sample_rate}; wav2vec2 expects 16000")


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
                    device: torch.device) -> list[np.ndarray]:
    """Generate one batch of clips. audios: (N_b,) normalised 16 kHz tensors; returns (T_b,51) arrays.

    Clips are right-padded to the longest; generation is causal, so each clip's first T_b frames do
    not depend on the padding. Long audio (> INFER.window_seconds) is encoded in overlapping windows.
    """
    B, n_max = len(audios), max(int(a.shape[0]) for a in audios)
    audio = torch.zeros(B, n_max)
    mask = torch.zeros(B, n_max, dtype=torch.bool)
    for b, a in enumerate(audios):
        audio[b, :a.shape[0]] = a
        mask[b, :a.shape[0]] = True
    window, overlap = window_frames(cfg)
    with full_fp32():
        out = model.generate(audio.to(device), torch.tensor(style_idx, dtype=torch.long, device=device),
                             max(n_frames), audio_mask=mask.to(device), window_frames=window,
                             overlap_frames=overlap)
    out = out.float().cpu().numpy()
    return [np.ascontiguousarray(out[b, :t]) for b, t in enumerate(n_frames)]


def to_output_fps(motion25: np.ndarray, fps: float) -> np.ndarray:
    """(T25,51) at 25 fps -> (round(T25 * fps / 25), 51) float32, linear rule of DESIGN.md 3."""
    if float(fps) == MOTION_FPS:
        return motion25.astype(np.float32)
    return resample_motion(motion25, MOTION_FPS, float(fps)).astype(np.float32)


def write_frames(folder: str, vertices: np.ndarray):
    """{folder}/{i}.npy, one (V,3) float32 array per frame, i = 0..T-1."""
    os.makedirs(folder, exist_ok=True)
    for i in range(vertices.shape[0]):
        np.save(os.path.join(folder, f"{i}.npy"), np.ascontiguousarray(vertices[i], dtype=np.float32))


def write_coeffs(folder: str, flame, motion: np.ndarray, shape: np.ndarray | None, meta: dict):
    """motion.npy (T,51), coeffs287.npy (T,287) and meta.json in ``folder``."""
    os.makedirs(folder, exist_ok=True)
    coeffs = np.asarray(flame.motion_to_coeffs287(motion, shape=shape), dtype=np.float32)
    np.save(os.path.join(folder, "motion.npy"), motion.astype(np.float32))
    np.save(os.path.join(folder, "coeffs287.npy"), coeffs)
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)


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


def vertex_dir(cfg, ref) -> str:
    return os.path.join(cfg.INFER.output_root, cfg.INFER.exp_name, ref.dataset, ref.style_id)


def check_clashes(cfg, refs):
    """Two samples with the same output folder (dataset + style id) -> InferenceError listing them all."""
    owner, clashes = {}, []
    for ref in refs:
        folder = vertex_dir(cfg, ref)
        first = owner.setdefault(folder, ref)
        if first is not ref:
            clashes.append(f"samples '{first.sample_id}' ({first.json_path}) and '{ref.sample_id}' "
                           f"({ref.json_path}) both map to {folder}")
    if clashes:
        raise InferenceError(f"{len(clashes)} output folder clash(es), nothing written (give each test sample "
                             f"its own style_id in the JSON):\n  " + "\n  ".join(clashes))


def plan_jobs(cfg, refs, styles: list[str], logger: logging.Logger | None = None) -> list[Job]:
    """SampleRefs -> Jobs (output folders, conditioning style, output fps); logs untrained speakers."""
    logger = logger or log
    inf = cfg.INFER
    fallback = pick_condition_style(cfg, styles)
    jobs, untrained = [], {}
    for ref in refs:
        vert_dir = vertex_dir(cfg, ref)
        if ref.speaker in styles:
            style = ref.speaker
        else:
            style = fallback
            untrained.setdefault(ref.speaker, []).append(ref.sample_id)
        out_fps = ref.fps if inf.output_fps == "native" else float(inf.output_fps)
        jobs.append(Job(ref, vert_dir, os.path.join(inf.coeff_root, inf.exp_name, ref.dataset, ref.style_id),
                        style, out_fps))
    for speaker, ids in untrained.items():
        logger.info("speaker '%s' (%d test sample(s)) is not a training style: conditioned on '%s' "
                    "(INFER.condition_style)", speaker, len(ids), fallback)
    return jobs


def check_writable(folders: list[str], overwrite: bool):
    """Refuse non-empty output folders unless overwriting; names them."""
    existing = [f for f in folders if _nonempty_dir(f)]
    if existing and not overwrite:
        shown = "\n  ".join(existing[:10]) + (f"\n  ... and {len(existing) - 10} more" if len(existing) > 10 else "")
        raise InferenceError(f"{len(existing)} output folder(s) already hold results; rerun with --overwrite "
                             f"(or INFER.overwrite=true) to replace them, or set another INFER.exp_name:\n  {shown}")


def run_test_splits(cfg, checkpoint: str | None = None, overwrite: bool = False,
                    logger: logging.Logger | None = None) -> list[dict]:
    """Evaluation inference over every dataset's ``INFER.split`` JSONs. Returns the summary rows
    (dataset, samples, frames, audio_s, wall_s, rtf)."""
    from dataset.dataset import FaceDataset, split_refs
    from models.flame import load_flame_for

    logger = logger or log
    inf = cfg.INFER
    overwrite = bool(overwrite or inf.overwrite)
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
    jobs = plan_jobs(cfg, all_refs, styles, logger)
    check_writable([d for j in jobs for d in (j.vert_dir, j.coeff_dir)], overwrite)

    # 2. Load-check every sample once (DATA.bad_samples: error raises here, skip leaves them out).
    data = FaceDataset(cfg, split, styles, train=False, check=True, log=logger)
    good = {(r.json_path, r.sample_id) for r in data.refs}
    index_of = {(r.json_path, r.sample_id): i for i, r in enumerate(data.refs)}
    jobs = [j for j in jobs if (j.ref.json_path, j.ref.sample_id) in good]
    style_index = {s: i for i, s in enumerate(styles)}
    logger.info("%s split: %d sample(s) to generate, output %s, coefficients %s, output fps %s", split,
                len(jobs), os.path.join(inf.output_root, inf.exp_name), os.path.join(inf.coeff_root, inf.exp_name),
                inf.output_fps)

    rows = []
    batch_size = int(inf.batch_size)
    for name in cfg.DATA.datasets:
        ds_jobs = [j for j in jobs if j.ref.dataset == name]
        if not ds_jobs:
            continue
        t0 = time.perf_counter()
        flame = load_flame_for(cfg, name, device=device)  # cached per (file, device)
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
            motions = generate_motion(model, [it["audio"] for it in items], [style_index[j.style] for j in batch],
                                      [int(it["n_frames"]) for it in items], cfg, device)
            for j, it, m25 in zip(batch, items, motions):
                motion = to_output_fps(m25, j.out_fps)
                shape = it["shape"].numpy()
                verts = flame.motion_to_vertices(motion, shape)  # (T,V,3), chunked inside
                for d in (j.vert_dir, j.coeff_dir):
                    fresh_dir(d)
                write_frames(j.vert_dir, verts)
                meta = {"sample_id": j.ref.sample_id, "dataset": name, "style_id": j.ref.style_id,
                        "speaker": j.ref.speaker, "audio_path": os.path.abspath(j.ref.audio_path),
                        "fps": j.out_fps, "n_frames": int(motion.shape[0]), "checkpoint": ckpt_path,
                        "condition_style": j.style}
                write_coeffs(j.coeff_dir, flame, motion, shape, meta)
                n_frames_out += motion.shape[0]
                audio_s += int(it["n_frames"]) / MOTION_FPS
            bar.update(len(batch))
        bar.close()
        wall = time.perf_counter() - t0
        rows.append({"dataset": name, "samples": len(ds_jobs), "frames": n_frames_out, "audio_s": audio_s,
                     "wall_s": wall, "rtf": wall / audio_s if audio_s else float("nan")})
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
               logger: logging.Logger | None = None, loaded: tuple | None = None) -> dict:
    """One audio file -> DIR/vertices/{i}.npy, DIR/motion.npy, DIR/coeffs287.npy, DIR/meta.json
    (+ DIR/video.mp4 with ``render``). Returns the meta dict (plus ``out_dir``).

    ``loaded``: a ``(model, styles)`` pair from ``load_model`` to reuse (several files, benchmarks);
    by default the checkpoint is loaded here."""
    from models.flame import load_flame_for

    logger = logger or log
    overwrite = bool(overwrite or cfg.INFER.overwrite)
    out_dir = out_dir or os.path.join("results", "single", os.path.splitext(os.path.basename(audio_path))[0])
    vert_dir = os.path.join(out_dir, "vertices")
    files = [os.path.join(out_dir, n) for n in ("motion.npy", "coeffs287.npy", "meta.json", "video.mp4")]
    if (_nonempty_dir(vert_dir) or any(os.path.exists(f) for f in files)) and not overwrite:
        raise InferenceError(f"{out_dir} already holds results; rerun with --overwrite to replace them or "
                             f"choose another --out")
    out_fps = MOTION_FPS if cfg.INFER.output_fps == "native" else float(cfg.INFER.output_fps)
    check_infer_config(cfg)

    # Audio and style problems are reported before the (slow) model load.
    audio = read_speech(audio_path, int(cfg.DATA.sample_rate), logger)
    ckpt_path = os.path.abspath(resolve_checkpoint(cfg, checkpoint))
    device = pick_device(cfg.INFER.device, logger)
    model, styles = loaded or load_model(ckpt_path, cfg, device, logger)
    if style is None:
        style = pick_condition_style(cfg, styles)
        logger.info("no --style given: conditioning on '%s' (trained styles: %s)", style, ", ".join(styles))
    elif style not in styles:
        raise InferenceError(f"--style '{style}' is not a trained style; trained styles: {', '.join(styles)}")

    t0 = time.perf_counter()
    sr = int(cfg.DATA.sample_rate)
    n = audio_frames(audio.shape[0], sr, MOTION_FPS)
    hop = sr // MOTION_FPS
    # exactly n frames of audio: cut or zero-pad by less than half a frame
    audio = audio[: n * hop] if audio.shape[0] >= n * hop else np.pad(audio, (0, n * hop - audio.shape[0]))
    motion25 = generate_motion(model, [torch.from_numpy(audio)], [styles.index(style)], [n], cfg, device)[0]
    motion = to_output_fps(motion25, out_fps)
    flame = load_flame_for(cfg, None, device=device)
    verts = flame.motion_to_vertices(motion, None)  # (T,V,3)

    fresh_dir(vert_dir)
    for f in files:
        if os.path.exists(f):
            os.remove(f)
    write_frames(vert_dir, verts)
    meta = {"sample_id": os.path.splitext(os.path.basename(audio_path))[0], "dataset": None,
            "style_id": style, "speaker": None, "audio_path": os.path.abspath(audio_path), "fps": out_fps,
            "n_frames": int(motion.shape[0]), "checkpoint": ckpt_path, "condition_style": style}
    write_coeffs(out_dir, flame, motion, None, meta)
    wall = time.perf_counter() - t0
    logger.info("%s: %.2f s of audio -> %d frames at %s fps in %s (%.1f s, RTF %.3f)", audio_path,
                n / MOTION_FPS, motion.shape[0], out_fps, out_dir, wall, wall / (n / MOTION_FPS))
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
    p.add_argument("--audio", help="single-audio mode: this audio file (any rate / channels / length)")
    p.add_argument("--style", help="single-audio mode: trained style to condition on (default: the first)")
    p.add_argument("--out", help="single-audio mode: output folder (default results/single/<audio stem>)")
    p.add_argument("--render", action="store_true", help="single-audio mode: also render DIR/video.mp4")
    p.add_argument("--log", help="log file (default: see the module docstring; results/inference.log)")
    p.add_argument("overrides", nargs="*", help="SECTION.key=value")
    args = p.parse_intermixed_args(argv)
    if args.audio is None and (args.style or args.out or args.render):
        p.error("--style, --out and --render belong to single-audio mode: give --audio too")
    return args


def cli(argv=None):
    """Run as the command line asks; raises InferenceError / ConfigError / DataError on user errors."""
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.audio:
        out = args.out or os.path.join("results", "single", os.path.splitext(os.path.basename(args.audio))[0])
        logger = setup_logger("inference", args.log or os.path.join(out, "inference.log"))
        logger.info("single-audio inference: %s (config %s, overrides %s)", args.audio, args.config, args.overrides)
        return run_single(cfg, args.audio, args.style, args.checkpoint, out, args.overwrite, args.render, logger)
    logger = setup_logger("inference", args.log or default_log_file(cfg.INFER.output_root))
    logger.info("inference on the %s split (config %s, overrides %s)", cfg.INFER.split, args.config, args.overrides)
    return run_test_splits(cfg, args.checkpoint, args.overwrite, logger)


def main(argv=None):
    from models.flame import FlameLoadError
    from models.wav2vec import AudioEncoderLoadError

    try:
        cli(argv)
    except (InferenceError, ConfigError, DataError, FlameLoadError, AudioEncoderLoadError) as e:
        # to the console and, once the logger is set up, to the log file; no traceback for user errors
        logging.getLogger("inference").error("%s", e)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
