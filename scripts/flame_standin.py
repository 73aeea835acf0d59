"""Procedural STAND-IN for FLAME: a synthetic head with FLAME's array layout (NOT the licensed model).

The licensed FLAME files cannot ship, so the offline demo and the tests use this: 5023 vertices on a
closed head-like surface, a jaw joint whose rotation opens the mouth, expression components that
move the lips, brows and lids, and a masks file with the FLAME region names. It is written in the
same pkl layout as FLAME 2020 (``write_standin_files``) and goes through the same loader.
"""
from __future__ import annotations

import os
import pickle

import numpy as np

from models.flame import N_JOINTS, N_VERTICES, write_flame_pickle

_N_RINGS, _N_LON = 66, 76          # 66*76 ring vertices + 2 poles + 5 split vertices = 5023
_MOUTH_Y = -0.045                  # height of the lip line (metres)
_EYE = (0.032, 0.02)               # |x|, y of the eye centres


def _smoothstep(x, a, b):
    t = np.clip((x - a) / (b - a), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _sigmoid(x):
    return 0.5 * (1 + np.tanh(0.5 * x))


def _gauss(d, s):
    return np.exp(-0.5 * (d / s) ** 2)


def _warp(n, lo, hi, density, offset):
    """n samples in [lo, hi] spaced by the inverse of a density (denser where density is high)."""
    u = np.linspace(lo, hi, 8001)
    cdf = np.concatenate([[0], np.cumsum(0.5 * (density(u[1:]) + density(u[:-1])) * np.diff(u))])
    return np.interp((np.arange(n) + offset) / (n - 1 + 2 * offset), cdf / cdf[-1], u)


def _standin_geometry():
    """Vertices (5023,3) float64 and faces (F,3) of a closed, outward-oriented head-like surface.

    A UV ellipsoid (y up, z forward, metres) with denser sampling on the face, a narrower jaw, nose,
    lips, chin, brow ridge, eye sockets and ears; 5 triangles at the back of the head are split at their
    centroid to reach FLAME's 5023 vertices exactly.
    """
    theta = _warp(_N_RINGS, 0.0, np.pi, lambda t: 1 + 1.2 * _gauss(t - 1.75, 0.45), offset=1.0)
    phi = _warp(_N_LON + 1, -np.pi, np.pi, lambda p: 1 + 1.5 * _gauss(p, 0.8), offset=0.0)[:-1]
    th, ph = np.meshgrid(theta, phi, indexing="ij")                        # (rings, lon)
    ax, ay, az = 0.078, 0.115, 0.095
    x = ax * np.sin(th) * np.sin(ph)
    y = ay * np.cos(th)
    z = az * np.sin(th) * np.cos(ph)
    pts = np.concatenate([np.stack([x, y, z], -1).reshape(-1, 3), [[0, ay, 0], [0, -ay, 0]]])
    x, y, z = pts.T.copy()
    x *= 1 - 0.22 * _smoothstep(-y, 0.0, 0.1)                              # narrower jaw and chin
    z = np.where(z < 0, z * 1.06, z)                                       # fuller back of the head
    front = _smoothstep(z / az, 0.35, 0.8)
    dz = (0.024 * _gauss(x, 0.008) * _gauss(y + 0.008, 0.014)              # nose
          + 0.006 * _gauss(x, 0.02) * _gauss(y - _MOUTH_Y, 0.009)          # lips
          - 0.003 * _gauss(x, 0.018) * _gauss(y - _MOUTH_Y, 0.0018)        # lip line crease
          + 0.009 * _gauss(x, 0.022) * _gauss(y + 0.088, 0.012)            # chin
          + 0.004 * _gauss(x, 0.04) * _gauss(y - 0.042, 0.008)             # brow ridge
          - 0.008 * _gauss(np.abs(x) - _EYE[0], 0.011) * _gauss(y - _EYE[1], 0.009))  # eye sockets
    z = z + front * dz
    x = x + np.sign(x) * 0.007 * _gauss(z + 0.01, 0.01) * _gauss(y, 0.015) * _smoothstep(np.abs(x), 0.05, 0.07)  # ears
    verts = np.stack([x, y, z], -1)

    R, L = _N_RINGS, _N_LON
    idx = np.arange(R * L).reshape(R, L)
    top, bottom = R * L, R * L + 1
    faces = []
    j, j1 = np.arange(L), (np.arange(L) + 1) % L
    faces += [np.stack([np.full(L, top), idx[0, j1], idx[0, j]], 1)]
    for r in range(R - 1):
        a, b, c, d = idx[r, j], idx[r, j1], idx[r + 1, j], idx[r + 1, j1]
        faces += [np.stack([a, b, d], 1), np.stack([a, d, c], 1)]
    faces += [np.stack([np.full(L, bottom), idx[R - 1, j], idx[R - 1, j1]], 1)]
    faces = np.concatenate(faces)
    if _signed_volume(verts, faces) < 0:
        faces = faces[:, ::-1]
    # split 5 back-of-head triangles at their centroid: 5018 -> 5023 vertices, still closed
    centroids = verts[faces].mean(1)
    new_faces, new_verts = [faces], [verts]
    used = np.zeros(len(faces), bool)
    for k, target in enumerate([(0, 0.05, -0.1), (0.045, 0.03, -0.08), (-0.045, 0.03, -0.08),
                                (0.025, -0.02, -0.095), (-0.025, -0.02, -0.095)]):
        fi = int(np.argmin(np.linalg.norm(centroids - np.array(target), axis=1) + 1e9 * used))
        used[fi] = True
        p = len(verts) + k
        a, b, c = faces[fi]
        new_verts.append(centroids[fi][None])
        new_faces.append(np.array([[a, b, p], [b, c, p], [c, a, p]]))
    faces = np.concatenate(new_faces)[np.concatenate([~used, np.ones(15, bool)])]
    verts = np.concatenate(new_verts)
    assert verts.shape == (N_VERTICES, 3)
    return verts, faces.astype(np.int64)


def _signed_volume(verts, faces):
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def _vertex_normals(verts, faces):
    fn = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
    n = np.zeros_like(verts)
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    return n / np.linalg.norm(n, axis=1, keepdims=True)


def _standin_regions(verts):
    """Soft region weights (V,) used for the bases and the masks; all from template geometry."""
    x, y, z = verts.T
    front = _smoothstep(z, 0.04, 0.075)
    lipline = _MOUTH_Y
    r = {}
    r["upper_lip"] = front * _gauss(x, 0.017) * _gauss(y - (lipline + 0.006), 0.006) * _sigmoid((y - lipline) / 0.0015)
    r["lower_lip"] = front * _gauss(x, 0.017) * _gauss(y - (lipline - 0.007), 0.007) * _sigmoid((lipline - y) / 0.0015)
    r["mouth"] = front * _gauss(x, 0.022) * _gauss(y - lipline, 0.012)
    r["mouth_wide"] = front * _gauss(x, 0.03) * _gauss(y - lipline, 0.014)
    r["corners"] = front * _gauss(np.abs(x) - 0.025, 0.008) * _gauss(y - lipline, 0.009)
    r["cheeks"] = _smoothstep(z, 0.0, 0.05) * _gauss(np.abs(x) - 0.045, 0.014) * _gauss(y - (lipline + 0.018), 0.016)
    r["brows"] = front * _gauss(np.abs(x) - 0.03, 0.022) * _gauss(y - 0.042, 0.01)
    r["inner_brows"] = front * _gauss(np.abs(x) - 0.012, 0.01) * _gauss(y - 0.038, 0.008)
    r["upper_lids"] = front * _gauss(np.abs(x) - _EYE[0], 0.009) * _gauss(y - (_EYE[1] + 0.006), 0.005)
    r["front"] = front
    return r


def make_standin_masks() -> dict:
    """Region masks of the stand-in head in the FLAME_masks.pkl layout: name -> int64 vertex ids."""
    verts, _ = _standin_geometry()
    x, y, z = verts.T
    front = z > 0.035
    eye_l = front & (np.hypot(x - _EYE[0], (y - _EYE[1]) * 1.2) < 0.02)
    eye_r = front & (np.hypot(x + _EYE[0], (y - _EYE[1]) * 1.2) < 0.02)
    sel = {
        "lips": front & (np.abs(x) < 0.028) & (np.abs(y - _MOUTH_Y) < 0.013 * np.sqrt(np.clip(1 - (x / 0.03) ** 2, 0, 1))),
        "forehead": front & (y > 0.038) & (y < 0.09) & (np.abs(x) < 0.06),
        "eye_region": eye_l | eye_r,
        "left_eye_region": eye_l,
        "right_eye_region": eye_r,
        "nose": front & (np.abs(x) < 0.016) & (y > -0.032) & (y < 0.025),
        "face": (z > 0.02) & (y > -0.11) & (y < 0.09) & (np.abs(x) < 0.07),
        "scalp": (y > 0.09) | ((z < -0.02) & (y > -0.02)),
        "neck": y < -0.1,
    }
    return {k: np.nonzero(v)[0].astype(np.int64) for k, v in sel.items()}


def _poly_basis(verts):
    """35 monomials x^a y^b z^c (a+b+c <= 4) of normalised coordinates: smooth global fields (V,35)."""
    u = verts / np.array([0.08, 0.11, 0.1])
    cols = [u[:, 0] ** a * u[:, 1] ** b * u[:, 2] ** c
            for a in range(5) for b in range(5) for c in range(5) if a + b + c <= 4]
    return np.stack(cols, 1)


def make_standin_flame(seed: int = 0) -> dict:
    """A procedural STAND-IN for the licensed FLAME model, with FLAME's keys and array shapes.

    NOT FLAME: a synthetic head (metres, y up, z forward, ~0.23 m tall) whose blend shapes are
    hand-made: shapedirs (5023,3,400) = 300 smooth shape + 100 expression components. Expression 0-9
    move the mouth (0 lip opening, 1 rounding/protrusion, 2 stretching, 3 upper-lip raise, 4 lower-lip
    depress, 5 smile, 6 lip press, 7 frown, 8 cheek puff, 9 mouth shift), 10-12 brows and lids, the
    rest are small random local bumps. The jaw joint sits behind and below the mouth, so a positive
    jaw rotation about x opens the mouth (0.2 rad moves the lower lip ~1.7 cm). Deterministic in seed.
    """
    rng = np.random.default_rng(seed)
    verts, faces = _standin_geometry()
    V = len(verts)
    x, y, z = verts.T
    normals = _vertex_normals(verts, faces)
    reg = _standin_regions(verts)
    poly = _poly_basis(verts)
    sgn = np.sign(x)

    def field(dx=0.0, dy=0.0, dz=0.0):
        return np.stack(np.broadcast_arrays(dx, dy, dz, np.zeros(V)), -1)[:, :3]

    def bump(center_sigma):
        """A random smooth local bump along the normal, centred on a random front-ish vertex."""
        c = verts[rng.integers(V)] if center_sigma is None else center_sigma
        s = rng.uniform(0.012, 0.035)
        return normals * _gauss(np.linalg.norm(verts - c, axis=1), s)[:, None]

    # -- shape: 300 components, 35 smooth global fields then local bumps, decaying magnitudes
    shape = np.zeros((V, 3, 300))
    for k in range(300):
        if k < 35:
            f = poly @ rng.normal(size=35)
            d = normals * (f / np.abs(f).max())[:, None]
        else:
            d = bump(None)
        shape[:, :, k] = 0.006 / (1 + k / 8) * d

    # -- expression: 100 components
    ul, ll, m, mw, co, ch = (reg[k] for k in ("upper_lip", "lower_lip", "mouth", "mouth_wide", "corners", "cheeks"))
    expr = np.zeros((V, 3, 100))
    expr[:, :, 0] = field(dy=0.002 * ul - 0.0045 * ll, dz=-0.001 * ll)                  # open lips
    expr[:, :, 1] = field(dx=-(x / 0.025) * 0.003 * mw, dz=0.0045 * m)                  # round / protrude
    expr[:, :, 2] = field(dx=(x / 0.025) * 0.0035 * mw, dy=0.0005 * co, dz=-0.001 * m)  # stretch
    expr[:, :, 3] = field(dy=0.004 * ul, dz=0.001 * ul)                                 # upper lip raise
    expr[:, :, 4] = field(dy=-0.004 * ll, dz=0.0015 * ll)                               # lower lip depress
    expr[:, :, 5] = field(dx=sgn * 0.002 * co, dy=0.004 * co + 0.0015 * ch, dz=-0.001 * co)  # smile
    expr[:, :, 6] = field(dy=-0.0015 * ul + 0.0025 * ll, dz=-0.001 * m)                 # lip press
    expr[:, :, 7] = field(dy=-0.004 * co)                                               # frown
    expr[:, :, 8] = normals * (0.004 * ch)[:, None]                                     # cheek puff
    expr[:, :, 9] = field(dx=0.004 * mw)                                                # mouth shift
    expr[:, :, 10] = field(dy=0.004 * reg["brows"])                                     # brow raise
    expr[:, :, 11] = field(dx=-sgn * 0.002 * reg["inner_brows"], dy=-0.002 * reg["inner_brows"])  # furrow
    expr[:, :, 12] = field(dy=-0.003 * reg["upper_lids"])                               # lid close
    for k in range(13, 100):
        c = verts[rng.choice(np.nonzero(reg["front"] > 0.5)[0])]
        expr[:, :, k] = 0.002 / (1 + (k - 13) / 20) * bump(c)

    # -- skinning weights: jaw below the lip line at the front, root at the bottom of the back
    side = _smoothstep(np.abs(x), 0.025, 0.06)
    boundary = _MOUTH_Y + 0.02 * side                           # the jaw line rises toward the ears
    softness = 0.0015 + 0.008 * side                            # sharp at the lips, smooth on the cheeks
    # (the last factor makes the weight exactly 0 above the nose, as in FLAME: the upper face never
    # follows the jaw)
    w_jaw = _sigmoid((boundary - y) / softness) * _sigmoid((z + 0.005) / 0.01) * _smoothstep(-y, 0.0, 0.015)
    w_root = _sigmoid((-0.098 - y) / 0.006) * (1 - w_jaw)
    w_eye_l = 0.5 * _gauss(np.hypot(x - _EYE[0], y - _EYE[1]), 0.006) * (z > 0)
    w_eye_r = 0.5 * _gauss(np.hypot(x + _EYE[0], y - _EYE[1]), 0.006) * (z > 0)
    w_neck = np.clip(1 - w_jaw - w_root - w_eye_l - w_eye_r, 0, None)
    weights = np.stack([w_root, w_neck, w_jaw, w_eye_l, w_eye_r], 1)
    weights /= weights.sum(1, keepdims=True)

    # -- joint regressor: uniform weights over the vertices nearest to symmetric anchor points, so the
    #    regressed joints lie inside the head (root/neck at the bottom, jaw behind/below the mouth)
    from scipy.spatial import cKDTree

    tree = cKDTree(verts)
    anchors = [
        [(0.06, -0.1, -0.02), (-0.06, -0.1, -0.02), (0, -0.11, 0.03), (0, -0.1, -0.07)],   # root
        [(0.07, -0.075, -0.015), (-0.07, -0.075, -0.015), (0, -0.08, 0.06), (0, -0.08, -0.09)],  # neck
        [(0.075, -0.025, -0.015), (-0.075, -0.025, -0.015)],                             # jaw
        [(_EYE[0] - 0.01, _EYE[1], 0.08), (_EYE[0] + 0.01, _EYE[1], 0.08)],              # left eye
        [(-_EYE[0] - 0.01, _EYE[1], 0.08), (-_EYE[0] + 0.01, _EYE[1], 0.08)],            # right eye
    ]
    J_reg = np.zeros((N_JOINTS, V))
    for j, pts in enumerate(anchors):
        ids = np.unique(np.concatenate([tree.query(p, k=6)[1] for p in pts]))
        J_reg[j, ids] = 1.0 / len(ids)

    # -- pose correctives: small smooth fields gated by the joint's weights (jaw ~1 mm per unit)
    posedirs = np.zeros((V, 3, 36))
    for b, (joint, mag) in enumerate([(1, 0.0005), (2, 0.002), (3, 0.0003), (4, 0.0003)]):
        for e in range(9):
            f = poly @ rng.normal(size=(35, 3))
            posedirs[:, :, 9 * b + e] = mag * weights[:, joint:joint + 1] * f / np.abs(f).max()

    return {
        "v_template": verts.astype(np.float32),
        "shapedirs": np.concatenate([shape, expr], 2).astype(np.float32),
        "posedirs": posedirs.astype(np.float32),
        "J_regressor": J_reg.astype(np.float32),
        "weights": weights.astype(np.float32),
        # as in the official files: the root's parent is uint32 max
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "f": faces.astype(np.uint32),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
        "standin": "procedural stand-in head, NOT the licensed FLAME model (models/flame.py)",
    }


def write_standin_files(folder: str, seed: int = 0) -> tuple:
    """Write standin_generic_model.pkl and standin_FLAME_masks.pkl into folder -> (model path, masks path)."""
    os.makedirs(folder, exist_ok=True)
    model_path = os.path.join(folder, "standin_generic_model.pkl")
    masks_path = os.path.join(folder, "standin_FLAME_masks.pkl")
    write_flame_pickle(make_standin_flame(seed), model_path)
    with open(masks_path, "wb") as f:
        pickle.dump(make_standin_masks(), f, protocol=4)
    return model_path, masks_path
