"""Offline generation: a batch of clips -> motion at the model's fps, one long clip decoded in the
background while its frames are written, output-fps resampling, a result's vertices and coefficient
arrays. (Streaming generation is main/stream.py's Streamer.)"""
from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm import tqdm

from dataset.dataset import pad_batch
from dataset.flame_params import resample_motion
from main.session import attention_window, window_frames
from models.flame import motion_to_coeffs287
from utils.framing import DEFAULT_FPS

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
    """Generate one batch of clips. audios: (N_b,) normalised tensors; returns (T_b,51) arrays.

    Clips are right-padded to the longest; generation is causal, so each clip's first T_b frames do
    not depend on the padding. Long audio (> INFER.window_seconds) is encoded in overlapping windows.
    """
    audio, mask = pad_batch(audios)
    window, overlap = window_frames(cfg)
    with full_fp32():
        out = model.generate(audio.to(device), torch.tensor(style_idx, dtype=torch.long, device=device),
                             max(n_frames), audio_mask=mask.to(device), window_frames=window,
                             overlap_frames=overlap, attention_window=attention_window(cfg))
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
    float32, by the linear rule of dataset/flame_params.py ``resample_motion``."""
    if float(fps) == model_fps:
        return motion25.astype(np.float32)
    return resample_motion(motion25, model_fps, float(fps)).astype(np.float32)


def sample_arrays(motion: np.ndarray, shape: np.ndarray | None,
                  detail: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The coefficient-tree arrays of a sample: motion (T,51) and coeffs287 (T,287), float32; the
    287's detail block is ``detail`` (128,) (the sample's EMOCA detail code) or zeros."""
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
