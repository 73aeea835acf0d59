"""FLAME loading (restricted unpickling), LBS against an independent float64 reference, motion helpers."""
import os
import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.spatial.transform import Rotation

from main.results.formats import motion_to_coeffs287
from models.flame import FLAME, load_flame, load_flame_pickle
from models.flame_regions import load_region_masks, region_indices
from scripts.flame_standin import write_standin_files
from utils.config import flame_path_for, flame_region_paths, load_config
from utils.safe_pickle import FlameLoadError, UnsafePickleError


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flame")
    model_path, masks_path = write_standin_files(str(folder), seed=0)
    return model_path, masks_path, load_flame_pickle(model_path)


@pytest.fixture(scope="module")
def flame(standin):
    return FLAME.from_file(standin[0])


def reference_lbs(m, shape, expr, pose):
    """Plain float64 FLAME: explicit blend shapes, joint regression, per-joint chain, per-vertex skinning."""
    v_template = m["v_template"].astype(np.float64)
    shapedirs = m["shapedirs"].astype(np.float64)
    posedirs = m["posedirs"].astype(np.float64)
    jreg = np.asarray(m["J_regressor"], dtype=np.float64)
    W = m["weights"].astype(np.float64)
    parents = [-1, 0, 1, 1, 1]
    betas = np.zeros(shapedirs.shape[2])
    betas[:len(shape)] = shape
    betas[300:300 + len(expr)] = expr
    v_shaped = v_template + np.tensordot(shapedirs, betas, axes=([2], [0]))
    J = jreg @ v_shaped
    R = Rotation.from_rotvec(pose.reshape(5, 3).astype(np.float64)).as_matrix()
    feat = np.concatenate([(R[j] - np.eye(3)).ravel() for j in range(1, 5)])
    v_posed = v_shaped + np.tensordot(posedirs, feat, axes=([2], [0]))
    G = [None] * 5
    for j in range(5):
        local = np.eye(4)
        local[:3, :3] = R[j]
        local[:3, 3] = J[j] - (J[parents[j]] if parents[j] >= 0 else 0)
        G[j] = local if parents[j] < 0 else G[parents[j]] @ local
    A = []
    for j in range(5):
        rest = np.eye(4)
        rest[:3, 3] = -J[j]
        A.append(G[j] @ rest)
    out = np.zeros_like(v_posed)
    for v in range(len(v_posed)):
        T = sum(W[v, j] * A[j] for j in range(5))
        out[v] = (T @ np.append(v_posed[v], 1.0))[:3]
    return out


def test_lbs_matches_float64_reference(standin, flame):
    rng = np.random.default_rng(1)
    n = 3
    shape = rng.normal(size=(n, 300))
    expr = rng.normal(size=(n, 100))
    pose = rng.normal(scale=0.3, size=(n, 15))
    pose[0] = 0.0  # the identity pose is a special case of Rodrigues (zero angle)
    out = flame(torch.tensor(shape, dtype=torch.float32), torch.tensor(expr, dtype=torch.float32),
                torch.tensor(pose, dtype=torch.float32))
    assert out.shape == (n, 5023, 3) and out.dtype == torch.float32
    for i in range(n):
        ref = reference_lbs(standin[2], shape[i], expr[i], pose[i])
        err = np.abs(out[i].detach().numpy() - ref).max()
        assert err < 1e-5, f"sample {i}: max abs error {err}"
    # the pose really moved the mesh (a test with a no-op pose would pass trivially)
    assert np.abs(out[1].detach().numpy() - reference_lbs(standin[2], shape[1], expr[1], 0 * pose[1])).max() > 1e-3


def test_lbs_gradients_finite_at_zero_pose(flame):
    pose = torch.zeros(2, 15, requires_grad=True)
    expr = torch.zeros(2, 50, requires_grad=True)
    out = flame(torch.zeros(2, 100), expr, pose)
    out.square().sum().backward()
    assert torch.isfinite(pose.grad).all() and torch.isfinite(expr.grad).all()
    assert pose.grad[:, 6].abs().sum() > 0  # jaw x rotation influences the vertices at zero


def _ch_classes():
    """Stand-ins for chumpy classes, named as chumpy names them inside the real FLAME pickles."""
    class Ch:
        def __init__(self, x):
            self.x = x
            self._parents = {}
            self._cache = {}

        def __getstate__(self):  # as chumpy: the __dict__ without its weak-reference caches
            d = dict(self.__dict__)
            del d["_parents"], d["_cache"]
            return d

    class Select(Ch):  # a chumpy expression: no stored value
        def __init__(self, a):
            super().__init__(None)
            del self.x
            self.a = a

    for cls, mod in ((Ch, "chumpy.ch"), (Select, "chumpy.reordering")):
        cls.__module__, cls.__qualname__ = mod, cls.__name__
    return Ch, Select


def _old_scipy_csc():
    """A class pickled under the old scipy path 'scipy.sparse.csc.csc_matrix' (scipy < 1.8)."""
    class csc_matrix:
        def __init__(self, m):
            m = sp.csc_matrix(m)
            self.data, self.indices, self.indptr = m.data, m.indices, m.indptr
            self._shape, self.maxprint = m.shape, 50
    csc_matrix.__module__, csc_matrix.__qualname__ = "scipy.sparse.csc", "csc_matrix"
    return csc_matrix


def _dumps_with_fake_modules(obj, classes, protocol=2):
    saved = {}
    try:
        for cls in classes:
            parts = cls.__module__.split(".")
            for i in range(1, len(parts) + 1):  # pickle imports the parent package too
                name = ".".join(parts[:i])
                if name not in saved and (name == cls.__module__ or name not in sys.modules):
                    saved[name] = sys.modules.get(name)
                    sys.modules[name] = types.ModuleType(name)
            setattr(sys.modules[cls.__module__], cls.__qualname__, cls)
        return pickle.dumps(obj, protocol=protocol)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


def test_chumpy_pickle_loads_without_chumpy(tmp_path, standin):
    """Full stand-in model with chumpy Ch arrays and a scipy.sparse J_regressor -> same FLAME."""
    m = standin[2]
    Ch, _ = _ch_classes()
    data = {"v_template": Ch(m["v_template"]), "shapedirs": Ch(m["shapedirs"]), "posedirs": m["posedirs"],
            "J_regressor": sp.csc_matrix(m["J_regressor"]), "weights": Ch(m["weights"]),
            "kintree_table": m["kintree_table"], "f": m["f"], "bs_style": "lbs"}
    blob = _dumps_with_fake_modules(data, [Ch], protocol=4)
    assert b"chumpy.ch" in blob and b"scipy.sparse" in blob and "chumpy" not in sys.modules
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(blob)
    loaded = load_flame_pickle(str(path))
    assert isinstance(loaded["v_template"], np.ndarray) and isinstance(loaded["J_regressor"], np.ndarray)
    np.testing.assert_array_equal(loaded["J_regressor"], m["J_regressor"])
    np.testing.assert_array_equal(loaded["shapedirs"], m["shapedirs"])
    assert loaded["bs_style"] == "lbs"
    a, b = FLAME(loaded, source=str(path)), FLAME(m)
    x = torch.randn(2, 51) * 0.1
    torch.testing.assert_close(a.motion_to_vertices(x), b.motion_to_vertices(x), atol=0, rtol=0)


def test_protocol2_pickle_with_old_scipy_path(tmp_path):
    """Protocol 2 (as FLAME 2020 was written; Python 3 protocol-2 bytes go through _codecs.encode),
    a float64 chumpy array, and J_regressor under the pre-1.8 module path scipy.sparse.csc."""
    rng = np.random.default_rng(0)
    Ch, _ = _ch_classes()
    old_csc = _old_scipy_csc()
    jreg = np.where(rng.random((5, 40)) < 0.2, rng.random((5, 40)), 0.0)
    arrays = {"v_template": rng.normal(size=(40, 3)), "shapedirs": rng.normal(size=(40, 3, 8)),
              "posedirs": rng.normal(size=(40, 3, 36)), "weights": rng.random((40, 5)),
              "kintree_table": np.array([[4294967295, 0, 1, 1, 1], range(5)]), "f": np.array([[0, 1, 2]], np.uint32)}
    data = {k: Ch(v) if k in ("v_template", "shapedirs") else v for k, v in arrays.items()}
    data["J_regressor"] = old_csc(jreg)
    blob = _dumps_with_fake_modules(data, [Ch, old_csc], protocol=2)
    assert b"scipy.sparse.csc" in blob and b"_codecs" in blob
    path = tmp_path / "old.pkl"
    path.write_bytes(blob)
    loaded = load_flame_pickle(str(path))
    for k, v in arrays.items():
        np.testing.assert_array_equal(loaded[k], v)
    np.testing.assert_array_equal(loaded["J_regressor"], jreg)


def test_chumpy_expression_without_value_is_a_clear_error(tmp_path, standin):
    m = dict(standin[2])
    Ch, Select = _ch_classes()
    m["v_template"] = Select(Ch(m["v_template"]))
    path = tmp_path / "expr.pkl"
    path.write_bytes(_dumps_with_fake_modules(m, [Ch, Select]))
    with pytest.raises(FlameLoadError, match=r"v_template.*chumpy\.reordering\.Select"):
        load_flame_pickle(str(path))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_disallowed_class_is_refused_and_never_called(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"v_template": _Evil(marker)}, protocol=2))
    with pytest.raises(UnsafePickleError) as info:
        load_flame_pickle(str(path))
    msg = str(info.value)
    assert "evil.pkl" in msg and f"{os.system.__module__}.system" in msg
    assert not marker.exists()


def test_missing_key_and_missing_file_errors(tmp_path, standin):
    m = dict(standin[2])
    del m["posedirs"]
    path = tmp_path / "nopose.npz"
    np.savez(path, **{k: v for k, v in m.items() if isinstance(v, np.ndarray)})
    with pytest.raises(FlameLoadError, match=r"nopose\.npz.*'posedirs'"):
        load_flame_pickle(str(path))
    with pytest.raises(FlameLoadError, match="not found"):
        load_flame_pickle(str(tmp_path / "absent.pkl"))


def test_npz_model_loads(tmp_path, standin, flame):
    path = tmp_path / "model.npz"
    np.savez(path, **{k: v for k, v in standin[2].items() if isinstance(v, np.ndarray)})
    other = FLAME.from_file(str(path))
    x = torch.randn(4, 51) * 0.2
    torch.testing.assert_close(other.motion_to_vertices(x), flame.motion_to_vertices(x), atol=0, rtol=0)


def test_motion_to_vertices_shapes_and_jaw(flame, standin):
    masks = load_region_masks(standin[1])
    B, T = 2, 5
    motion = torch.zeros(B, T, 51)
    out = flame.motion_to_vertices(motion)
    assert out.shape == (B, T, 5023, 3)
    assert flame.motion_to_vertices(motion[0]).shape == (T, 5023, 3)
    motion[1, 2, 50] = 0.2  # open the jaw in one frame
    moved = (flame.motion_to_vertices(motion) - out).norm(dim=-1)
    lips = torch.as_tensor(masks["lips"])
    forehead = torch.as_tensor(masks["forehead"])
    assert moved[1, 2, lips].max() > 0.005          # lower lip moves by more than 5 mm
    assert moved[1, 2, lips].max() < 0.03
    assert moved[1, 2, forehead].max() < 1e-6      # the upper face does not move with the jaw
    assert moved[0].max() == 0 and moved[1, :2].max() == 0
    # the jaw opens the mouth downward: lower-lip vertices go down
    v = flame.motion_to_vertices(motion)
    assert (v[1, 2, lips, 1] - out[1, 2, lips, 1]).min() < -0.005
    # equals FLAME.forward with pose = [0,0,0, 0,0,0, jaw,0,0, 0...] and expr padded
    shape = torch.randn(B, 100)
    m = torch.randn(B, T, 51) * 0.3
    a = flame.motion_to_vertices(m, shape)
    pose = torch.zeros(B * T, 15)
    pose[:, 6] = m[..., 50].reshape(-1)
    b = flame(shape.repeat_interleave(T, 0), m[..., :50].reshape(-1, 50), pose).view(B, T, 5023, 3)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    # numpy in, numpy out; a 1-D shape is shared by the batch
    c = flame.motion_to_vertices(m.numpy(), shape[0].numpy())
    assert isinstance(c, np.ndarray) and c.shape == (B, T, 5023, 3)
    np.testing.assert_allclose(c[0], a[0].numpy(), atol=1e-6)


def test_chunked_checkpointed_path_matches_and_backprops(flame):
    torch.manual_seed(0)
    m = (torch.randn(2, 9, 51) * 0.3).requires_grad_(True)
    shape = torch.randn(2, 100)
    target = torch.randn(2, 9, 5023, 3) * 0.01
    grads = []
    for chunk in (4, 10000):  # 4 -> 2 frames per chunk, checkpointed; 10000 -> one pass
        m.grad = None
        out = flame.motion_to_vertices(m, shape, chunk_frames=chunk)
        (out - target).square().mean().backward()
        grads.append((out.detach(), m.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-7, rtol=0)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-7, rtol=1e-5)
    assert grads[0][1][..., 50].abs().min() > 0


def test_jaw_only_skinning_equals_general_lbs_with_gradients(standin):
    """motion_to_vertices skins with the jaw alone (models/lbs.lbs_jaw_only); the general LBS gives the
    same vertices and gradients. A tree where the jaw has a child takes the general path."""
    jaw_only, general = FLAME.from_file(standin[0]), FLAME.from_file(standin[0])
    general.jaw_is_leaf = False
    assert jaw_only.jaw_is_leaf
    torch.manual_seed(1)
    shape = torch.randn(2, 100)
    outs = []
    for f in (jaw_only, general):
        m = (torch.randn(2, 7, 51, generator=torch.Generator().manual_seed(2)) * 0.4).requires_grad_(True)
        out = f.motion_to_vertices(m, shape, chunk_frames=6)   # 3 frames per chunk: recomputed in backward
        (out * torch.linspace(-1, 1, 3)).square().sum().backward()
        outs.append((out.detach(), m.grad))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-6, rtol=0)
    torch.testing.assert_close(outs[0][1], outs[1][1], atol=1e-4, rtol=1e-4)
    model = dict(standin[2])
    model["kintree_table"] = np.array([[4294967295, 0, 1, 2, 1], [0, 1, 2, 3, 4]])  # an eye under the jaw
    assert not FLAME(model).jaw_is_leaf


def test_float32_inside_autocast(flame):
    m = torch.randn(1, 4, 51) * 0.3
    ref = flame.motion_to_vertices(m)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = flame.motion_to_vertices(m)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=0, rtol=0)


def test_motion_to_coeffs287_layout():
    rng = np.random.default_rng(0)
    motion = rng.normal(size=(7, 51)).astype(np.float32)
    shape = rng.normal(size=300).astype(np.float32)
    detail = rng.normal(size=128).astype(np.float32)
    c = motion_to_coeffs287(motion, shape, detail)
    assert isinstance(c, np.ndarray) and c.shape == (7, 287)
    np.testing.assert_array_equal(c[:, :100], np.broadcast_to(shape[:100], (7, 100)))
    np.testing.assert_array_equal(c[:, 100:150], motion[:, :50])
    np.testing.assert_array_equal(c[:, 153], motion[:, 50])
    assert not c[:, [150, 151, 152, 154, 155, 156, 157, 158]].any()   # jaw only on one axis; cam 0
    np.testing.assert_array_equal(c[:, 159:], np.broadcast_to(detail, (7, 128)))
    ct = motion_to_coeffs287(torch.from_numpy(motion).view(1, 7, 51), torch.from_numpy(shape[:60]))
    assert torch.is_tensor(ct) and ct.shape == (1, 7, 287)
    np.testing.assert_array_equal(ct[0, :, :60].numpy(), np.broadcast_to(shape[:60], (7, 60)))
    assert not ct[..., 60:100].any() and not ct[..., 159:].any()
    np.testing.assert_array_equal(ct[0, :, 153].numpy(), motion[:, 50])


def test_region_indices_and_overrides(tmp_path, standin):
    model_path, masks_path, _ = standin
    root = os.path.dirname(model_path)
    cfg = load_config(None, [f"DATA.data_root={root}", "FLAME.model_path=standin_generic_model.pkl",
                             "FLAME.masks_path=standin_FLAME_masks.pkl"])
    masks = load_region_masks(masks_path)
    assert {"lips", "forehead", "eye_region", "face"} <= set(masks)
    lips, upper = region_indices(**flame_region_paths(cfg))
    np.testing.assert_array_equal(lips, np.unique(masks["lips"]))
    np.testing.assert_array_equal(upper, np.union1d(masks["forehead"], masks["eye_region"]))
    np.save(os.path.join(root, "my_lips.npy"), np.array([3, 1, 2]))
    with open(os.path.join(root, "my_upper.txt"), "w") as f:
        f.write("10\n11 12\n")
    cfg = load_config(None, [f"DATA.data_root={root}", "FLAME.lip_indices=my_lips.npy",
                             "FLAME.upper_face_indices=my_upper.txt", "FLAME.masks_path=absent.pkl"])
    lips, upper = region_indices(**flame_region_paths(cfg))   # the mask file is not needed when both are overridden
    assert lips.tolist() == [1, 2, 3] and upper.tolist() == [10, 11, 12]
    cfg = load_config(None, [f"DATA.data_root={root}", "FLAME.masks_path=absent.pkl"])
    with pytest.raises(FlameLoadError, match="absent.pkl"):
        region_indices(**flame_region_paths(cfg))


def test_flame_per_dataset_and_cached(tmp_path, standin):
    model_path = standin[0]
    root = os.path.dirname(model_path)
    other = tmp_path / "other.npz"
    np.savez(other, **{k: v for k, v in standin[2].items() if isinstance(v, np.ndarray)})
    cfg = load_config(None, [f"DATA.data_root={root}", "FLAME.model_path=standin_generic_model.pkl",
                             "DATA.datasets.A.fps=25", f"DATA.datasets.B.flame_model={other}"])
    a, b = load_flame(flame_path_for(cfg)), load_flame(flame_path_for(cfg, "A"))
    assert a is b and a.source.endswith("standin_generic_model.pkl")
    c = load_flame(flame_path_for(cfg, "B"))
    assert c is not a and c.source == str(other)


def test_shared_flame_is_one_instance_per_device_and_never_moved_by_a_user(tmp_path, standin):
    root = os.path.dirname(standin[0])
    cfg = load_config(None, [f"DATA.data_root={root}", "FLAME.model_path=standin_generic_model.pkl"])
    cpu = load_flame(flame_path_for(cfg))
    before = cpu.v_template.clone()
    # "meta" is a real second device on any machine: tensors with shapes and no storage
    meta = load_flame(flame_path_for(cfg), device="meta")
    assert meta is not cpu and meta.v_template.is_meta
    assert load_flame(flame_path_for(cfg), device="meta") is meta and load_flame(flame_path_for(cfg), device="cpu") is cpu
    assert cpu.v_template.device.type == "cpu" and torch.equal(cpu.v_template, before)
    # one user keeps the shared instance in its own module and moves / casts that module: another
    # user of the file on the CPU still gets it on the CPU, float32, unchanged
    holder = torch.nn.Module()
    holder.flame = cpu
    holder.to("meta").double().half()
    assert not any(hasattr(cpu, m) for m in ("to", "cuda", "double", "half"))  # no in-place conversions
    other = load_flame(flame_path_for(cfg))
    assert other is cpu and other.v_template.device.type == "cpu" and other.v_template.dtype == torch.float32
    assert torch.equal(other.v_template, before) and other.J_dirs.device.type == "cpu"
    out = other.motion_to_vertices(np.zeros((2, 51), np.float32))
    np.testing.assert_allclose(out[0], before.numpy(), atol=1e-6)
