"""Vertex-space loss for FLAME motion: decode prediction and ground truth to meshes, compare vertices.

Comparing vertices rather than coefficients weighs each coefficient by how much it moves the face
(FaceFormer's loss is on vertices; here they come from FLAME). Both meshes use the sample's own
shape, so only the motion differs.

Optional terms, both off by default (the original FaceFormer loss is the vertex MSE alone): a
vertex-velocity term, and a lip-aperture term (a departure from FaceFormer, as in lip-distance losses
of later work): the whole-face mean is dominated by the many vertices that the jaw moves, while a lip
closure moves a few lip vertices by millimetres, so the mean barely sees a closure the prediction misses.
"""
from __future__ import annotations

import torch

CHUNK_FRAMES = 1024  # meshes per FLAME call (frames x batch): bounds the LBS working memory


def _chunk_errors(flame, pred, vg, mask, shape, first: int, velocity: bool, lips=None):
    """Per-sample error sums over one time chunk; frame first-1 (if given) only closes a velocity pair.

    pred (B,L,51), vg (B,L,V,3) ground-truth vertices, mask (B,L) float, shape (B,S) or None,
    lips (upper ids, lower ids) or None -> dict of (B,) sums: ``pos`` per-frame vertex MSE over valid
    frames >= first; ``vel`` per-pair velocity MSE over valid pairs (t, t+1) with t+1 >= first and
    ``pairs`` their number (zeros if not velocity); ``lip`` squared lip-aperture error over the frames
    of ``pos`` (zeros without lips).
    """
    vp = flame.motion_to_vertices(pred, shape)                              # (B,L,V,3)
    out = {"pos": ((vp - vg)[:, first:].pow(2).mean((-1, -2)) * mask[:, first:]).sum(1)}
    zeros = torch.zeros_like(out["pos"])
    out["vel"], out["pairs"], out["lip"] = zeros, zeros, zeros
    if velocity:
        pair = mask[:, 1:] * mask[:, :-1]
        vel = ((vp[:, 1:] - vp[:, :-1]) - (vg[:, 1:] - vg[:, :-1])).pow(2).mean((-1, -2))
        out["vel"], out["pairs"] = (vel * pair).sum(1), pair.sum(1)
    if lips is not None:
        gap = lip_aperture(vp[:, first:], *lips) - lip_aperture(vg[:, first:], *lips)   # (B,L-first)
        out["lip"] = (gap.pow(2) * mask[:, first:]).sum(1)
    return out


def lip_aperture(verts, upper, lower):
    """(..., V, 3) vertices, upper / lower lip vertex ids -> (...,) mean height of the upper lip minus
    that of the lower lip (y up): how far the mouth is open at its centre."""
    return verts[..., upper, 1].mean(-1) - verts[..., lower, 1].mean(-1)


def motion_vertex_loss(pred, gt, mask, flame, shape=None, velocity_weight: float = 0.0,
                       chunk_frames: int = CHUNK_FRAMES, lip_weight: float = 0.0, lips=None):
    """Mean squared vertex error over valid frames, plus optional vertex-velocity and lip-aperture terms.

    pred, gt (B,T,51) motion; mask (B,T) bool, True = real frame; flame: a FLAME module
    (``motion_to_vertices``); shape (B,S) or None (zeros), used for both meshes.
    Returns (loss scalar, per_sample (B,)):
      per_sample[b] = mean over b's valid frames, vertices and xyz of (v_pred - v_gt)^2
                      + velocity_weight * the same for velocities v[t+1] - v[t] over pairs of
                      consecutive valid frames
                      + lip_weight * the mean over b's valid frames of the squared error of the lip
                      aperture (``lip_aperture`` with ``lips`` = (upper ids, lower ids));
      loss = the same means over all valid frames (pairs) of the batch: every frame counts the
             same whatever the length of its clip.

    Memory: the batch is processed in time chunks of about ``chunk_frames`` meshes (frames past the
    last valid frame of the batch are skipped); ground-truth meshes are built without a graph and
    FLAME.motion_to_vertices recomputes its LBS in backward, so what stays alive for backward is
    the vertices and error terms, not the LBS intermediates of the whole batch.
    """
    B, T, _ = pred.shape
    mask = mask.bool()
    maskf = mask.to(pred.dtype)
    gt = gt.to(pred.dtype)
    valid_t = mask.any(0).nonzero()
    end = int(valid_t[-1]) + 1 if len(valid_t) else 0    # frames past the last valid one are padding
    step = max(1, chunk_frames // B)
    lips = lips if lip_weight else None
    sums = dict.fromkeys(("pos", "vel", "pairs", "lip"), pred.new_zeros(B))
    for s in range(0, end, step):
        e = min(s + step, end)
        lo = max(s - 1, 0) if velocity_weight else s       # one frame back: the pair across the seam
        with torch.no_grad():
            vg = flame.motion_to_vertices(gt[:, lo:e], shape)
        # FLAME.motion_to_vertices already recomputes its LBS chunks in backward instead of keeping
        # their intermediates; checkpointing here too would run the LBS a third time (measured slower:
        # docs/BENCHMARKS.md, "FLAME LBS recompute").
        part = _chunk_errors(flame, pred[:, lo:e], vg, maskf[:, lo:e], shape, s - lo, bool(velocity_weight), lips)
        sums = {k: sums[k] + part[k] for k in sums}
    pos_n = maskf.sum(1)
    per_sample = sums["pos"] / pos_n.clamp(min=1)
    loss = sums["pos"].sum() / pos_n.sum().clamp(min=1)
    if velocity_weight:
        per_sample = per_sample + velocity_weight * sums["vel"] / sums["pairs"].clamp(min=1)
        loss = loss + velocity_weight * sums["vel"].sum() / sums["pairs"].sum().clamp(min=1)
    if lips is not None:
        per_sample = per_sample + lip_weight * sums["lip"] / pos_n.clamp(min=1)
        loss = loss + lip_weight * sums["lip"].sum() / pos_n.sum().clamp(min=1)
    return loss, per_sample
