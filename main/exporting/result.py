"""A finished result read back for export: its meta.json, motion, frame rate, audio, FLAME model and
identity shape (main/results/layout.py: the folder that holds ``meta.json``: a single-audio or stream DIR,
or a test sample's folder in the coefficient tree). Every missing or unusable piece is a ResultsError
naming the file and what was expected."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from main.results.formats import shape_of_coeffs287
from main.results.reader import META, read_meta
from utils.errors import ResultsError
from utils.framing import MOTION_DIM

MOTION_FILE = "motion.npy"


@dataclass(frozen=True)
class ExportSource:
    """folder: the result folder; meta: its meta.json; motion (T,51) float32 at ``fps``; audio: the
    audio file the motion was made from, as meta.json names it (None: stdin); flame_model: the FLAME file of the
    vertices; shape (S,) float32 or None (the mean face)."""
    folder: str
    meta: dict
    motion: np.ndarray
    fps: float
    audio: str | None
    flame_model: str
    shape: np.ndarray | None


def read_source(folder: str, flame_model: str | None = None) -> ExportSource:
    """``folder`` (holding meta.json and motion.npy) -> ExportSource. ``flame_model`` overrides (or, for a
    result whose meta.json names none, supplies) the FLAME file."""
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        raise ResultsError(f"result folder not found: {folder}")
    meta = read_meta(folder)
    if meta is None:
        raise ResultsError(f"{os.path.join(folder, META)} not found; expected a result folder holding meta.json "
                           f"(a single-audio or stream output DIR, or a test sample's folder in the coefficient tree)")
    motion = _motion(os.path.join(folder, MOTION_FILE), meta)
    model = flame_model or meta.get("flame_model")
    if not model:
        raise ResultsError(f"{os.path.join(folder, META)} names no flame_model; pass the FLAME file the result was "
                           f"made with (--flame FILE)")
    # a meta.json without flame_model does not record the shape either (made before it did)
    shape = meta.get("shape") if meta.get("flame_model") else _shape_of_coeffs(folder)
    try:
        shape = None if shape is None else np.asarray(shape, dtype=np.float32).reshape(-1)
        fps = float(meta["fps"])
    except (KeyError, TypeError, ValueError):
        raise ResultsError(f"{os.path.join(folder, META)}: expected a number 'fps' and 'shape' a list of numbers "
                           f"or null") from None
    if not fps > 0:
        raise ResultsError(f"{os.path.join(folder, META)}: fps is {fps}; expected a positive frame rate")
    return ExportSource(folder, meta, motion, fps, meta.get("audio_path") or None, os.path.abspath(model), shape)


def _shape_of_coeffs(folder: str) -> np.ndarray:
    """A result whose meta.json does not record its FLAME model and shape: the shape block of its 287
    coefficients, the first 100 shape coefficients, which is the whole shape at FLAME.n_shape <= 100."""
    try:
        return shape_of_coeffs287(folder)
    except ResultsError as e:
        raise ResultsError(f"{os.path.join(folder, META)} records no shape, and {e}") from None


def _motion(path: str, meta: dict) -> np.ndarray:
    """The result's (T,51) motion, T = meta's n_frames."""
    try:
        motion = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ResultsError(f"{path} not found; every result holds its (T,{MOTION_DIM}) motion beside meta.json") from None
    except (OSError, ValueError, EOFError) as e:
        raise ResultsError(f"{path}: unreadable ({e})") from None
    n = meta.get("n_frames")
    if motion.ndim != 2 or motion.shape[1] != MOTION_DIM or motion.shape[0] != n or n == 0:
        raise ResultsError(f"{path}: holds an array of shape {motion.shape}; expected ({n},{MOTION_DIM}) "
                           f"(meta.json's n_frames, at least 1)")
    if not np.isfinite(motion).all():
        raise ResultsError(f"{path}: holds NaN/inf values")
    return motion.astype(np.float32)
