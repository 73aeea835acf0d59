"""Linear blend skinning for FLAME as pure functions (no module state): every array comes in as an
argument, shapes are in the docstrings. J = joints (5 for FLAME), V = vertices, E = expression
components used, B = batch, T = frames.

``lbs_in_chunks`` runs ``lbs`` over time chunks; with gradients it keeps only the inputs alive and
recomputes each chunk in backward (activation checkpointing, written out: see ``_RecomputedLBS``).
"""
from __future__ import annotations

import torch


def batch_rodrigues(rot_vecs: torch.Tensor) -> torch.Tensor:
    """Axis-angle (N,3) -> rotation matrices (N,3,3). Differentiable, also at zero angle."""
    angle = torch.sqrt((rot_vecs * rot_vecs).sum(-1, keepdim=True) + 1e-16)  # (N,1), eps keeps grad finite
    axis = rot_vecs / angle
    cos, sin = torch.cos(angle).unsqueeze(-1), torch.sin(angle).unsqueeze(-1)   # (N,1,1)
    rx, ry, rz = axis.unbind(-1)
    zeros = torch.zeros_like(rx)
    K = torch.stack([zeros, -rz, ry, rz, zeros, -rx, -ry, rx, zeros], -1).view(-1, 3, 3)
    eye = torch.eye(3, dtype=rot_vecs.dtype, device=rot_vecs.device)
    return eye + sin * K + (1 - cos) * (K @ K)


def rigid_transforms(rot: torch.Tensor, joints: torch.Tensor, parents) -> torch.Tensor:
    """Kinematic chain. rot (...,J,3,3) local rotations, joints (...,J,3) rest joint positions,
    parents: J ints, parents[0] = -1, each parent before its children.

    Returns (...,J,3,4): per joint the world transform relative to the rest pose, i.e. a rest-pose
    point x attached to joint j moves to R_j x + t_j.
    """
    rel = torch.cat([joints[..., :1, :], joints[..., 1:, :] - joints[..., list(parents[1:]), :]], dim=-2)
    Rs, ts = [rot[..., 0, :, :]], [rel[..., 0, :]]
    for i in range(1, len(parents)):
        p = parents[i]
        Rs.append(Rs[p] @ rot[..., i, :, :])
        ts.append((Rs[p] @ rel[..., i, :].unsqueeze(-1)).squeeze(-1) + ts[p])
    R = torch.stack(Rs, dim=-3)                                  # (...,J,3,3)
    t = torch.stack(ts, dim=-2)                                  # (...,J,3) posed joint positions
    t = t - (R @ joints.unsqueeze(-1)).squeeze(-1)               # undo the rest position
    return torch.cat([R, t.unsqueeze(-1)], dim=-1)


def lbs(v_base: torch.Tensor, j_base: torch.Tensor, expr: torch.Tensor, pose: torch.Tensor,
        expr_dirs: torch.Tensor, expr_joint_dirs: torch.Tensor, posedirs: torch.Tensor,
        lbs_weights: torch.Tensor, parents) -> torch.Tensor:
    """Expression blend shapes, pose correctives and skinning -> vertices (B,T,V,3).

    v_base (B,1,V,3) / j_base (B,1,J,3): template + identity offsets of vertices / joints;
    expr (B,T,E) expression coefficients; pose (B,T,J*3) axis-angle per joint;
    expr_dirs (E,V*3) and expr_joint_dirs (E,J*3): the expression blend shapes of vertices and of the
    regressed joints (joints are linear in the coefficients, so they are blended, not regressed);
    posedirs (V,3,(J-1)*9) pose-corrective blend shapes; lbs_weights (V,J); parents: J ints.
    """
    B, T = expr.shape[:2]
    V, J = v_base.shape[-2], j_base.shape[-2]
    v_shaped = v_base + (expr @ expr_dirs).view(B, T, V, 3)
    joints = j_base + (expr @ expr_joint_dirs).view(B, T, J, 3)
    rot = batch_rodrigues(pose.reshape(-1, 3)).view(B, T, J, 3, 3)
    eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
    pose_feature = (rot[:, :, 1:] - eye).reshape(B, T, (J - 1) * 9)       # (B,T,36)
    v_posed = v_shaped + (pose_feature @ posedirs.reshape(V * 3, -1).t()).view(B, T, V, 3)
    A = rigid_transforms(rot, joints, parents)                            # (B,T,J,3,4)
    Tm = (lbs_weights @ A.reshape(B, T, J, 12)).view(B, T, V, 3, 4)       # blended per vertex
    return (Tm[..., :3] * v_posed.unsqueeze(-2)).sum(-1) + Tm[..., 3]


def lbs_jaw_only(v_base: torch.Tensor, j_base: torch.Tensor, expr: torch.Tensor, jaw: torch.Tensor,
                 expr_dirs: torch.Tensor, jaw_joint_dirs: torch.Tensor, jaw_posedirs: torch.Tensor,
                 jaw_weights: torch.Tensor, weight_sums: torch.Tensor) -> torch.Tensor:
    """``lbs`` for a pose in which only the jaw rotates and the jaw is a leaf of the kinematic tree,
    as in FaceFormer's motion (50 expression + jaw; global, neck and eye rotations are zero) ->
    vertices (B,T,V,3), equal to ``lbs`` to float rounding (tests/test_flame.py), at about half its cost.

    Every other joint's transform is then the identity, so skinning is
    sum_j w_j v + w_jaw (R_jaw - I)(v - j_jaw), and the pose correctives are the jaw's 9 columns.
    v_base (B,1,V,3); j_base (B,1,3) the jaw joint of template + identity; expr (B,T,E); jaw (B,T,3)
    axis-angle; expr_dirs (E,V*3); jaw_joint_dirs (E,3) the jaw joint's expression blend shapes;
    jaw_posedirs (9,V*3) the jaw's pose-corrective blend shapes; jaw_weights, weight_sums (V,): the
    jaw's skinning weight and the sum of all joints' weights (1 up to rounding) per vertex.
    """
    B, T = expr.shape[:2]
    V = v_base.shape[-2]
    rot = batch_rodrigues(jaw.reshape(-1, 3)).view(B, T, 3, 3)
    rel = rot - torch.eye(3, dtype=rot.dtype, device=rot.device)                    # R - I
    v = v_base + (expr @ expr_dirs + rel.reshape(B, T, 9) @ jaw_posedirs).view(B, T, V, 3)
    j = (j_base + expr @ jaw_joint_dirs)[:, :, None]                                 # (B,T,1,3)
    return weight_sums[:, None] * v + jaw_weights[:, None] * ((v - j) @ rel.transpose(-1, -2))


def lbs_in_chunks(fn, step: int, v_base, j_base, expr, pose, recompute: bool) -> torch.Tensor:
    """``fn(v_base, j_base, expr_chunk, pose_chunk)`` over time chunks of ``step`` frames -> (B,T,V,3).

    ``recompute``: keep only the inputs for backward and rerun each chunk there, so a (8,300,51)
    training batch keeps its output vertices alive instead of ~5 intermediates of that size.
    """
    T = expr.shape[1]
    if recompute and T > step:
        return _RecomputedLBS.apply(fn, step, v_base, j_base, expr, pose)
    chunks = [fn(v_base, j_base, expr[:, t:t + step], pose[:, t:t + step]) for t in range(0, T, step)]
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks, 1)


class _RecomputedLBS(torch.autograd.Function):
    """Activation checkpointing of ``fn`` over time chunks, written out instead of
    ``torch.utils.checkpoint`` because it saves more memory, which is its whole purpose (the loss forward
    + backward's peak memory against both checkpoint variants and none: scripts/bench_lbs_recompute.py,
    docs/BENCHMARKS.md, "FLAME LBS recompute")."""

    @staticmethod
    def forward(ctx, fn, step, v_base, j_base, expr, pose):
        ctx.fn, ctx.step = fn, step
        ctx.save_for_backward(v_base, j_base, expr, pose)
        with torch.no_grad():
            return torch.cat([fn(v_base, j_base, expr[:, t:t + step], pose[:, t:t + step])
                              for t in range(0, expr.shape[1], step)], 1)

    @staticmethod
    def backward(ctx, grad_out):
        v_base, j_base, expr, pose = ctx.saved_tensors
        need = ctx.needs_input_grad[2:]
        grads = [torch.zeros_like(x) if n else None for x, n in zip((v_base, j_base, expr, pose), need)]
        for t in range(0, expr.shape[1], ctx.step):
            sl = slice(t, t + ctx.step)
            with torch.enable_grad():
                inputs = [x.detach().requires_grad_(n) for x, n in
                          zip((v_base, j_base, expr[:, sl], pose[:, sl]), need)]
                out = ctx.fn(*inputs)
                wrt = [x for x in inputs if x.requires_grad]
                # <out, grad> as a scalar: the same vector-Jacobian product, and autograd.grad with
                # an explicit grad_outputs tensor would import sympy (seconds) on first use
                g = iter(torch.autograd.grad((out * grad_out[:, sl]).sum(), wrt))
            for i, n in enumerate(need):
                if n:
                    if i < 2:
                        grads[i] += next(g)          # shared over time: accumulate
                    else:
                        grads[i][:, sl] = next(g)
        return (None, None, *grads)
