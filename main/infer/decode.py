"""Offline generation: a batch of clips -> motion at the model's fps, one long clip decoded block by
block while its frames are written, output-fps resampling, a result's vertices and coefficient arrays.
(Streaming generation is models/streaming.py's Streamer.)"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm import tqdm

from dataset.dataset import pad_batch
from main.infer.session import attention_window, window_frames


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


def decode_blocks(model, feats: torch.Tensor, style: int, attention_window: int | None, block: int = 50):
    """One clip's autoregressive decoding, block by block: feats (1,T,d) (``encode_one``) -> yields
    (n,51) float32 arrays in frame order, so that a block is written while the next one is decoded."""
    with torch.no_grad():
        state = model.start_generation(torch.tensor([style], device=feats.device), attention_window,
                                       capacity=int(feats.shape[1]))
    for a in range(0, feats.shape[1], block):
        with torch.no_grad(), full_fp32():
            m = model.generate_steps(state, feats[:, a:a + block])[0].float().cpu().numpy()
        yield m


def write_frames(writer, flame, blocks, shape: np.ndarray | None = None, progress: int | None = None) -> np.ndarray:
    """Motion blocks (n,51) in frame order -> each frame's FLAME vertices (V,3) added to ``writer``
    (main/results/writer.py FrameWriter); returns the whole motion (T,51). ``progress``: the expected
    frame count, shown as a progress bar.

    A block is converted and written in a worker thread while the next one is made: FLAME (torch) and
    file writes release the GIL, so they overlap with decoding, and at most two blocks of vertices are
    held (all of 10 minutes at 25 fps would be 0.9 GB). The worker is joined on every way out, an
    interrupt included: a thread still inside torch when the interpreter exits aborts the process
    (SIGABRT) instead of letting it exit 130 / 143 / 1."""
    motion, pending = [], None
    with ThreadPoolExecutor(1, thread_name_prefix="write") as pool, \
            tqdm(total=progress, desc="generate and write", unit="frame", disable=not progress, leave=False) as bar:
        for m in blocks:
            motion.append(m)
            if pending is not None:
                pending.result()  # a failed write is raised here, before more is decoded
            pending = pool.submit(add_vertices, writer, flame, m, shape)
            bar.update(m.shape[0])
        if pending is not None:
            pending.result()
    return np.concatenate(motion)


def add_vertices(writer, flame, motion: np.ndarray, shape: np.ndarray | None = None, sink=None):
    """(n,51) -> n FLAME frames (V,3) float32 added to ``writer`` in order, then sent to ``sink`` (a
    live reader gets only frames the result holds)."""
    vertices = np.asarray(flame.motion_to_vertices(motion, shape), dtype=np.float32)
    for v in vertices:
        writer.add(v)
    if sink is not None:
        sink.send(vertices)


@torch.no_grad()
def encode_one(model, audio: torch.Tensor, n_frames: int, cfg, device: torch.device) -> torch.Tensor:
    """One clip's audio features as generate_motion computes them: audio (N,) normalised -> (1,T,d)."""
    window, overlap = window_frames(cfg)
    with full_fp32():
        return model.encode(audio[None].to(device), n_frames, window_frames=window, overlap_frames=overlap)
