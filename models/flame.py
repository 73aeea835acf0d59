"""The FLAME module: loading the licensed model files, motion51 -> vertices.

The licensed FLAME files (FLAME 2020 ``generic_model.pkl``, FLAME 2023 pkl) are Python-2 era
pickles holding chumpy ``Ch`` objects and ``scipy.sparse`` matrices; they are read by the restricted
unpickler of utils/safe_pickle.py (anything outside its allow-list raises ``UnsafePickleError``
instead of running). The skinning itself is models/lbs.py; face regions are models/flame_regions.py.

Conventions:
- 5 joints: global, neck, jaw, left eye, right eye; parents [-1, 0, 1, 1, 1].
- pose (N, 15) = axis-angle [global(3), neck(3), jaw(3), eye_l(3), eye_r(3)].
- motion51 = [expr[:50], jaw_x]; as FLAME input: expr zero-padded to the model's expression count,
  jaw = [jaw_x, 0, 0], every other joint 0.

A procedural STAND-IN model with the real array shapes (the licensed model cannot ship) is in
scripts/flame_standin.py.
"""
from __future__ import annotations

import contextlib
import os
import pickle

import numpy as np
import torch
import torch.nn.functional as F

from models.lbs import lbs, lbs_in_chunks, lbs_jaw_only
from utils.framing import MOTION_DIM, N_EXPR
from utils.safe_pickle import FlameLoadError, safe_pickle_load, to_plain

N_VERTICES = 5023
N_JOINTS = 5
JAW = 2  # joint index of the jaw (root, neck, jaw, left eye, right eye)
REQUIRED_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")


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
                out[k] = np.asarray(to_plain(v, f"{path} key '{k}'"))
            except FlameLoadError:
                raise
            except Exception as e:
                raise FlameLoadError(f"{path}: key '{k}' is not an array ({e})") from None
            if out[k].dtype == object:
                raise FlameLoadError(f"{path}: key '{k}' is not a numeric array")
        else:
            try:  # optional keys ('J', 'bs_style', ...): kept when they convert, dropped otherwise
                out[k] = to_plain(v, f"{path} key '{k}'")
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


def _float32_region(device: torch.device):
    """LBS always runs in float32, also inside an AMP autocast region (fp16 vertices lose ~0.1 mm)."""
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


class FLAME:
    """Differentiable FLAME (linear blend skinning), batched and float32, on one device.

    Tensors: v_template (V,3), shapedirs (V,3,n_shape+n_expr), posedirs (V,3,36), J_regressor (J,V),
    lbs_weights (V,J), parents (J,); ``faces`` is an (F,3) int64 numpy array. Nothing in it is
    trained, so it is not an nn.Module: it has no ``.to()`` / ``.double()`` that would change it in
    place, and a module holding it does not move it. That is what lets ``load_flame`` hand one
    instance to every user of a file on a device; a FLAME on another device is another instance
    (``device=`` here, in ``from_file`` or in ``load_flame``).
    """

    def __init__(self, model: dict, n_shape: int | None = None, source: str = "<FLAME dict>", device=None):
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
        t = {"v_template": f32(v), "shapedirs": f32(arr["shapedirs"]), "posedirs": f32(posedirs),
             "J_regressor": f32(arr["J_regressor"]), "lbs_weights": f32(arr["weights"]),
             "parents": torch.tensor(parents, dtype=torch.long)}
        # Joint regression from the shaped vertices is linear in the blend-shape coefficients:
        # J = Jreg (v_template + S c) = Jreg v_template + (Jreg S) c. Precomputing (Jreg S) in float64
        # gives the same joints without regressing the full (N,V,3) vertex tensor every frame.
        jreg = np.asarray(arr["J_regressor"], dtype=np.float64)
        t["J_template"] = f32(jreg @ v.astype(np.float64))
        t["J_dirs"] = f32(np.einsum("jv,vck->jck", jreg, arr["shapedirs"].astype(np.float64)))
        t["jaw_posedirs"] = t["posedirs"][..., 9 * (JAW - 1):9 * JAW].reshape(V * 3, 9).t().contiguous()
        t["weight_sums"] = t["lbs_weights"].sum(1)
        # made on the CPU and then copied, so every device holds the same values bit for bit
        dev = torch.device(device if device is not None else "cpu")
        for name, tensor in t.items():
            setattr(self, name, tensor.to(dev))
        self.faces = np.asarray(arr["f"], dtype=np.int64)
        # motion moves the jaw only: with the jaw a leaf of the tree, motion_to_vertices can skin with
        # the jaw alone (models/lbs.lbs_jaw_only); any other tree takes the general path
        self.jaw_is_leaf = JAW not in self.parents_list

    @classmethod
    def from_file(cls, path: str, n_shape: int | None = None, device=None) -> "FLAME":
        return cls(load_flame_pickle(path), n_shape=n_shape, source=str(path), device=device)

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
        """v_base (B,1,V,3), j_base (B,1,J,3), expr (B,T,E<=n_expr), pose (B,T,J*3) -> vertices (B,T,V,3)."""
        # only as many expression components as given (motion has 50 of the model's 100)
        vd, jd = self._dirs(self.n_shape, self.n_shape + expr.shape[-1])
        return lbs(v_base, j_base, expr, pose, vd, jd, self.posedirs, self.lbs_weights, self.parents_list)

    def _lbs_jaw(self, v_base, j_base, expr, jaw):
        """As _lbs for a pose that rotates the jaw only: j_base (B,1,J,3), jaw (B,T,3) -> (B,T,V,3)."""
        vd, jd = self._dirs(self.n_shape, self.n_shape + expr.shape[-1])
        return lbs_jaw_only(v_base, j_base[..., JAW, :], expr, jaw, vd, jd[:, 3 * JAW:3 * JAW + 3],
                            self.jaw_posedirs, self.lbs_weights[:, JAW], self.weight_sums)

    def __call__(self, shape: torch.Tensor, expr: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """shape (N,<=n_shape), expr (N,<=n_expr), pose (N,15) axis-angle -> vertices (N,V,3).

        Shorter shape / expr vectors are zero-padded.
        """
        if pose.shape[-1] != 3 * N_JOINTS:
            raise ValueError(f"FLAME: pose must be (N,{3 * N_JOINTS}) axis-angle, got {tuple(pose.shape)}")
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
            jaw = torch.cat([motion[..., N_EXPR:N_EXPR + 1], zeros[..., :2]], -1)            # (B,T,3)
            if T == 0:
                out = motion.new_zeros(B, 0, self.n_vertices, 3)
                return out[0] if single else out
            need_grad = torch.is_grad_enabled() and (motion.requires_grad or v_base.requires_grad)
            if self.jaw_is_leaf:
                fn, pose = self._lbs_jaw, jaw
            else:
                fn, pose = self._lbs, torch.cat([zeros, jaw, zeros], -1)                   # jaw = pose[6:9]
            out = lbs_in_chunks(fn, max(1, int(chunk_frames) // B), v_base, j_base, expr, pose,
                                recompute=need_grad)
        return out[0] if single else out


# --------------------------------------------------------------------------------------------------
# Loading (one shared instance per file and device)
# --------------------------------------------------------------------------------------------------

_FLAME_CACHE: dict = {}


def _device_key(device) -> torch.device:
    """'cuda' and 'cuda:0' (the current device) name one device: one cache entry."""
    dev = torch.device(device if device is not None else "cpu")
    if dev.type == "cuda" and dev.index is None and torch.cuda.is_available():
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def load_flame(path: str, device=None) -> FLAME:
    """The FLAME model file ``path`` on ``device`` (default CPU), loaded once per (file, device) and shared
    (a config's file per dataset: utils/config.py ``flame_path_for``). Sharing is safe because a FLAME
    cannot be moved or cast in place (see ``FLAME``): a user on another device asks for it here."""
    path = os.path.abspath(path)
    dev = _device_key(device)
    key = (path, str(dev))
    if key not in _FLAME_CACHE:
        _FLAME_CACHE[key] = FLAME.from_file(path, n_shape=None, device=dev)
    return _FLAME_CACHE[key]
