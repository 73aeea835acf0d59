"""What a result holds besides its vertex frames: ``ARRAYS``, the one table of the arrays written beside
them (``{name}.npy`` in the coefficient tree, or in a single-audio DIR). The writer's files, the files
that count as a single-audio result (main/results/layout.py ``SINGLE_FILES``) and the disk estimate
(``arrays_bytes``) derive from it, so adding an output array is one row here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from dataset.flame_params import resample_motion
from utils.framing import DEFAULT_FPS, MOTION_DIM, N_EXPR

NPY_HEADER_BYTES = 128  # np.save's header for these arrays (format 1.0, padded to 64 bytes)


def motion_to_coeffs287(motion, shape=None, detail=None):
    """motion (...,51) -> DECA/EMOCA coefficients (...,287), numpy or torch like the input.

    Layout: shape[0:100] | exp[100:150] | pose[150:156] = [0,0,0, jaw,0,0] | cam[156:159] = 0 |
    detail[159:287]. shape (S,) or (...,S): first 100 dims, zero-padded; detail (128,) or (...,128) or
    None (zeros). The jaw goes to index 153 only (never copied to the three jaw axes).
    """
    is_torch = torch.is_tensor(motion)
    if motion.shape[-1] != MOTION_DIM:
        raise ValueError(f"motion_to_coeffs287: motion must be (...,51), got {tuple(motion.shape)}")
    lead = tuple(motion.shape[:-1])
    if is_torch:
        out = motion.new_zeros(lead + (287,))
        as_arr = lambda x: torch.as_tensor(x, dtype=motion.dtype, device=motion.device)
    else:
        motion = np.asarray(motion)
        out = np.zeros(lead + (287,), dtype=motion.dtype if motion.dtype.kind == "f" else np.float32)
        as_arr = lambda x: np.asarray(x, dtype=out.dtype)
    if shape is not None:
        shape = as_arr(shape)[..., :100]
        out[..., :shape.shape[-1]] = shape
    out[..., 100:150] = motion[..., :N_EXPR]
    out[..., 153] = motion[..., N_EXPR]
    if detail is not None:
        detail = as_arr(detail)
        if detail.shape[-1] != 128:
            raise ValueError(f"motion_to_coeffs287: detail must have 128 dims, got {tuple(detail.shape)}")
        out[..., 159:287] = detail
    return out


@dataclass(frozen=True)
class OutputArray:
    """One array of a result: ``width`` numbers per frame, made by ``make(motion (T,51), shape (S,) or
    None, detail (128,) or None) -> (T, width)``."""
    width: int
    make: Callable


ARRAYS = {
    "motion": OutputArray(MOTION_DIM, lambda motion, shape, detail: motion),
    "coeffs287": OutputArray(287, lambda motion, shape, detail: motion_to_coeffs287(motion, shape, detail)),
}
ARRAY_FILES = tuple(f"{name}.npy" for name in ARRAYS)


def sample_arrays(motion: np.ndarray, shape: np.ndarray | None,
                  detail: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The arrays of a sample, float32, one per ``ARRAYS`` row; the 287's detail block is ``detail`` (128,)
    (the sample's EMOCA detail code) or zeros."""
    return {name: np.asarray(a.make(motion, shape, detail), dtype=np.float32) for name, a in ARRAYS.items()}


def result_shape(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The identity shape a result was made with, as its arrays keep it: the first frame's shape block of the
    287 layout, (100,) (a result made with more shape dims keeps only these)."""
    return arrays["coeffs287"][0, :100]


def arrays_bytes(n_frames: int) -> int:
    """The bytes of a sample's ``ARRAYS`` files for ``n_frames`` frames."""
    return len(ARRAYS) * NPY_HEADER_BYTES + n_frames * sum(a.width for a in ARRAYS.values()) * 4


def to_output_fps(motion25: np.ndarray, fps: float, model_fps: float = DEFAULT_FPS) -> np.ndarray:
    """(T,51) at the model's ``model_fps`` (DATA.target_fps, 25 by default) -> (round(T * fps / model_fps), 51)
    float32, by the linear rule of dataset/flame_params.py ``resample_motion``."""
    return resample_motion(motion25, model_fps, float(fps)).astype(np.float32)
