"""Does Blender play an exported glb back equal to the result's vertex files?

    python scripts/check_glb_blender.py DIR/animation.glb DIR/vertices [--frames N] [--tol 1e-5] [--blender PATH]

runs Blender headless (``blender -b --factory-startup -P`` this file) which imports the glb with its
glTF importer, plays the animation frame by frame through the depsgraph, and compares each frame's
evaluated mesh (world coordinates, Blender's Z-up mapped back to glTF's Y-up) with ``VERTICES/{i}.npy``.
Prints one JSON line (frames checked, max error in metres) and exits 1 when the error exceeds --tol.
Blender: Debian's ``blender`` package (3.4) or any Blender with its bundled glTF add-on; run this with a
Python that has numpy (the project's venv): Blender's glTF importer imports numpy, from that Python.
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile


def _glb_json(path: str) -> dict:
    with open(path, "rb") as f:
        head = f.read(20)
        n_json = struct.unpack_from("<I", head, 12)[0]
        return json.loads(f.read(n_json))


def _load_vertices(path: str) -> list:
    """A (V,3) float32 little-endian .npy as a flat list, without numpy (Blender's Python may lack it)."""
    with open(path, "rb") as f:
        data = f.read()
    header_len = struct.unpack_from("<H", data, 8)[0]
    header = data[10:10 + header_len].decode("latin1")
    if "'<f4'" not in header or "'fortran_order': False" not in header:
        raise SystemExit(f"{path}: expected a C-ordered float32 .npy")
    body = data[10 + header_len:]
    return list(struct.unpack(f"<{len(body) // 4}f", body))


def play_in_blender(glb: str, vertices: str, frames: int, report: str):
    """Runs inside Blender: import, play, compare -> ``report`` (JSON)."""
    import bpy

    fps = float(_glb_json(glb)["asset"]["extras"]["fps"])
    scene = bpy.context.scene
    # keys are placed at time * scene fps: the result's fps keeps every key on a whole frame
    scene.render.fps, scene.render.fps_base = round(fps), round(fps) / fps
    before = set(scene.objects)
    bpy.ops.import_scene.gltf(filepath=glb)
    obj = next(o for o in scene.objects if o.type == "MESH" and o not in before)
    first = min(k.co[0] for a in bpy.data.actions for c in a.fcurves for k in c.keyframe_points)
    n = len([f for f in os.listdir(vertices) if f.endswith(".npy")])
    worst, count = 0.0, min(n, frames) if frames > 0 else n
    for i in range(count):
        scene.frame_set(int(round(first)) + i)
        ev = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
        mesh = ev.to_mesh()
        world = obj.matrix_world
        # Blender's (x, y, z) is glTF's (x, -z, y)
        got = [c for v in mesh.vertices for p in [world @ v.co] for c in (p.x, p.z, -p.y)]
        ev.to_mesh_clear()
        ref = _load_vertices(os.path.join(vertices, f"{i}.npy"))
        if len(ref) != len(got):
            raise SystemExit(f"frame {i}: Blender has {len(got) // 3} vertices, {vertices} has {len(ref) // 3}")
        worst = max(worst, max(abs(a - b) for a, b in zip(got, ref)))
    with open(report, "w") as f:
        json.dump({"frames": count, "max_abs_error_m": worst, "blender": bpy.app.version_string}, f)


def check(glb: str, vertices: str, frames: int = 0, blender: str = "blender", timeout: float = 600) -> dict:
    """Run Blender on this file -> its report {frames, max_abs_error_m, blender}; RuntimeError if it fails."""
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.json")
        cmd = [blender, "-b", "--factory-startup", "-noaudio", "-P", os.path.abspath(__file__), "--",
               os.path.abspath(glb), os.path.abspath(vertices), str(frames), report]
        # Blender takes its Python modules from the first python3 on PATH: this one's, with its numpy (the
        # importer needs numpy; Debian's 1.24 lacks the np.bool that Blender 3.4's importer uses, numpy 2 has it)
        env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if run.returncode != 0 or not os.path.isfile(report):
            raise RuntimeError(f"blender failed ({run.returncode}):\n{run.stdout[-3000:]}")
        with open(report) as f:
            return json.load(f)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("glb")
    p.add_argument("vertices", help="the result's vertex folder of {i}.npy (V,3) frames")
    p.add_argument("--frames", type=int, default=0, help="check the first N frames only (0: all)")
    p.add_argument("--tol", type=float, default=1e-5, help="largest allowed error in metres")
    p.add_argument("--blender", default="blender", help="the Blender executable")
    args = p.parse_args()
    out = check(args.glb, args.vertices, args.frames, args.blender)
    print(json.dumps(out))
    sys.exit(0 if out["max_abs_error_m"] <= args.tol else 1)


def _in_blender() -> bool:
    try:
        import bpy  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    if _in_blender():
        glb, vertices, frames, report = sys.argv[sys.argv.index("--") + 1:]
        play_in_blender(glb, vertices, int(frames), report)
    else:
        main()
