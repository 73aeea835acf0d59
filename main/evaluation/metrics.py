"""Metrics on vertex arrays (CodeTalker's definitions, which the field reports): LVE, FDD, MVE, and
their pooling over sequences. Shapes: (T,V,3) per sequence; units are the model's (FLAME: metres)."""
from __future__ import annotations

import numpy as np


def _check_pair(pred: np.ndarray, gt: np.ndarray):
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"pred and gt must both be (T,V,3) of the same shape, got {pred.shape} and {gt.shape}")


def lip_errors(pred: np.ndarray, gt: np.ndarray, lip_idx) -> np.ndarray:
    """Per-frame max over lip vertices of the squared L2 error: (T,V,3) x2 -> (T,)."""
    _check_pair(pred, gt)
    d = pred[:, lip_idx].astype(np.float64) - gt[:, lip_idx]
    return (d ** 2).sum(-1).max(-1)


def lve(pred: np.ndarray, gt: np.ndarray, lip_idx) -> float:
    """Lip vertex error of one sequence: mean over frames of max over lip vertices of ||pred - gt||^2."""
    return float(lip_errors(pred, gt, lip_idx).mean())


def upper_face_dynamics(verts: np.ndarray, template: np.ndarray, upper_idx) -> float:
    """Mean over upper-face vertices of the std over time of ||v - template||^2: (T,V,3), (V,3) -> float."""
    disp = verts[:, upper_idx].astype(np.float64) - template[upper_idx]
    return float(((disp ** 2).sum(-1)).std(axis=0).mean())  # np.std: population (ddof=0), as CodeTalker


def fdd(pred: np.ndarray, gt: np.ndarray, template: np.ndarray, upper_idx) -> float:
    """Upper-face dynamics deviation of one sequence: dynamics(gt) - dynamics(pred) (signed)."""
    _check_pair(pred, gt)
    return upper_face_dynamics(gt, template, upper_idx) - upper_face_dynamics(pred, template, upper_idx)


def mve(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean vertex error: L2 distance averaged over all vertices and frames."""
    _check_pair(pred, gt)
    return float(np.linalg.norm(pred.astype(np.float64) - gt, axis=-1).mean())


def aggregate(samples: list[dict]) -> dict:
    """Pool per-sample metrics as CodeTalker does: LVE/MVE frame-weighted, FDD mean over sequences.

    samples: dicts with ``LVE, FDD, MVE, n_frames``. Returns ``{LVE, FDD, MVE, n_sequences, n_frames}``
    (metrics None when there is no sample)."""
    n = np.array([s["n_frames"] for s in samples], dtype=np.float64)
    if len(samples) == 0 or n.sum() == 0:
        return {"LVE": None, "FDD": None, "MVE": None, "n_sequences": len(samples), "n_frames": 0}
    w = n / n.sum()
    return {
        "LVE": float(sum(wi * s["LVE"] for wi, s in zip(w, samples))),
        "FDD": float(np.mean([s["FDD"] for s in samples])),
        "MVE": float(sum(wi * s["MVE"] for wi, s in zip(w, samples))),
        "n_sequences": len(samples),
        "n_frames": int(n.sum()),
    }
