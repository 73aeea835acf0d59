"""A 52-shape ARKit-named test rig on FLAME's topology, for trying ``main/export.py --rig`` without a
hand-made rig. Not a real ARKit rig: under ARKit's names, each shape is a random sparse combination of
(orthogonalised) FLAME expression and jaw offsets, and JawOpen opens FLAME's jaw.

    python scripts/make_rig.py --flame demo_data/FLAME/standin_generic_model.pkl --out rig.npz   (or rig.glb)

The .npz holds names (52,), neutral (V,3), deltas (52,V,3); the .glb one mesh with 52 morph targets
named in mesh.extras.targetNames, as Blender's glTF exporter writes shape keys.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from main.exporting.arkit import ARKIT_NAMES
from models.flame import load_flame
from utils.atomic import atomic_write
from utils.errors import ExportError, run_reporting_user_errors
from utils.framing import MOTION_DIM, N_EXPR

JAW_OPEN = 0.25  # rad: JawOpen is FLAME's jaw opened this far
PEAK = 0.006      # m: the largest vertex offset of every other shape


def rig_directions(flame) -> np.ndarray:
    """(52,V,3) orthogonal directions spanning FLAME's motion offsets: first the jaw opened by ``JAW_OPEN``
    (as it is), then what the jaw at 0.1 rad and the 50 expression offsets add, each scaled to a peak
    of ``PEAK``."""
    motions = np.zeros((N_EXPR + 2, MOTION_DIM), np.float32)
    motions[:2, N_EXPR] = (JAW_OPEN, 0.1)
    motions[2:, :N_EXPR] = np.eye(N_EXPR)
    offsets = flame.motion_to_vertices(motions) - flame.motion_to_vertices(np.zeros((1, MOTION_DIM), np.float32))
    flat = offsets.reshape(len(motions), -1).astype(np.float64)
    dirs = np.linalg.qr(flat.T)[0].T  # Gram-Schmidt in this order
    dirs *= PEAK / np.abs(dirs).max(axis=1, keepdims=True)
    dirs[0] = flat[0]
    return dirs.reshape(offsets.shape)


def make_rig(flame, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """-> names (52,), neutral (V,3) FLAME's template at rest, deltas (52,V,3) float32. JawOpen is FLAME's
    jaw opening; every other shape is one more direction plus 0.3 of two random others (signs random),
    so the rig is well conditioned but its shapes overlap, as a real rig's do."""
    rng = np.random.default_rng(seed)
    rest = flame.motion_to_vertices(np.zeros((1, MOTION_DIM), np.float32))[0]
    dirs = rig_directions(flame)
    jaw = ARKIT_NAMES.index("JawOpen")
    order = [jaw] + [k for k in range(len(ARKIT_NAMES)) if k != jaw]  # shape order[i] gets direction i
    mix = np.eye(len(ARKIT_NAMES))
    for i in range(1, len(mix)):
        others = rng.choice([j for j in range(1, len(mix)) if j != i], 2, replace=False)
        mix[i, others] = 0.3 * rng.choice([-1.0, 1.0], 2)
    deltas = np.empty_like(dirs)
    deltas[order] = np.einsum("ij,jvc->ivc", mix, dirs)
    return list(ARKIT_NAMES), rest, deltas.astype(np.float32)


def write_rig_npz(path: str, names, neutral, deltas):
    def save(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, names=np.array(names), neutral=neutral, deltas=deltas)
    atomic_write(path, save)


def write_rig_glb(path: str, names, neutral, deltas, faces):
    """One mesh, one primitive: positions, triangle indices and one POSITION morph target per shape."""
    import pygltflib as g

    chunks, views, accessors = [], [], []

    def add(arr: np.ndarray, target: int | None, accessor: dict):
        data = np.ascontiguousarray(arr).tobytes()
        views.append(g.BufferView(buffer=0, byteOffset=sum(len(c) for c in chunks), byteLength=len(data),
                                  target=target))
        chunks.append(data + b"\0" * (-len(data) % 4))
        accessors.append(g.Accessor(bufferView=len(views) - 1, **accessor))
        return len(accessors) - 1

    def vec3(a):
        a = np.asarray(a, np.float32)
        return add(a, g.ARRAY_BUFFER, dict(componentType=g.FLOAT, count=len(a), type=g.VEC3,
                                           min=a.min(0).tolist(), max=a.max(0).tolist()))

    position = vec3(neutral)
    indices = add(np.asarray(faces, np.uint32).ravel(), g.ELEMENT_ARRAY_BUFFER,
                  dict(componentType=g.UNSIGNED_INT, count=int(np.size(faces)), type=g.SCALAR))
    targets = [g.Attributes(POSITION=vec3(d)) for d in deltas]
    prim = g.Primitive(attributes=g.Attributes(POSITION=position), indices=indices, targets=targets)
    mesh = g.Mesh(name="rig", primitives=[prim], weights=[0.0] * len(names), extras={"targetNames": list(names)})
    blob = b"".join(chunks)
    gltf = g.GLTF2(scene=0, scenes=[g.Scene(nodes=[0])], nodes=[g.Node(mesh=0, name="rig")], meshes=[mesh],
                   accessors=accessors, bufferViews=views, buffers=[g.Buffer(byteLength=len(blob))])
    gltf.set_binary_blob(blob)
    atomic_write(path, lambda tmp: gltf.save_binary(tmp))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flame", required=True, help="FLAME model file (e.g. the demo's stand-in)")
    p.add_argument("--out", required=True, help="rig file: .npz or .glb")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    ext = os.path.splitext(args.out)[1].lower()
    if ext not in (".npz", ".glb"):
        raise ExportError(f"{args.out}: expected a .npz or .glb rig path")
    flame = load_flame(args.flame)
    names, neutral, deltas = make_rig(flame, args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if ext == ".npz":
        write_rig_npz(args.out, names, neutral, deltas)
    else:
        write_rig_glb(args.out, names, neutral, deltas, flame.faces)
    print(f"wrote {args.out}: {len(names)} shapes on {neutral.shape[0]} vertices")


if __name__ == "__main__":
    run_reporting_user_errors("make_rig", main)
