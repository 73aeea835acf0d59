"""Vertex-space loss for FLAME motion: decode prediction and ground truth to meshes, compare vertices.

Comparing vertices rather than coefficients weighs each coefficient by how much it moves the face
(FaceFormer's loss is on vertices; here they come from FLAME). Both meshes use the sample's own
shape, so only the motion differs.
"""
from __future__ import annotations

import torch

CHUNK_FRAMES = 1024  # meshes per FLAME call (frames x batch): bounds the LBS working memory


def _chunk_errors(flame, pred, vg, mask, shape, first: int, velocity: bool):
    """Per-sample error sums over one time chunk; frame first-1 (if given) only closes a velocity pair.

    pred (B,L,51), vg (B,L,V,3) ground-truth vertices, mask (B,L) float, shape (B,S) or None ->
    (B,) sums of per-frame vertex MSE over valid frames >= first, (B,) sums of per-pair velocity MSE
    over valid pairs (t, t+1) with t+1 >= first, (B,) numbers of such pairs (zeros if not velocity).
    """
    vp = flame.motion_to_vertices(pred, shape)                              # (B,L,V,3)
    pos = ((vp - vg)[:, first:].pow(2).mean((-1, -2)) * mask[:, first:]).sum(1)
    if not velocity:
        return pos, torch.zeros_like(pos), torch.zeros_like(pos)
    pair = mask[:, 1:] * mask[:, :-1]
    vel = ((vp[:, 1:] - vp[:, :-1]) - (vg[:, 1:] - vg[:, :-1])).pow(2).mean((-1, -2))
    return pos, (vel * pair).sum(1), pair.sum(1)


def motion_vertex_loss(pred, gt, mask, flame, shape=None, velocity_weight: float = 0.0,
                       chunk_frames: int = CHUNK_FRAMES):
    """Mean squared vertex error over valid frames, plus an optional vertex-velocity term.

    pred, gt (B,T,51) motion; mask (B,T) bool, True = real frame; flame: a FLAME module
    (``motion_to_vertices``); shape (B,S) or None (zeros), used for both meshes.
    Returns (loss scalar, per_sample (B,)):
      per_sample[b] = mean over b's valid frames, vertices and xyz of (v_pred - v_gt)^2
                      + velocity_weight * the same for velocities v[t+1] - v[t] over pairs of
                      consecutive valid frames;
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
    zeros = pred.new_zeros(B)
    pos_sum, vel_sum, vel_n = zeros, zeros, zeros
    for s in range(0, end, step):
        e = min(s + step, end)
        lo = max(s - 1, 0) if velocity_weight else s       # one frame back: the pair across the seam
        with torch.no_grad():
            vg = flame.motion_to_vertices(gt[:, lo:e], shape)
        # FLAME.motion_to_vertices already recomputes its LBS chunks in backward instead of keeping
        # their intermediates; checkpointing here too would run the LBS a third time (measured slower:
        # docs/BENCHMARKS.md, "FLAME LBS recompute").
        p, v, n = _chunk_errors(flame, pred[:, lo:e], vg, maskf[:, lo:e], shape, s - lo, bool(velocity_weight))
        pos_sum, vel_sum, vel_n = pos_sum + p, vel_sum + v, vel_n + n
    pos_n = maskf.sum(1)
    per_sample = pos_sum / pos_n.clamp(min=1)
    loss = pos_sum.sum() / pos_n.sum().clamp(min=1)
    if velocity_weight:
        per_sample = per_sample + velocity_weight * vel_sum / vel_n.clamp(min=1)
        loss = loss + velocity_weight * vel_sum.sum() / vel_n.sum().clamp(min=1)
    return loss, per_sample
