"""Generation for inference: speech file -> normalised audio, a batch of clips -> motion at the model's
fps, output-fps resampling, and a sample's coefficient arrays (used by main/inference.py, main/stream.py,
scripts/mean_baseline.py and scripts/benchmark.py)."""
from __future__ import annotations

import contextlib
import logging
import os

import numpy as np
import torch

from dataset.audio import load_audio, normalize_audio
from dataset.flame_params import resample_motion
from main.model_io import AudioError, attention_window, window_frames
from utils.errors import DataError
from utils.framing import DEFAULT_FPS, WAV2VEC2_SAMPLE_RATE

# Raw RMS below this (-80 dBFS) counts as silence. normalize_audio maps a raw RMS s to
# s / sqrt(s^2 + 1e-7), so in normalised audio the same threshold is a std of about 0.3.
SILENT_RMS = 1e-4
SILENT_NORMALISED_STD = 0.3

# Input that will not animate well, warned about (not refused: it may be what the user means):
# a share of samples at full scale above CLIPPED_SHARE is heavily clipped (distorted, often a gain set
# too high); an average power spectrum as flat as noise (spectral flatness above NOISE_FLATNESS; white
# noise is near 1, speech well below 0.1, its energy sits in harmonics and formants) is not speech.
FULL_SCALE = 0.99
CLIPPED_SHARE = 0.01
NOISE_FLATNESS = 0.5

log = logging.getLogger("inference")


class AudioCheck:
    """Running statistics of raw audio (as read or as it streams in; memory does not grow): RMS, the
    share of clipped samples and the average power spectrum. ``warnings()``: what offline and streaming
    mode warn about, one rule for both."""

    FRAME = 512

    def __init__(self):
        self.n, self.sum_sq, self.clipped = 0, 0.0, 0
        self.power, self.frames = np.zeros(self.FRAME // 2 + 1), 0
        self._rest = np.zeros(0, np.float32)
        self._window = np.hanning(self.FRAME)

    def add(self, x: np.ndarray):
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        self.n += x.size
        self.sum_sq += float(np.square(x, dtype=np.float64).sum())
        self.clipped += int(np.count_nonzero(np.abs(x) >= FULL_SCALE))
        x = np.concatenate([self._rest, x])
        k = x.size // self.FRAME
        if k:
            frames = x[:k * self.FRAME].reshape(k, self.FRAME) * self._window
            self.power += (np.abs(np.fft.rfft(frames, axis=1)) ** 2).sum(0)
            self.frames += k
        self._rest = x[k * self.FRAME:]

    @property
    def rms(self) -> float:
        return float(np.sqrt(self.sum_sq / max(self.n, 1)))

    def warnings(self) -> list[str]:
        """Each as the end of a sentence about the input ("... is silent (...)")."""
        if self.n == 0:
            return []
        if self.rms < SILENT_RMS:
            return [f"is silent (RMS {self.rms:.2g} < {SILENT_RMS:.0e}): the face will barely move"]
        out = []
        share = self.clipped / self.n
        if share > CLIPPED_SHARE:
            out.append(f"is heavily clipped ({100 * share:.1f}% of samples at full scale): distorted speech "
                       f"animates poorly; lower the input gain")
        if self.frames >= 8:
            p = self.power[1:] + 1e-20  # without DC
            flatness = float(np.exp(np.mean(np.log(p))) / np.mean(p))
            if flatness > NOISE_FLATNESS:
                out.append(f"sounds like noise, not speech (spectral flatness {flatness:.2f} > {NOISE_FLATNESS}; "
                           f"speech is below 0.1): check the input device and format")
        return out


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
    check = AudioCheck()
    check.add(raw)
    for warning in check.warnings():
        logger.warning("audio file %s %s", path, warning)
    rms = check.rms
    if not normalise:
        return raw.astype(np.float32)
    audio = normalize_audio(raw)
    if not np.isfinite(audio).all():  # normalize_audio's eps should make this impossible; never pass NaN on
        raise AudioError(f"audio file {path}: normalisation produced NaN/inf (RMS {rms:.3g})")
    return audio

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
    from tqdm import tqdm

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


class DecodeStopped(RuntimeError):
    """Raised to readers of a BackgroundDecode that was closed before its last frame."""


class BackgroundDecode:
    """Autoregressive decoding of one clip in a background thread, in blocks of ``block`` frames, so
    that the first frames are converted and written while later ones are decoded (run_single).

    feats (1,T,d) audio features (``model.encode``). ``motion`` (T,51) fills in order; ``wait(n)``
    blocks until its first n frames are there and re-raises the decoder's error, if any;
    ``result()`` waits for all. The decoder's Python loop and the writer's FLAME (torch) and file
    writes (both release the GIL) then overlap, instead of running one after the other.

    ``close()`` (or leaving a ``with`` block) stops the decoder at the next block and joins the
    thread. Callers must close it on every way out: a decode thread still inside torch when the
    interpreter exits (after Ctrl-C, SIGTERM or a failed write) is torn down by pthread_exit through
    C++ frames, which aborts the process (SIGABRT, "terminate called without an active exception")
    instead of exiting 130 / 143 / 1."""

    def __init__(self, model, feats: torch.Tensor, style: int, attention_window: int | None, block: int = 50,
                 progress: bool = False):
        import threading

        self.T = int(feats.shape[1])
        self.motion = np.zeros((self.T, model.motion_dim), np.float32)
        self.done, self.error = 0, None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        args = (model, feats, style, attention_window, int(block), progress)
        self._thread = threading.Thread(target=self._run, args=args, name="decode", daemon=True)
        self._thread.start()

    @torch.no_grad()
    def _run(self, model, feats, style, attention_window, block, progress):
        from tqdm import tqdm

        bar = tqdm(total=self.T, desc="generate", unit="frame", disable=not progress, leave=False)
        try:
            with full_fp32():
                state = model.start_generation(torch.tensor([style], device=feats.device), attention_window,
                                               capacity=self.T)
                for a in range(0, self.T, block):
                    if self._stop.is_set():
                        raise DecodeStopped("decoding was stopped before frame %d of %d" % (a, self.T))
                    m = model.generate_steps(state, feats[:, a:a + block])[0].float().cpu().numpy()
                    with self._cond:
                        self.motion[a:a + m.shape[0]] = m
                        self.done = a + m.shape[0]
                        self._cond.notify_all()
                    bar.update(m.shape[0])
        except BaseException as e:  # handed to the waiting thread
            with self._cond:
                self.error = e
                self._cond.notify_all()
        finally:
            bar.close()

    def wait(self, n: int) -> np.ndarray:
        """The first n frames (n,51), once decoded."""
        with self._cond:
            self._cond.wait_for(lambda: self.done >= min(n, self.T) or self.error is not None)
            if self.error is not None:
                raise self.error
        return self.motion[:n]

    def result(self) -> np.ndarray:
        return self.wait(self.T)

    def close(self):
        """Stop decoding (at the next block) and wait for the thread; frames decoded so far stay."""
        self._stop.set()
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # read as a (T,51) array (VertexFrames): a slice waits for its frames
    @property
    def shape(self) -> tuple[int, int]:
        return self.motion.shape

    def __getitem__(self, index: slice) -> np.ndarray:
        return self.wait(index.indices(self.T)[1])[index]


@torch.no_grad()
def encode_one(model, audio: torch.Tensor, n_frames: int, cfg, device: torch.device) -> torch.Tensor:
    """One clip's audio features as generate_motion computes them: audio (N,) normalised -> (1,T,d)."""
    window, overlap = window_frames(cfg)
    with full_fp32():
        return model.encode(audio[None].to(device), n_frames, window_frames=window, overlap_frames=overlap)


def to_output_fps(motion25: np.ndarray, fps: float, model_fps: float = DEFAULT_FPS) -> np.ndarray:
    """(T,51) at the model's ``model_fps`` (DATA.target_fps, 25 by default) -> (round(T * fps / model_fps), 51)
    float32, linear rule of DESIGN.md 3."""
    if float(fps) == model_fps:
        return motion25.astype(np.float32)
    return resample_motion(motion25, model_fps, float(fps)).astype(np.float32)


def sample_arrays(motion: np.ndarray, shape: np.ndarray | None,
                  detail: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The coefficient-tree arrays of a sample: motion (T,51) and coeffs287 (T,287), float32; the
    287's detail block is ``detail`` (128,) (the sample's EMOCA detail code) or zeros."""
    from models.flame import motion_to_coeffs287
    return {"motion": motion.astype(np.float32),
            "coeffs287": np.asarray(motion_to_coeffs287(motion, shape=shape, detail=detail),
                                    dtype=np.float32)}


class VertexFrames:
    """The FLAME vertices of a motion sequence, converted chunk by chunk as frames are read:
    behaves as a (T,V,3) float32 array for ``shape``, ``len`` and ``frames[i]`` (what the results
    writer uses) while holding two chunks of ``chunk`` frames, so writing 10 minutes of frames never
    holds all of them (0.9 GB at 25 fps). ``np.asarray`` (e.g. rendering) converts them all.

    Reading in order, the next chunk is converted in a background thread while the caller writes
    the current one: FLAME (torch) and file writes both release the GIL, so they overlap
    (docs/BENCHMARKS.md, "Whole inference vs the bare encoder")."""

    def __init__(self, flame, motion, shape=None, chunk: int = 50):
        # motion: (T,51) array, or a BackgroundDecode (its slices wait for their frames)
        self.flame, self.motion, self.shape_vec, self.chunk = flame, motion, shape, int(chunk)
        self.shape = (motion.shape[0], int(flame.v_template.shape[0]), 3)
        self._start, self._block = None, None
        self._pool, self._next = None, None  # (start, Future) of the chunk after the current one

    def __len__(self):
        return self.shape[0]

    def _convert(self, start: int) -> np.ndarray:
        return np.asarray(self.flame.motion_to_vertices(self.motion[start:start + self.chunk], self.shape_vec),
                          dtype=np.float32)

    def __getitem__(self, i: int) -> np.ndarray:
        start = (int(i) // self.chunk) * self.chunk
        if start != self._start:
            nxt, self._next = self._next, None
            self._block = nxt[1].result() if nxt is not None and nxt[0] == start else self._convert(start)
            self._start = start
            if start + self.chunk < len(self):
                if self._pool is None:
                    from concurrent.futures import ThreadPoolExecutor
                    self._pool = ThreadPoolExecutor(1, thread_name_prefix="flame")
                self._next = (start + self.chunk, self._pool.submit(self._convert, start + self.chunk))
            elif self._pool is not None:  # the last chunk: no thread left behind
                self._pool.shutdown(wait=False)
                self._pool = None
        return self._block[int(i) - start]

    def close(self):
        """Drop the chunk being converted ahead and end its thread (waits for a conversion under way)."""
        nxt, self._next = self._next, None
        if nxt is not None:
            nxt[1].cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __array__(self, dtype=None, copy=None):
        out = np.asarray(self.flame.motion_to_vertices(self.motion[:], self.shape_vec), dtype=np.float32)
        return out if dtype is None else out.astype(dtype)
