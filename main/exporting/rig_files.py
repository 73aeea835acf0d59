"""Blendshape rigs on FLAME's topology, read from ``.npz`` or ``.glb``.

- ``.npz``: ``names`` (K,) strings, ``neutral`` (V,3), ``deltas`` (K,V,3) (shape k's offsets from neutral).
- ``.glb``: the mesh with morph targets, one primitive whose vertices are FLAME's in FLAME's order, target
  names in ``mesh.extras.targetNames`` (what Blender's glTF exporter writes for shape keys); float32
  POSITION accessors, sparse ones included.

Every problem is an ExportError naming the file and what was expected.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from utils.errors import ExportError

GLTF_FLOAT = 5126
GLTF_INDEX_TYPES = {5121: np.uint8, 5123: np.uint16, 5125: np.uint32}


@dataclass
class Rig:
    """names (K,); neutral (V,3) float32; deltas (K,V,3) float32."""
    path: str
    names: list[str]
    neutral: np.ndarray
    deltas: np.ndarray


def load_rig(path: str, n_vertices: int) -> Rig:
    """The rig at ``path`` (.npz or .glb), checked against FLAME's ``n_vertices``."""
    if not os.path.isfile(path):
        raise ExportError(f"{path}: rig file not found")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        names, neutral, deltas = _read_npz(path)
    elif ext == ".glb":
        names, neutral, deltas = _read_glb(path)
    else:
        raise ExportError(f"{path}: expected a rig as .npz (names, neutral, deltas) or .glb (morph targets)")
    return _checked(Rig(path, names, neutral, deltas), n_vertices)


def _checked(rig: Rig, n_vertices: int) -> Rig:
    p, K = rig.path, len(rig.names)
    if K == 0:
        raise ExportError(f"{p}: the rig has no blendshapes (K = 0); expected at least one named shape")
    if rig.neutral.shape != (n_vertices, 3) or rig.deltas.shape != (K, n_vertices, 3):
        raise ExportError(f"{p}: neutral {rig.neutral.shape} and deltas {rig.deltas.shape} do not fit FLAME's "
                          f"topology; expected ({n_vertices}, 3) and ({K}, {n_vertices}, 3), the result's vertices "
                          f"in FLAME's order")
    for what, a in (("neutral", rig.neutral), ("deltas", rig.deltas)):
        if not np.isfinite(a).all():
            bad = np.argwhere(~np.isfinite(a))[0].tolist()
            raise ExportError(f"{p}: {what} holds NaN or infinite values (first at index {bad}); expected finite numbers")
    lower = [n.lower() for n in rig.names]
    twice = sorted({n for n in rig.names if lower.count(n.lower()) > 1})
    if twice:
        raise ExportError(f"{p}: shape names repeated (names are matched case-insensitively): {twice}")
    return rig


def _read_npz(path: str):
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("names", "neutral", "deltas") if k not in z.files]
            if missing:
                raise ExportError(f"{path}: missing {missing}; expected names (K,), neutral (V,3), deltas (K,V,3)")
            names, neutral, deltas = z["names"], z["neutral"], z["deltas"]
    except (OSError, ValueError, EOFError) as e:
        raise ExportError(f"{path}: unreadable .npz ({e}); expected names (K,), neutral (V,3), deltas (K,V,3)") from None
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise ExportError(f"{path}: names must be a (K,) array of strings, got {names.dtype} {names.shape}")
    if neutral.dtype.kind not in "fiu" or deltas.dtype.kind not in "fiu":
        raise ExportError(f"{path}: neutral and deltas must be numbers, got {neutral.dtype} and {deltas.dtype}")
    return [str(n) for n in names], neutral.astype(np.float32), deltas.astype(np.float32)


def _read_glb(path: str):
    import pygltflib

    try:
        gltf = pygltflib.GLTF2().load_binary(path)
        blob = gltf.binary_blob()
    except Exception as e:  # pygltflib raises anything from struct.error to KeyError on a damaged file
        raise ExportError(f"{path}: unreadable .glb ({type(e).__name__}: {e})") from None
    if blob is None:
        raise ExportError(f"{path}: no binary chunk; expected a .glb holding its buffers")
    meshes = [m for m in gltf.meshes if any(pr.targets for pr in m.primitives)]
    if not meshes:
        raise ExportError(f"{path}: no mesh with morph targets; expected a mesh whose shape keys were exported "
                          f"as glTF morph targets")
    mesh = meshes[0]
    if len(meshes) > 1 or len(mesh.primitives) > 1:
        raise ExportError(f"{path}: {len(meshes)} meshes with morph targets, the first of {len(mesh.primitives)} "
                          f"primitive(s); expected one mesh with one primitive (FLAME's vertices, unsplit)")
    names = (mesh.extras or {}).get("targetNames") if isinstance(mesh.extras, dict) else None
    prim = mesh.primitives[0]
    if not names or len(names) != len(prim.targets):
        raise ExportError(f"{path}: mesh '{mesh.name}' has {len(prim.targets)} morph targets but "
                          f"{len(names or [])} names; expected their names in mesh.extras.targetNames")
    neutral = _vec3(gltf, blob, prim.attributes.POSITION, path)
    deltas = []
    for name, target in zip(names, prim.targets):
        index = target.get("POSITION") if isinstance(target, dict) else getattr(target, "POSITION", None)
        deltas.append(np.zeros_like(neutral) if index is None else _vec3(gltf, blob, index, path))
    return [str(n) for n in names], neutral, np.stack(deltas)


def _vec3(gltf, blob: bytes, index: int, path: str) -> np.ndarray:
    """(count,3) float32 of a VEC3 float accessor, sparse substitution applied."""
    acc = gltf.accessors[index]
    if acc.type != "VEC3" or acc.componentType != GLTF_FLOAT:
        raise ExportError(f"{path}: accessor {index} is {acc.type} of component type {acc.componentType}; "
                          f"expected VEC3 float positions (re-export without quantisation)")
    out = np.zeros((acc.count, 3), np.float32)
    if acc.bufferView is not None:
        out[:] = _view(gltf, blob, acc.bufferView, acc.byteOffset or 0, acc.count, np.float32, 3, path)
    if acc.sparse is not None:
        s = acc.sparse
        dtype = GLTF_INDEX_TYPES.get(s.indices.componentType)
        if dtype is None:
            raise ExportError(f"{path}: accessor {index}: sparse index type {s.indices.componentType}")
        rows = _view(gltf, blob, s.indices.bufferView, s.indices.byteOffset or 0, s.count, dtype, 1, path)
        out[rows[:, 0].astype(np.int64)] = _view(gltf, blob, s.values.bufferView, s.values.byteOffset or 0,
                                                 s.count, np.float32, 3, path)
    return out


def _view(gltf, blob: bytes, view_index: int, offset: int, count: int, dtype, width: int, path: str) -> np.ndarray:
    view = gltf.bufferViews[view_index]
    item = np.dtype(dtype).itemsize * width
    stride = view.byteStride or item
    start = (view.byteOffset or 0) + offset
    if count and start + stride * (count - 1) + item > len(blob):
        raise ExportError(f"{path}: buffer view {view_index} reaches past the end of the binary chunk")
    return np.ndarray((count, width), np.dtype(dtype).newbyteorder("<"), blob, start, (stride, np.dtype(dtype).itemsize))
