"""An independent glTF 2.0 player for the tests: reads a .glb with struct + json + numpy (nothing of the
exporter) and evaluates morph targets and skinning per the specification, sections 3.7.2 (morph
targets: base + sum weight_i target_i), 3.7.3 (skins: sum w_j (world_j * inverseBindMatrix_j) v) and
3.11 (animation: the key values at the key times)."""
import json
import struct

import numpy as np

DTYPES = {5120: "i1", 5121: "u1", 5122: "<i2", 5123: "<u2", 5125: "<u4", 5126: "<f4"}
WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}


def read_glb(path):
    """-> (gltf dict, binary chunk bytes), checking the container's header and chunk types."""
    data = open(path, "rb").read()
    magic, version, length = struct.unpack_from("<4sII", data, 0)
    assert magic == b"glTF" and version == 2 and length == len(data)
    n_json, kind = struct.unpack_from("<I4s", data, 12)
    assert kind == b"JSON"
    gltf = json.loads(data[20:20 + n_json])
    n_bin, kind = struct.unpack_from("<I4s", data, 20 + n_json)
    assert kind == b"BIN\0"
    return gltf, data[28 + n_json:28 + n_json + n_bin]


def accessor(gltf, binary, i):
    """Accessor i as a (count, width) float64 array (no sparse accessors, tightly packed views)."""
    acc = gltf["accessors"][i]
    view = gltf["bufferViews"][acc["bufferView"]]
    width, dtype = WIDTH[acc["type"]], np.dtype(DTYPES[acc["componentType"]])
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    a = np.frombuffer(binary, dtype, acc["count"] * width, start)
    return a.reshape(acc["count"], width).astype(np.float64)


def _trs(t, r, s):
    x, y, z, w = r
    R = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                  [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                  [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    M = np.eye(4)
    M[:3, :3] = R * np.asarray(s)[None, :]
    M[:3, 3] = t
    return M


class Player:
    """Plays the first mesh node with a skin of a .glb at the keys of its first animation."""

    def __init__(self, path):
        self.gltf, self.bin = g, b = read_glb(path)
        self.mesh_node = next(i for i, n in enumerate(g["nodes"]) if "mesh" in n)
        prim = g["meshes"][g["nodes"][self.mesh_node]["mesh"]]["primitives"][0]
        self.base = accessor(g, b, prim["attributes"]["POSITION"])
        self.targets = np.stack([accessor(g, b, t["POSITION"]) for t in prim.get("targets", [])])
        sets = sorted(k[len("JOINTS_"):] for k in prim["attributes"] if k.startswith("JOINTS_"))
        self.joints = np.concatenate([accessor(g, b, prim["attributes"][f"JOINTS_{s}"]) for s in sets], 1).astype(int)
        self.weights = np.concatenate([accessor(g, b, prim["attributes"][f"WEIGHTS_{s}"]) for s in sets], 1)
        self.faces = accessor(g, b, prim["indices"]).reshape(-1, 3).astype(int)
        skin = g["skins"][g["nodes"][self.mesh_node]["skin"]]
        self.skin_joints = skin["joints"]
        self.ibm = accessor(g, b, skin["inverseBindMatrices"]).reshape(-1, 4, 4).transpose(0, 2, 1)
        self.parent = {c: p for p, n in enumerate(g["nodes"]) for c in n.get("children", [])}
        anim = g["animations"][0]
        self.channels = [(c["target"]["node"], c["target"]["path"],
                          accessor(g, b, anim["samplers"][c["sampler"]]["input"])[:, 0],
                          accessor(g, b, anim["samplers"][c["sampler"]]["output"])) for c in anim["channels"]]
        self.n_keys = len(self.channels[0][2])

    def times(self):
        return self.channels[0][2]

    def frame(self, k):
        """The skinned, morphed vertices (V,3) at key k."""
        g = self.gltf
        trs = {i: [n.get("translation", [0, 0, 0]), n.get("rotation", [0, 0, 0, 1]), n.get("scale", [1, 1, 1])]
               for i, n in enumerate(g["nodes"])}
        weights = np.asarray(g["meshes"][g["nodes"][self.mesh_node]["mesh"]].get("weights", []), float)
        for node, path, times, values in self.channels:
            if path == "weights":
                weights = values.reshape(len(times), -1)[k]
            else:
                trs[node][{"translation": 0, "rotation": 1, "scale": 2}[path]] = values[k]

        def world(i):
            M = _trs(*trs[i])
            return world(self.parent[i]) @ M if i in self.parent else M
        v = self.base + np.tensordot(weights, self.targets, 1) if len(self.targets) else self.base
        mats = np.stack([world(j) @ self.ibm[i] for i, j in enumerate(self.skin_joints)])     # (J,4,4)
        per_vertex = np.einsum("vk,vkab->vab", self.weights, mats[self.joints])               # (V,4,4)
        return np.einsum("vab,vb->va", per_vertex[:, :3, :3], v) + per_vertex[:, :3, 3]
