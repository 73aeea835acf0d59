"""FLAME model: safe loading of the licensed files, differentiable LBS, motion51 <-> vertices / 287 coeffs.

The licensed FLAME files (FLAME 2020 ``generic_model.pkl``, FLAME 2023 pkl, ``FLAME_masks.pkl``) are
Python-2 era pickles holding chumpy ``Ch`` objects and ``scipy.sparse`` matrices. They are read by a
restricted unpickler (an allow-list of numpy / scipy.sparse / chumpy names; chumpy objects become
numpy arrays), so neither chumpy nor trust in the file is needed: anything outside the allow-list
raises ``UnsafePickleError`` instead of running.

Conventions (DESIGN.md section 4):
- 5 joints: global, neck, jaw, left eye, right eye; parents [-1, 0, 1, 1, 1].
- pose (N, 15) = axis-angle [global(3), neck(3), jaw(3), eye_l(3), eye_r(3)].
- motion51 = [expr[:50], jaw_x]; as FLAME input: expr zero-padded to the model's expression count,
  jaw = [jaw_x, 0, 0], every other joint 0.
- 287-dim DECA/EMOCA coefficients: shape100 | exp50 | pose6 = [0,0,0, jaw,0,0] | cam3 = 0 | detail128.

A procedural STAND-IN model with the real array shapes (the licensed model cannot ship) is in
models/flame_standin.py.
"""
from __future__ import annotations

import contextlib
import os
import pickle

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.errors import UserError
from utils.framing import MOTION_DIM, N_EXPR

N_VERTICES = 5023
N_JOINTS = 5
FLAME_PARENTS = (-1, 0, 1, 1, 1)
REQUIRED_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")


class FlameLoadError(UserError, ValueError):
    """A FLAME / mask file that cannot be used; the message names the file and the key."""


class UnsafePickleError(FlameLoadError):
    """A pickle that refers to a class or function outside the allow-list (it is never called)."""


# --------------------------------------------------------------------------------------------------
# Restricted unpickling
# --------------------------------------------------------------------------------------------------

class _ChumpyStandIn:
    """Takes the place of any chumpy class while unpickling. chumpy's ``Ch.__getstate__`` stores the
    object's ``__dict__``; a plain ``Ch`` keeps its value in key ``'x'``. (Unpickling creates it with
    ``__new__`` only, so the defaults are class attributes.)"""

    _state: dict = {}
    _chumpy_class = "chumpy"

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self._state = state if isinstance(state, dict) else {"x": state}

    def to_numpy(self, where: str) -> np.ndarray:
        x = self._state.get("x")
        if x is None:
            raise FlameLoadError(
                f"{where} is a chumpy expression ({self._chumpy_class}) without a stored value ('x'); "
                f"it cannot be evaluated without chumpy. Convert the model to .npz on a machine with chumpy: "
                f"np.savez(out, **{{k: np.asarray(v) for k, v in model.items()}})")
        return np.asarray(_to_plain(x, where))


class _SparseStandIn:
    """Takes the place of scipy.sparse csc/csr/coo classes (old and new module paths); turned into a
    dense array from its pickled attributes, so scipy's private pickle layout never has to match."""

    fmt = "csc"
    _state: dict = {}

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self._state = state if isinstance(state, dict) else {}

    def to_numpy(self, where: str) -> np.ndarray:
        import scipy.sparse as sp

        s = self._state
        try:
            data = np.asarray(_to_plain(s["data"], where))
            shape = s.get("_shape", s.get("shape"))
            if self.fmt == "coo":
                if "coords" in s:
                    row, col = (np.asarray(c) for c in s["coords"])
                else:
                    row, col = np.asarray(s["row"]), np.asarray(s["col"])
                m = sp.coo_matrix((data, (row, col)), shape=shape)
            else:
                indices, indptr = np.asarray(s["indices"]), np.asarray(s["indptr"])
                if shape is None:  # very old pickles: infer from the index arrays
                    n_major, n_minor = len(indptr) - 1, int(indices.max()) + 1 if len(indices) else 0
                    shape = (n_minor, n_major) if self.fmt == "csc" else (n_major, n_minor)
                cls = sp.csc_matrix if self.fmt == "csc" else sp.csr_matrix
                m = cls((data, indices, indptr), shape=tuple(int(d) for d in shape))
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise FlameLoadError(f"{where}: a pickled scipy.sparse {self.fmt} matrix could not be rebuilt ({e})") from None
        return np.asarray(m.todense())


def _sparse_class(fmt: str):
    return type(f"_Sparse_{fmt}", (_SparseStandIn,), {"fmt": fmt})


_SPARSE = {fmt: _sparse_class(fmt) for fmt in ("csc", "csr", "coo")}


def _numpy_allowed() -> dict:
    """(module, name) -> object for numpy's pickle helpers, under their numpy 1.x and 2.x paths."""
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        for sub in ("multiarray", "_multiarray_umath"):
            allowed[(f"{core}.{sub}", "_reconstruct")] = reconstruct
            allowed[(f"{core}.{sub}", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


def _build_allow_list() -> dict:
    import builtins
    import codecs
    import collections
    import copyreg

    allowed = _numpy_allowed()
    for bmod in ("builtins", "__builtin__"):  # Python 2 pickles name the builtins module __builtin__
        for name in ("set", "frozenset", "slice", "complex", "object", "list", "dict", "tuple", "bytearray"):
            allowed[(bmod, name)] = getattr(builtins, name)
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    # copyreg._reconstructor only calls base.__new__/__init__ of classes that themselves passed this
    # list; _codecs.encode turns a latin-1 str back into bytes (Python 3 protocol-2 pickles of bytes).
    for cmod in ("copyreg", "copy_reg"):
        allowed[(cmod, "_reconstructor")] = copyreg._reconstructor
    allowed[("_codecs", "encode")] = codecs.encode
    for fmt in ("csc", "csr", "coo"):
        for mod in ("scipy.sparse", f"scipy.sparse.{fmt}", f"scipy.sparse._{fmt}"):
            for kind in ("matrix", "array"):
                allowed[(mod, f"{fmt}_{kind}")] = _SPARSE[fmt]
    return allowed


_ALLOWED = _build_allow_list()


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "chumpy" or module.startswith("chumpy."):
            # every chumpy class becomes the stand-in; remember which one for error messages
            return type(name, (_ChumpyStandIn,), {"_chumpy_class": f"{module}.{name}"})
        raise UnsafePickleError(
            f"{self._source}: refusing to unpickle '{module}.{name}': only numpy arrays, scipy.sparse "
            f"matrices and chumpy arrays are allowed in FLAME files (a pickle can run arbitrary code).")


def _to_plain(obj, where: str):
    """Recursively replace chumpy / sparse stand-ins by numpy arrays."""
    if isinstance(obj, (_ChumpyStandIn, _SparseStandIn)):
        return obj.to_numpy(where)
    if isinstance(obj, dict):
        return {k: _to_plain(v, f"{where}['{k}']") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_plain(v, where) for v in obj)
    return obj


def safe_pickle_load(path_or_file, source: str | None = None, convert: bool = True):
    """Unpickle with the allow-list above (encoding='latin1' for Python-2 pickles).

    chumpy objects and scipy.sparse matrices come back as numpy arrays (``convert=False`` leaves the
    stand-in objects for the caller to convert). Anything else named in the pickle raises
    ``UnsafePickleError`` before it can be called. Usable for any small parameter pkl.
    """
    source = source or (path_or_file if isinstance(path_or_file, str) else "<pickle>")
    opener = open(path_or_file, "rb") if isinstance(path_or_file, (str, os.PathLike)) else contextlib.nullcontext(path_or_file)
    with opener as f:
        try:
            obj = _RestrictedUnpickler(f, str(source)).load()
        except FlameLoadError:
            raise
        except Exception as e:  # truncated / corrupt file, wrong format
            raise FlameLoadError(f"{source}: not a readable pickle ({type(e).__name__}: {e})") from None
    return _to_plain(obj, str(source)) if convert else obj


def load_flame_pickle(path: str) -> dict:
    """Load a FLAME model file (.pkl: FLAME 2020 / 2023 / stand-in; or .npz) -> dict of numpy arrays.

    Required keys: v_template (V,3), shapedirs (V,3,S+E), posedirs (V,3,36), J_regressor (5,V) (sparse
    in the pkl, returned dense), weights (V,5), kintree_table (2,5), f (F,3). Other keys are kept.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FlameLoadError(
            f"FLAME model file not found: {path}. Get FLAME 2020/2023 from https://flame.is.tue.mpg.de "
            f"(licensed), or run `python scripts/make_demo_data.py` for the procedural stand-in model.")
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as z:
                model = {k: z[k] for k in z.files}
        except Exception as e:
            raise FlameLoadError(f"{path}: not a readable .npz of plain arrays ({type(e).__name__}: {e})") from None
    else:
        model = safe_pickle_load(path, convert=False)
        if not isinstance(model, dict):
            raise FlameLoadError(f"{path}: expected a pickled dict of FLAME arrays, got {type(model).__name__}")
    for key in REQUIRED_KEYS:
        if key not in model:
            raise FlameLoadError(f"{path}: missing required FLAME key '{key}' (found: {', '.join(sorted(model))})")
    out = {}
    for k, v in model.items():
        if k in REQUIRED_KEYS:
            try:
                out[k] = np.asarray(_to_plain(v, f"{path} key '{k}'"))
            except FlameLoadError:
                raise
            except Exception as e:
                raise FlameLoadError(f"{path}: key '{k}' is not an array ({e})") from None
            if out[k].dtype == object:
                raise FlameLoadError(f"{path}: key '{k}' is not a numeric array")
        else:
            try:  # optional keys ('J', 'bs_style', ...): kept when they convert, dropped otherwise
                out[k] = _to_plain(v, f"{path} key '{k}'")
            except FlameLoadError:
                pass
    return out


def write_flame_pickle(model: dict, path: str):
    """Write a model dict in the FLAME pkl layout (plain numpy arrays, scipy.sparse csc J_regressor)."""
    import scipy.sparse as sp

    out = dict(model)
    if not sp.issparse(out["J_regressor"]):
        out["J_regressor"] = sp.csc_matrix(np.asarray(out["J_regressor"]))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(out, f, protocol=4)


# --------------------------------------------------------------------------------------------------
# LBS
# --------------------------------------------------------------------------------------------------

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
    """Kinematic chain. rot (...,J,3,3) local rotations, joints (...,J,3) rest joint positions.

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


def _float32_region(device: torch.device):
    """LBS always runs in float32, also inside an AMP autocast region (fp16 vertices lose ~0.1 mm)."""
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


class FLAME(nn.Module):
    """Differentiable FLAME (linear blend skinning), batched and float32.

    Buffers (non-persistent: the model comes from its own file, not from checkpoints):
    v_template (V,3), shapedirs (V,3,n_shape+n_expr), posedirs (V,3,36), J_regressor (J,V),
    lbs_weights (V,J), parents (J,). ``faces`` is an (F,3) int64 numpy array.
    """

    def __init__(self, model: dict, n_shape: int | None = None, source: str = "<FLAME dict>"):
        super().__init__()
        arr = {k: np.asarray(model[k]) for k in REQUIRED_KEYS if k in model}
        for k in REQUIRED_KEYS:
            if k not in arr:
                raise FlameLoadError(f"{source}: missing required FLAME key '{k}'")
        v = arr["v_template"]
        V = v.shape[0] if v.ndim == 2 else -1

        def expect(key, ok, what):
            if not ok:
                raise FlameLoadError(f"{source}: '{key}' has shape {arr[key].shape}; expected {what}")

        expect("v_template", v.ndim == 2 and v.shape[1] == 3, "(V,3)")
        expect("shapedirs", arr["shapedirs"].ndim == 3 and arr["shapedirs"].shape[:2] == (V, 3), f"({V},3,K)")
        posedirs = arr["posedirs"]
        if posedirs.ndim == 2 and posedirs.shape == (36, V * 3):  # already flattened (smplx layout)
            posedirs = posedirs.T.reshape(V, 3, 36)
        arr["posedirs"] = posedirs
        expect("posedirs", posedirs.shape == (V, 3, 9 * (N_JOINTS - 1)), f"({V},3,36)")
        kt = arr["kintree_table"]
        expect("kintree_table", kt.ndim == 2 and kt.shape[0] == 2, "(2,J)")
        n_joints = kt.shape[1]
        expect("J_regressor", arr["J_regressor"].shape == (n_joints, V), f"({n_joints},{V})")
        expect("weights", arr["weights"].shape == (V, n_joints), f"({V},{n_joints})")
        expect("f", arr["f"].ndim == 2 and arr["f"].shape[1] == 3, "(F,3)")
        if n_joints != N_JOINTS:
            raise FlameLoadError(f"{source}: kintree_table has {n_joints} joints; FLAME has {N_JOINTS}")

        # The root's parent is stored as -1 or as uint32 max (4294967295) in the official files.
        ids = [int(i) for i in kt[1]]
        col = {j: c for c, j in enumerate(ids)}
        parents = [-1] + [col.get(int(kt[0, c]), -2) for c in range(1, n_joints)]
        if any(not (0 <= p < i) for i, p in enumerate(parents) if i > 0):
            raise FlameLoadError(f"{source}: kintree_table {kt.tolist()} is not a tree with parents before children")
        self.parents_list = tuple(parents)

        K = arr["shapedirs"].shape[2]
        if n_shape is None:
            n_shape = 300 if K >= 350 else K - 50   # FLAME 2020/2023: 300 shape + 100 (or 50) expression
        if not 0 <= n_shape <= K - 50:
            raise FlameLoadError(f"{source}: shapedirs has {K} components; need n_shape ({n_shape}) + at least 50 expression")
        self.n_shape, self.n_expr = int(n_shape), int(K - n_shape)
        self.n_vertices = V
        self.source = source

        f32 = lambda x: torch.as_tensor(np.asarray(x, dtype=np.float32))
        self.register_buffer("v_template", f32(v), persistent=False)
        self.register_buffer("shapedirs", f32(arr["shapedirs"]), persistent=False)
        self.register_buffer("posedirs", f32(posedirs), persistent=False)
        self.register_buffer("J_regressor", f32(arr["J_regressor"]), persistent=False)
        self.register_buffer("lbs_weights", f32(arr["weights"]), persistent=False)
        self.register_buffer("parents", torch.tensor(parents, dtype=torch.long), persistent=False)
        # Joint regression from the shaped vertices is linear in the blend-shape coefficients:
        # J = Jreg (v_template + S c) = Jreg v_template + (Jreg S) c. Precomputing (Jreg S) in float64
        # gives the same joints without regressing the full (N,V,3) vertex tensor every frame.
        jreg = np.asarray(arr["J_regressor"], dtype=np.float64)
        self.register_buffer("J_template", f32(jreg @ v.astype(np.float64)), persistent=False)
        self.register_buffer("J_dirs", f32(np.einsum("jv,vck->jck", jreg, arr["shapedirs"].astype(np.float64))),
                             persistent=False)
        self.faces = np.asarray(arr["f"], dtype=np.int64)

    _shared = False  # set on the instances load_flame_for hands out

    def _apply(self, fn, *args, **kwargs):
        # Module.to/cuda/cpu/double/half all come here. A shared instance may only be "converted"
        # to what it already is (t.to(same device, same dtype) returns t itself).
        if self._shared and fn(self.v_template) is not self.v_template:
            raise RuntimeError(f"FLAME ({self.source}) is the shared instance of load_flame_for; moving or "
                               f"casting it in place would change it for every user. Use "
                               f"load_flame_for(cfg, dataset, device=...) for a copy on another device.")
        return self if self._shared else super()._apply(fn, *args, **kwargs)

    @classmethod
    def from_file(cls, path: str, n_shape: int | None = None) -> "FLAME":
        return cls(load_flame_pickle(path), n_shape=n_shape, source=str(path))

    # -- blend-shape matrices as (K, V*3) / (K, J*3) views, no copies --------------------------------
    def _dirs(self, lo: int, hi: int):
        V, J = self.n_vertices, self.J_dirs.shape[0]
        return (self.shapedirs[:, :, lo:hi].reshape(V * 3, hi - lo).t(),
                self.J_dirs[:, :, lo:hi].reshape(J * 3, hi - lo).t())

    def _pad(self, x: torch.Tensor, n: int, what: str) -> torch.Tensor:
        if x.shape[-1] > n:
            raise ValueError(f"FLAME ({self.source}): {what} has {x.shape[-1]} dims; this model has {n}")
        return F.pad(x.float(), (0, n - x.shape[-1]))

    def _base(self, shape: torch.Tensor):
        """shape (B,n_shape) -> template + shape offsets: vertices (B,V,3), joints (B,J,3)."""
        B = shape.shape[0]
        vd, jd = self._dirs(0, self.n_shape)
        v = self.v_template + (shape @ vd).view(B, -1, 3)
        j = self.J_template + (shape @ jd).view(B, -1, 3)
        return v, j

    def _lbs(self, v_base, j_base, expr, pose):
        """v_base (B,1,V,3), j_base (B,1,J,3), expr (B,T,n_expr), pose (B,T,J*3) -> vertices (B,T,V,3)."""
        B, T = expr.shape[:2]
        V, J = self.n_vertices, self.J_dirs.shape[0]
        # only as many expression components as given (motion has 50 of the model's 100)
        vd, jd = self._dirs(self.n_shape, self.n_shape + expr.shape[-1])
        v_shaped = v_base + (expr @ vd).view(B, T, V, 3)
        joints = j_base + (expr @ jd).view(B, T, J, 3)
        rot = batch_rodrigues(pose.reshape(-1, 3)).view(B, T, J, 3, 3)
        eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
        pose_feature = (rot[:, :, 1:] - eye).reshape(B, T, (J - 1) * 9)       # (B,T,36)
        v_posed = v_shaped + (pose_feature @ self.posedirs.reshape(V * 3, -1).t()).view(B, T, V, 3)
        A = rigid_transforms(rot, joints, self.parents_list)                  # (B,T,J,3,4)
        Tm = (self.lbs_weights @ A.reshape(B, T, J, 12)).view(B, T, V, 3, 4)  # blended per vertex
        return (Tm[..., :3] * v_posed.unsqueeze(-2)).sum(-1) + Tm[..., 3]

    def forward(self, shape: torch.Tensor, expr: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """shape (N,<=n_shape), expr (N,<=n_expr), pose (N,15) axis-angle -> vertices (N,V,3).

        Shorter shape / expr vectors are zero-padded.
        """
        if pose.shape[-1] != 3 * N_JOINTS:
            raise ValueError(f"FLAME.forward: pose must be (N,{3 * N_JOINTS}) axis-angle, got {tuple(pose.shape)}")
        with _float32_region(self.v_template.device):
            shape = self._pad(shape, self.n_shape, "shape")
            v, j = self._base(shape)
            out = self._lbs(v.unsqueeze(1), j.unsqueeze(1), self._pad(expr, self.n_expr, "expr").unsqueeze(1),
                            pose.float().unsqueeze(1))
        return out[:, 0]

    def motion_to_vertices(self, motion, shape=None, chunk_frames: int = 256):
        """motion (B,T,51) or (T,51); shape (B,S) / (S,) / None (zeros) -> vertices (B,T,V,3) / (T,V,3).

        expr = motion[..., :50] zero-padded, jaw = [motion[..., 50], 0, 0], other joints 0. Frames are
        processed in chunks of about ``chunk_frames``; when gradients are needed each chunk is
        activation-checkpointed, so a (8,300,51) training batch keeps only its output vertices alive
        instead of ~5 intermediate tensors of that size (they are recomputed in backward).
        numpy in -> numpy out (no grad).
        """
        if isinstance(motion, np.ndarray):
            with torch.no_grad():
                s = None if shape is None else torch.as_tensor(np.asarray(shape), dtype=torch.float32)
                out = self.motion_to_vertices(torch.as_tensor(motion, dtype=torch.float32, device=self.v_template.device),
                                              None if s is None else s.to(self.v_template.device), chunk_frames)
            return out.cpu().numpy()
        if motion.shape[-1] != MOTION_DIM or motion.dim() not in (2, 3):
            raise ValueError(f"motion_to_vertices: motion must be (B,T,51) or (T,51), got {tuple(motion.shape)}")
        single = motion.dim() == 2
        if single:
            motion = motion.unsqueeze(0)
        B, T, _ = motion.shape
        dev = self.v_template.device
        with _float32_region(dev):
            motion = motion.float()
            if shape is None:
                shape = motion.new_zeros(B, self.n_shape)
            else:
                shape = shape.to(motion.device)
                shape = shape.expand(B, -1) if shape.dim() == 1 else shape
                if shape.shape[0] != B:
                    raise ValueError(f"motion_to_vertices: shape batch {shape.shape[0]} != motion batch {B}")
            v_base, j_base = self._base(self._pad(shape, self.n_shape, "shape"))
            v_base, j_base = v_base.unsqueeze(1), j_base.unsqueeze(1)
            expr = self._pad(motion[..., :N_EXPR], N_EXPR, "expr")  # _lbs uses the first N_EXPR components only
            zeros = motion.new_zeros(B, T, 6)
            pose = torch.cat([zeros, motion[..., N_EXPR:N_EXPR + 1], zeros[..., :2], zeros], -1)  # jaw = pose[6:9]
            if T == 0:
                out = motion.new_zeros(B, 0, self.n_vertices, 3)
                return out[0] if single else out
            step = max(1, int(chunk_frames) // B)
            need_grad = torch.is_grad_enabled() and (motion.requires_grad or v_base.requires_grad)
            if need_grad and T > step:
                out = _CheckpointedLBS.apply(self, step, v_base, j_base, expr, pose)
            else:
                chunks = [self._lbs(v_base, j_base, expr[:, t:t + step], pose[:, t:t + step])
                          for t in range(0, T, step)]
                out = chunks[0] if len(chunks) == 1 else torch.cat(chunks, 1)
        return out[0] if single else out

    @staticmethod
    def motion_to_coeffs287(motion, shape=None, detail=None):
        return motion_to_coeffs287(motion, shape, detail)


class _CheckpointedLBS(torch.autograd.Function):
    """FLAME._lbs over time chunks, keeping only the inputs for backward, where each chunk is
    recomputed with grad (activation checkpointing). Written out instead of torch.utils.checkpoint
    because the non-reentrant checkpoint imports torch._dynamo (seconds of start-up on a laptop)."""

    @staticmethod
    def forward(ctx, flame, step, v_base, j_base, expr, pose):
        ctx.flame, ctx.step = flame, step
        ctx.save_for_backward(v_base, j_base, expr, pose)
        with torch.no_grad():
            return torch.cat([flame._lbs(v_base, j_base, expr[:, t:t + step], pose[:, t:t + step])
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
                out = ctx.flame._lbs(*inputs)
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


# --------------------------------------------------------------------------------------------------
# Regions and config helpers
# --------------------------------------------------------------------------------------------------

def load_region_masks(path: str) -> dict:
    """FLAME_masks.pkl (or .npz) -> {region name: int64 vertex ids}. Real keys include 'lips',
    'forehead', 'eye_region', 'face', 'nose', 'scalp', ..."""
    path = str(path)
    if not os.path.isfile(path):
        raise FlameLoadError(f"FLAME masks file not found: {path} (FLAME.masks_path). It ships with FLAME as "
                             f"FLAME_masks.pkl; the demo writes standin_FLAME_masks.pkl.")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            masks = {k: z[k] for k in z.files}
    else:
        masks = safe_pickle_load(path)
    if not isinstance(masks, dict):
        raise FlameLoadError(f"{path}: expected a dict of region name -> vertex ids, got {type(masks).__name__}")
    out = {}
    for k, v in masks.items():
        a = np.asarray(v)
        if a.dtype.kind not in "iu" or a.ndim != 1:
            raise FlameLoadError(f"{path}: region '{k}' should be a 1-D integer array of vertex ids, got {a.dtype} {a.shape}")
        out[str(k)] = a.astype(np.int64)
    return out


def _load_index_file(path: str, key: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise FlameLoadError(f"{key}: index file not found: {path}")
    try:
        if path.endswith(".npy"):
            a = np.load(path, allow_pickle=False)
        else:
            with open(path) as f:
                a = np.array(f.read().replace(",", " ").split(), dtype=np.float64)
    except Exception as e:
        raise FlameLoadError(f"{key}: {path} is not a .npy or text list of vertex ids ({e})") from None
    a = np.asarray(a).reshape(-1)
    if a.size == 0 or (a.dtype.kind == "f" and not np.all(a == np.round(a))) or a.min() < 0:
        raise FlameLoadError(f"{key}: {path} must hold non-negative integer vertex ids")
    return a.astype(np.int64)


def region_indices(cfg) -> tuple:
    """-> (lip vertex ids, upper-face vertex ids), int64 arrays.

    Lips: ``FLAME.lip_indices`` file if set, else mask 'lips'. Upper face: ``FLAME.upper_face_indices``
    if set, else the union of masks 'forehead' and 'eye_region'. Paths resolve against DATA.data_root.
    """
    from utils.config import resolve_data_path

    fl = cfg.FLAME
    masks = None

    def mask(name):
        nonlocal masks
        if masks is None:
            masks = load_region_masks(resolve_data_path(cfg, fl.masks_path))
        if name not in masks:
            raise FlameLoadError(f"{resolve_data_path(cfg, fl.masks_path)} (FLAME.masks_path): no region '{name}'; "
                                 f"found {', '.join(sorted(masks))}")
        return masks[name]

    if fl.get("lip_indices"):
        lips = _load_index_file(resolve_data_path(cfg, fl.lip_indices), "FLAME.lip_indices")
    else:
        lips = mask("lips")
    if fl.get("upper_face_indices"):
        upper = _load_index_file(resolve_data_path(cfg, fl.upper_face_indices), "FLAME.upper_face_indices")
    else:
        upper = np.union1d(mask("forehead"), mask("eye_region"))
    return np.unique(lips), np.unique(upper)


_FLAME_CACHE: dict = {}


def _device_key(device) -> torch.device:
    """'cuda' and 'cuda:0' (the current device) name one device: one cache entry."""
    dev = torch.device(device if device is not None else "cpu")
    if dev.type == "cuda" and dev.index is None and torch.cuda.is_available():
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def flame_path_for(cfg, dataset_name: str | None = None) -> str:
    """The resolved FLAME model path of a dataset (``DATA.datasets.<name>.flame_model``, else
    ``FLAME.model_path``)."""
    from utils.config import ConfigError, resolve_data_path

    path = cfg.FLAME.model_path
    if dataset_name is not None:
        if dataset_name not in cfg.DATA.datasets:
            raise ConfigError(f"unknown dataset '{dataset_name}'; configured: {', '.join(cfg.DATA.datasets)}")
        path = cfg.DATA.datasets[dataset_name].get("flame_model") or path
    return resolve_data_path(cfg, path)


def load_flame_for(cfg, dataset_name: str | None = None, device=None) -> FLAME:
    """FLAME model of a dataset on ``device`` (default CPU), loaded once per (file, device) and shared.

    The shared instance is frozen where it lives: ``.to()`` / ``.cuda()`` / ``.double()`` on it raise
    instead of moving it in place under the other users (a training loop on GPU would otherwise pull
    the CPU copy that evaluation holds); ask for the device here instead."""
    path = os.path.abspath(flame_path_for(cfg, dataset_name))
    dev = _device_key(device)
    key = (path, str(dev))
    if key not in _FLAME_CACHE:
        model = FLAME.from_file(path, n_shape=None).to(dev)
        model._shared = True
        _FLAME_CACHE[key] = model
    return _FLAME_CACHE[key]
