"""A result's motion as the weights of any blendshape rig on FLAME's topology (``--rig``).

What is fitted: the result's motion, i.e. its vertices minus its own identity at rest
(main/exporting/result.py ``identity_at_rest``), onto the rig's deltas. The rig's neutral is not
compared with the result: a rig sculpted on another identity gets the weights that move its face as
the result's face moves, which is what a user retargeting onto their character expects (FLAME's
expression offsets hardly depend on the identity). Per frame t::

    w_t = argmin_{0 <= w <= 1} || (vertices_t - identity) - sum_k w_k deltas_k ||^2

solved on the K x K normal equations (built once), so the cost is independent of the vertex count
after one (T,3V) x (3V,K) product. Written: ``DIR/blendshapes.csv`` (Live Link Face layout,
main/exporting/arkit.py) and ``DIR/blendshapes.json`` (every rig name, fps, weights, fit error).
"""
from __future__ import annotations

import logging
import time

import numpy as np
from scipy.optimize import lsq_linear

from main.exporting.arkit import ARKIT_NAMES, arkit_columns, write_live_link_csv
from main.exporting.rig_files import load_rig
from main.results.layout import RIG_CSV, RIG_JSON
from utils.atomic import write_json

log = logging.getLogger("export")

# Above this the rig leaves more than a quarter of the motion's energy (1 - 0.5^2) unexplained: the lips
# visibly miss their shapes. A rig of the motion's own space fits to ~0.
UNEXPLAINED_WARN = 0.5


def bounded_weights(normal: np.ndarray, rhs: np.ndarray, max_iter: int = 50) -> np.ndarray:
    """argmin_{0<=w<=1} 0.5 w'Aw - b'w for every frame: A = ``normal`` (K,K) symmetric PSD, b = ``rhs``
    (T,K) -> (T,K).

    Block principal pivoting (Kim & Park's NNLS method, with an upper bound), all frames at once: each
    shape is free, at 0 or at 1; the free ones are solved exactly with the others held, and every shape
    that breaks the optimality conditions changes set, until none does (a few batched K x K solves).
    When the count of broken conditions stops falling a frame changes one shape at a time (the rule
    that guarantees termination); frames still open after ``max_iter`` rounds are solved by scipy's
    bounded-variable least squares."""
    T, K = rhs.shape
    ridge = 1e-12 * max(float(np.trace(normal)) / K, 1e-30)  # keeps a rank-deficient rig solvable
    free, upper = np.ones((T, K), bool), np.zeros((T, K), bool)
    w = np.zeros((T, K))
    best, stalls = np.full(T, K + 1), np.zeros(T, int)
    todo, diag = np.arange(T), np.arange(K)
    scale = np.abs(rhs).max(1, keepdims=True) + np.abs(normal).max()
    for _ in range(max_iter):
        f, u = free[todo], upper[todo]
        m = normal[None] * (f[:, :, None] & f[:, None, :])
        m[:, diag, diag] += np.where(f, ridge, 1.0)  # a held shape's row just keeps its 0
        r = np.where(f, rhs[todo] - u.astype(float) @ normal, 0.0)
        x = np.linalg.solve(m, r[..., None])[..., 0] + u
        w[todo] = x
        grad = x @ normal - rhs[todo]
        tol = 1e-10 * scale[todo]
        bad = f & ((x < -1e-9) | (x > 1 + 1e-9)) | (~f & ~u & (grad < -tol)) | (u & (grad > tol))
        n_bad = bad.sum(1)
        done = n_bad == 0
        better = n_bad < best[todo]
        best[todo] = np.where(better, n_bad, best[todo])
        stalls[todo] = np.where(better, 0, stalls[todo] + 1)
        one = stalls[todo] >= 3  # the backup rule: change only the last broken shape
        last = K - 1 - np.argmax(bad[:, ::-1], axis=1)
        bad[one] = np.eye(K, dtype=bool)[last[one]] & bad[one]
        # a broken free shape goes to the bound it crossed; a broken bound shape becomes free
        to_upper = bad & f & (x > 1)
        upper[todo] = np.where(bad, to_upper, u)
        free[todo] = np.where(bad, ~f, f)
        todo = todo[~done]
        if not len(todo):
            break
    w = np.clip(w, 0.0, 1.0)
    if len(todo):
        lam, q = np.linalg.eigh(normal)
        keep = lam > lam.max() * 1e-12
        root, to_c = np.sqrt(lam[keep])[:, None] * q[:, keep].T, q[:, keep] / np.sqrt(lam[keep])  # R'R = A
        for t in todo:
            w[t] = lsq_linear(root, rhs[t] @ to_c, bounds=(0.0, 1.0), method="bvls").x
    return w


def fit_rig(deltas: np.ndarray, motion: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """deltas (K,V,3), motion (T,V,3) (offsets from the identity at rest) -> weights (T,K) in [0,1],
    per-frame fit error (T,) (RMS over vertices of the residual, the mesh's unit) and the fraction of
    the motion left unexplained (RMS residual / RMS motion over all frames; 0 for a still result)."""
    K, T = deltas.shape[0], motion.shape[0]
    d = deltas.reshape(K, -1).astype(np.float32)
    x = motion.reshape(T, -1).astype(np.float32)
    normal = (d.astype(np.float64) @ d.T.astype(np.float64))
    rhs = (x @ d.T).astype(np.float64)
    w = bounded_weights(normal, rhs)
    resid = x - w.astype(np.float32) @ d
    motion_sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    resid_sq = np.einsum("ij,ij->i", resid, resid, dtype=np.float64)
    err = np.sqrt(resid_sq / deltas.shape[1])
    unexplained = float(np.sqrt(resid_sq.sum() / motion_sq.sum())) if motion_sq.sum() > 0 else 0.0
    return w.astype(np.float32), err.astype(np.float32), unexplained


def export_rig(result, rig_path: str) -> dict:
    """``result`` (main/exporting/result.py ExportResult), a rig file -> blendshapes.csv and .json in the
    result's folder; returns the JSON's summary (no weights)."""
    rig = load_rig(rig_path, result.vertices.shape[1])
    t0 = time.perf_counter()
    weights, err, unexplained = fit_rig(rig.deltas, result.vertices - result.identity[None])
    seconds = time.perf_counter() - t0
    matched = sorted({n.lower() for n in ARKIT_NAMES} & {n.lower() for n in rig.names})
    summary = {"rig": rig_path, "names": rig.names, "fps": result.fps, "n_frames": int(len(weights)),
               "fit_error_unit": "RMS over vertices of (motion - deltas . weights), in the mesh's unit (m)",
               "fit_error_mean": float(err.mean()) if len(err) else 0.0,
               "fit_error_max": float(err.max()) if len(err) else 0.0,
               "unexplained_fraction": unexplained, "arkit_names_matched": len(matched)}
    csv_path, json_path = result.out(RIG_CSV), result.out(RIG_JSON)
    write_live_link_csv(csv_path, arkit_columns(rig.names, weights), result.fps)
    write_json(json_path, dict(summary, weights=np.round(weights, 6).tolist(),
                               fit_error=np.round(err, 9).tolist()), indent=None)
    log.info("fitted %d frames onto %d shapes of %s in %.2f s: fit error mean %.3g m, max %.3g m (RMS over "
             "vertices); %.1f%% of the motion unexplained; %d of ARKit's 52 names matched",
             len(weights), len(rig.names), rig_path, seconds, summary["fit_error_mean"], summary["fit_error_max"],
             100 * unexplained, len(matched))
    if unexplained > UNEXPLAINED_WARN:
        log.warning("the rig cannot explain the motion: %.0f%% of it is left unexplained (above %.0f%%, i.e. more "
                    "than a quarter of its energy, the lips visibly miss their shapes); check that the rig's deltas "
                    "move the mouth and jaw, in meters, on FLAME's vertex order", 100 * unexplained,
                    100 * UNEXPLAINED_WARN)
    if not matched:
        log.warning("none of the rig's names is one of ARKit's 52: blendshapes.csv holds only zeros "
                    "(blendshapes.json has the weights under the rig's own names)")
    log.info("wrote %s and %s", csv_path, json_path)
    return summary
