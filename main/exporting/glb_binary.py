"""A ``GltfAnimation`` (main/exporting/flame_gltf.py) as glTF 2.0 binary (.glb) bytes, written with numpy and
json by the specification (https://registry.khronos.org/glTF/specs/2.0/glTF-2.0.html).

Scene: node 0 the mesh "FLAME" (skin 0), node 1 the root joint with the other joints below it as in
FLAME's tree. One primitive with POSITION (the identity's rest mesh), JOINTS_0 / WEIGHTS_0 (and
JOINTS_1 / WEIGHTS_1 where some vertex has more than four non-zero weights), the morph targets named in
``mesh.extras.targetNames``, and one animation: the morph weights and every joint's translation and
rotation, one key per frame at i / fps (LINEAR: the keys are the frames exactly).
"""
from __future__ import annotations

import json
import struct

import numpy as np

from main.exporting.flame_gltf import JOINT_NAMES, GltfAnimation

FLOAT, UBYTE, USHORT, UINT = 5126, 5121, 5123, 5125
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
SKIN_COLOUR = [0.80, 0.62, 0.53, 1.0]


class _Buffer:
    """The binary chunk, its bufferViews and accessors as they are added."""

    def __init__(self):
        self.data, self.views, self.accessors = bytearray(), [], []

    def add(self, array: np.ndarray, kind: str, component: int, target: int | None = None,
            min_max: bool = False) -> int:
        """One accessor of ``array`` (count, ...) in its own 4-byte aligned bufferView -> accessor index."""
        dtype = {FLOAT: "<f4", UBYTE: "u1", USHORT: "<u2", UINT: "<u4"}[component]
        a = np.ascontiguousarray(array, dtype=dtype)
        self.data += b"\0" * (-len(self.data) % 4)
        view = {"buffer": 0, "byteOffset": len(self.data), "byteLength": a.nbytes}
        if target is not None:
            view["target"] = target
        self.data += a.tobytes()
        self.views.append(view)
        acc = {"bufferView": len(self.views) - 1, "componentType": component, "count": int(a.shape[0]), "type": kind}
        if min_max:  # required for POSITION and animation input accessors
            flat = a.reshape(a.shape[0], -1)
            acc["min"], acc["max"] = flat.min(0).tolist(), flat.max(0).tolist()
        self.accessors.append(acc)
        return len(self.accessors) - 1


def _skin_attributes(buf: _Buffer, weights: np.ndarray) -> dict:
    """FLAME's (V,J) weights as JOINTS_n / WEIGHTS_n sets of four: the non-zero ones per vertex, heaviest
    first; unused slots are joint 0 with weight 0 (as the specification asks). A second set is written only
    where some vertex has more than four weights that count: one below 2^-24 vanishes in a float32 sum of
    weights that is 1, and runtimes such as three.js read only the first set."""
    weights = np.where(np.abs(weights) < 2.0 ** -24, 0, weights)
    order = np.argsort(-weights, axis=1, kind="stable")
    n_sets = max(1, -(-int((weights != 0).sum(1).max()) // 4))
    joints = np.zeros((weights.shape[0], 4 * n_sets), np.int64)
    w = np.zeros((weights.shape[0], 4 * n_sets), np.float32)
    k = min(weights.shape[1], 4 * n_sets)
    joints[:, :k] = order[:, :k]
    w[:, :k] = np.take_along_axis(weights, order[:, :k], 1)
    joints[w == 0] = 0
    out = {}
    for s in range(n_sets):
        out[f"JOINTS_{s}"] = buf.add(joints[:, 4 * s:4 * s + 4], "VEC4", UBYTE, ARRAY_BUFFER)
        out[f"WEIGHTS_{s}"] = buf.add(w[:, 4 * s:4 * s + 4], "VEC4", FLOAT, ARRAY_BUFFER)
    return out


def encode_glb(anim: GltfAnimation, fps: float, extras: dict) -> bytes:
    """The .glb bytes of ``anim`` played at ``fps``; ``extras``: the asset's extras (what made it, the audio)."""
    buf = _Buffer()
    T, J = anim.translations.shape[:2]
    faces = anim.faces.astype(np.int64).reshape(-1)
    attributes = {"POSITION": buf.add(anim.base, "VEC3", FLOAT, ARRAY_BUFFER, min_max=True),
                  **_skin_attributes(buf, anim.joint_weights)}
    indices = buf.add(faces, "SCALAR", USHORT if faces.max() < 65535 else UINT, ELEMENT_ARRAY_BUFFER)
    targets = [{"POSITION": buf.add(t, "VEC3", FLOAT, ARRAY_BUFFER, min_max=True)} for t in anim.targets]
    ibm = np.tile(np.eye(4), (J, 1, 1))
    ibm[:, :3, 3] = -anim.rest_joints
    ibm_acc = buf.add(ibm.transpose(0, 2, 1).reshape(J, 16), "MAT4", FLOAT)   # column-major
    times = buf.add(np.arange(T) / float(fps), "SCALAR", FLOAT, min_max=True)

    joint_nodes = [1 + j for j in range(J)]
    nodes = [{"name": "FLAME", "mesh": 0, "skin": 0}]
    for j, p in enumerate(anim.parents):
        rest = anim.rest_joints[j] - (anim.rest_joints[p] if p >= 0 else 0)
        node = {"name": JOINT_NAMES[j], "translation": [float(x) for x in rest]}
        children = [1 + c for c, q in enumerate(anim.parents) if q == j]
        if children:
            node["children"] = children
        nodes.append(node)

    samplers, channels = [], []

    def animate(node: int, path: str, values: np.ndarray, kind: str):
        samplers.append({"input": times, "interpolation": "LINEAR", "output": buf.add(values, kind, FLOAT)})
        channels.append({"sampler": len(samplers) - 1, "target": {"node": node, "path": path}})
    animate(0, "weights", anim.weights.reshape(-1), "SCALAR")
    for j in range(J):
        animate(1 + j, "translation", anim.translations[:, j], "VEC3")
        animate(1 + j, "rotation", anim.rotations[:, j], "VEC4")

    gltf = {
        "asset": {"version": "2.0", "generator": "FaceFormer-FLAME main/export.py", "extras": extras},
        "scene": 0,
        "scenes": [{"nodes": [0, 1]}],
        "nodes": nodes,
        "meshes": [{"name": "FLAME", "primitives": [{"attributes": attributes, "indices": indices, "material": 0,
                                                     "mode": 4, "targets": targets}],
                    "weights": [0.0] * len(targets), "extras": {"targetNames": anim.target_names,
                                                         "targetScales": anim.target_scales}}],
        "materials": [{"name": "skin", "pbrMetallicRoughness": {"baseColorFactor": SKIN_COLOUR, "metallicFactor": 0.0,
                                                                 "roughnessFactor": 0.6}}],
        "skins": [{"name": "FLAME", "joints": joint_nodes, "skeleton": 1, "inverseBindMatrices": ibm_acc}],
        "animations": [{"name": "speech", "samplers": samplers, "channels": channels}],
        "accessors": buf.accessors,
        "bufferViews": buf.views,
        "buffers": [{"byteLength": len(buf.data)}],
    }
    return _pack(gltf, bytes(buf.data))


def _pack(gltf: dict, binary: bytes) -> bytes:
    """The GLB container: 12-byte header, JSON chunk (space padded), BIN chunk (zero padded)."""
    js = json.dumps(gltf, separators=(",", ":")).encode("utf-8")
    js += b" " * (-len(js) % 4)
    binary += b"\0" * (-len(binary) % 4)
    total = 12 + 8 + len(js) + 8 + len(binary)
    return (struct.pack("<4sII", b"glTF", 2, total) + struct.pack("<I4s", len(js), b"JSON") + js
            + struct.pack("<I4s", len(binary), b"BIN\0") + binary)
