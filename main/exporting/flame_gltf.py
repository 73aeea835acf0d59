"""FLAME's skinning restated in glTF's terms, so that a glTF runtime reproduces it exactly.

FLAME (models/lbs.py) computes v = sum_j w_j A_j (v_base + E e + P p) with
- v_base (V,3) template + identity, E the expression blend shapes, e the expression coefficients;
- p (36,) the pose features, the elements of R_j - I of the four non-root joints' local rotations, and P
  the pose-corrective blend shapes;
- A_j the world transform of joint j relative to the rest pose, built from the joints regressed from
  the shaped mesh *including* expression, so the joints move with every frame.
A glTF runtime computes v = sum_j w_j (world_j IBM_j) (base + sum_k weight_k target_k). So: base =
v_base, targets = E's columns and P's columns, morph weights = [e, p] (glTF morph weights are any
float), and with fixed inverse bind matrices IBM_j = T(-J_rest_j) (J_rest: the joints of the identity
without expression) each joint node's world matrix per frame is world_j = A_j T(J_rest_j); the nodes'
local translation and rotation follow from the hierarchy. Only the correctives of joints that rotate
in the animation are kept (their weights are zero otherwise).

Each blend shape becomes two morph targets, ``+`` and ``-``, so that every morph weight lies in [0, 1]:
importers may clamp weights to that range (Blender's shape keys do, and its glTF importer 3.4 widens the
range only to the first key's value), while FLAME's coefficients and pose features take either sign. A
coefficient c with largest positive value P and negative value N over the animation is played as
weight_+ = max(c, 0) / s_+ on target s_+ * d and weight_- = max(-c, 0) / s_- on target -s_- * d, with
s_+ = max(1, P), s_- = max(1, N): the targets are the FLAME basis itself (+/-) when |c| <= 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.lbs import batch_rodrigues

JOINT_NAMES = ("global", "neck", "jaw", "eye_left", "eye_right")


@dataclass(frozen=True)
class GltfAnimation:
    """base (V,3) float32; faces (F,3); targets (M,V,3) float32 with names (M,) and scales (M,) (the signed
    s_+ / -s_- of the module docstring: coefficient = sum of scale * weight over its two targets);
    weights (T,M) float32 in [0, 1];
    joint_weights (V,J) float32 (FLAME's skinning weights); parents (J,); rest_joints (J,3) float64
    (IBM_j = T(-rest_joints[j])); translations (T,J,3) float32 and rotations (T,J,4) float32 (x, y, z, w)
    of each joint node relative to its parent (the root relative to the scene)."""
    base: np.ndarray
    faces: np.ndarray
    targets: np.ndarray
    target_names: list[str]
    target_scales: list[float]
    weights: np.ndarray
    joint_weights: np.ndarray
    parents: tuple
    rest_joints: np.ndarray
    translations: np.ndarray
    rotations: np.ndarray


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def motion_pose(motion: np.ndarray) -> np.ndarray:
    """motion (T,51) -> FLAME pose (T,5,3) axis-angle: the jaw opens about x, every other joint rests."""
    pose = np.zeros((motion.shape[0], len(JOINT_NAMES), 3))
    pose[:, 2, 0] = motion[:, 50]
    return pose


def flame_to_gltf(flame, shape: np.ndarray | None, expr: np.ndarray, pose: np.ndarray) -> GltfAnimation:
    """flame: models/flame.py FLAME; shape (S<=n_shape,) or None; expr (T,E<=n_expr); pose (T,5,3)
    axis-angle -> GltfAnimation whose playback equals ``flame(shape, expr, pose)`` frame by frame."""
    T, E, ns = expr.shape[0], expr.shape[1], flame.n_shape
    s = np.zeros(ns)
    if shape is not None:
        s[:shape.shape[0]] = shape
    dirs, jdirs = _np(flame.shapedirs), _np(flame.J_dirs)
    base = _np(flame.v_template) + dirs[:, :, :ns] @ s
    rest = _np(flame.J_template) + jdirs[:, :, :ns] @ s                       # (J,3)
    joints = rest + np.einsum("jck,tk->tjc", jdirs[:, :, ns:ns + E], expr)    # (T,J,3)
    rot = _np(batch_rodrigues(torch.as_tensor(pose, dtype=torch.float64).reshape(-1, 3))).reshape(T, -1, 3, 3)
    feature = (rot[:, 1:] - np.eye(3)).reshape(T, -1)                         # (T,36), models/lbs.py's order
    moving = [j for j in range(1, rot.shape[1]) if np.any(feature[:, 9 * (j - 1):9 * j])]
    cols = [9 * (j - 1) + k for j in moving for k in range(9)]
    posedirs = _np(flame.posedirs)
    targets = np.concatenate([dirs[:, :, ns:ns + E].transpose(2, 0, 1), posedirs[:, :, cols].transpose(2, 0, 1)])
    names = [f"expr_{k:02d}" for k in range(E)] + [f"pose_{JOINT_NAMES[j]}_{k}" for j in moving for k in range(9)]
    targets, names, scales, weights = split_signs(targets, names, np.concatenate([expr, feature[:, cols]], 1))
    world = _joint_worlds(rot, joints, rest, flame.parents_list)
    local = _locals(world, flame.parents_list)
    return GltfAnimation(base.astype(np.float32), flame.faces, targets, names, scales, weights,
                         _np(flame.lbs_weights).astype(np.float32), tuple(flame.parents_list), rest,
                         local[:, :, :3, 3].astype(np.float32), _quaternions(local[:, :, :3, :3]))


def split_signs(targets: np.ndarray, names: list[str], coeffs: np.ndarray):
    """Blend shapes (K,V,3) named ``names`` with coefficients (T,K) -> the +/- morph targets of the module
    docstring: targets (2K,V,3) float32, names, signed scales (2K,), weights (T,2K) float32 in [0, 1]."""
    pos = np.maximum(1.0, coeffs.max(0))
    neg = np.maximum(1.0, -coeffs.min(0))
    scales = np.stack([pos, -neg], 1).reshape(-1)                                    # (2K,) [+, -, +, -, ...]
    out = (targets[:, None] * np.stack([pos, -neg], 1)[:, :, None, None]).reshape(-1, *targets.shape[1:])
    weights = np.stack([np.maximum(coeffs, 0) / pos, np.maximum(-coeffs, 0) / neg], 2).reshape(coeffs.shape[0], -1)
    return (out.astype(np.float32), [f"{n}{sign}" for n in names for sign in "+-"], scales.tolist(),
            np.clip(weights, 0, 1).astype(np.float32))


def _joint_worlds(rot: np.ndarray, joints: np.ndarray, rest: np.ndarray, parents) -> np.ndarray:
    """rot (T,J,3,3) local rotations, joints (T,J,3) this frame's joints, rest (J,3) -> world (T,J,4,4)
    of the joint nodes: A_j T(rest_j), A_j as models/lbs.py ``rigid_transforms``."""
    T, J = joints.shape[:2]
    G = np.zeros((T, J, 4, 4))
    G[..., 3, 3] = 1
    for j, p in enumerate(parents):
        offset = joints[:, j] if p < 0 else joints[:, j] - joints[:, p]
        local = np.zeros((T, 4, 4))
        local[:, :3, :3], local[:, :3, 3], local[:, 3, 3] = rot[:, j], offset, 1
        G[:, j] = local if p < 0 else G[:, p] @ local
    shift = np.zeros((T, J, 4, 4))
    shift[..., :, :] = np.eye(4)
    shift[..., :3, 3] = rest - joints                # A_j T(rest_j) = G_j T(-joint_j) T(rest_j)
    return G @ shift


def _locals(world: np.ndarray, parents) -> np.ndarray:
    """world (T,J,4,4) rigid -> each node's matrix relative to its parent's (T,J,4,4)."""
    out = world.copy()
    for j, p in enumerate(parents):
        if p >= 0:
            R, t = world[:, p, :3, :3], world[:, p, :3, 3]
            inv = np.zeros_like(world[:, p])
            inv[:, :3, :3] = R.transpose(0, 2, 1)
            inv[:, :3, 3] = -(R.transpose(0, 2, 1) @ t[..., None])[..., 0]
            inv[:, 3, 3] = 1
            out[:, j] = inv @ world[:, j]
    return out


def _quaternions(R: np.ndarray) -> np.ndarray:
    """Rotation matrices (T,J,3,3) -> unit quaternions (T,J,4) float32 (x, y, z, w), w >= 0 at frame 0 and
    each frame's sign the one nearer the frame before (glTF slerps between keys the short way)."""
    m = R.reshape(-1, 3, 3)
    q = np.empty((m.shape[0], 4))
    # Shepperd: divide by the largest of the four candidate components (no cancellation)
    diag = np.stack([m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], 1)
    tr = diag.sum(1)
    cand = np.stack([1 + 2 * diag[:, 0] - tr, 1 + 2 * diag[:, 1] - tr, 1 + 2 * diag[:, 2] - tr, 1 + tr], 1)
    k = cand.argmax(1)
    for i in range(4):
        sel = k == i
        if not sel.any():
            continue
        a = m[sel]
        r = np.sqrt(cand[sel, i]) * 2     # 4 |q_i|
        w = np.stack([a[:, 2, 1] - a[:, 1, 2], a[:, 0, 2] - a[:, 2, 0], a[:, 1, 0] - a[:, 0, 1]], 1) / r[:, None]
        off = [(a[:, 0, 1] + a[:, 1, 0]) / r, (a[:, 0, 2] + a[:, 2, 0]) / r, (a[:, 1, 2] + a[:, 2, 1]) / r]
        qi = np.empty((sel.sum(), 4))
        if i == 3:
            qi[:, :3], qi[:, 3] = w, r / 4
        else:
            x = np.zeros((sel.sum(), 3))
            x[:, i] = r / 4
            others = {0: (off[0], off[1]), 1: (off[0], off[2]), 2: (off[1], off[2])}[i]
            x[:, [c for c in range(3) if c != i]] = np.stack(others, 1)
            qi[:, :3], qi[:, 3] = x, w[:, i]
        q[sel] = qi
    q = q.reshape(R.shape[:-2] + (4,))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    q[0] *= np.where(q[0, :, 3:] < 0, -1, 1)
    # flipping frame t flips its product with t+1 too: the signs to apply are the running product
    flips = np.where((q[1:] * q[:-1]).sum(-1, keepdims=True) < 0, -1, 1)
    q[1:] *= np.cumprod(flips, axis=0)
    return q.astype(np.float32)
