"""The OpenGL render backend: pyrender offscreen through EGL (GPU driver or Mesa) or OSMesa.

PyOpenGL binds its functions to one platform (PYOPENGL_PLATFORM) when it is first imported, so
``use_platform`` must run before the first MeshRenderer of a platform: it sets the variable and, when
PyOpenGL was already imported for another platform, drops those modules so that the next import binds
afresh.

``MeshRenderer(faces, camera, size).render(vertices (V,3)) -> (size, size, 3) uint8``.
"""
from __future__ import annotations

import ctypes.util
import os
import sys

import numpy as np

from main.rendering.scene import AMBIENT, BG_COLOR, LIGHTS, MESH_COLOR, METALLIC, ROUGHNESS, Camera, RenderError, light_rotation

PLATFORM_LIBRARIES = {"egl": ["EGL", "GL"], "osmesa": ["OSMesa"]}


def missing_libraries(platform: str) -> list[str]:
    """The shared libraries a GL platform needs that the dynamic loader cannot find."""
    return [f"lib{name}" for name in PLATFORM_LIBRARIES.get(platform, ["GL"]) if ctypes.util.find_library(name) is None]


def bound_platform() -> str | None:
    """The platform the imported PyOpenGL is bound to (``egl``, ``osmesa``, ``glx``...), None before
    its first import."""
    bound = getattr(sys.modules.get("OpenGL.platform"), "PLATFORM", None)
    return None if bound is None else type(bound).__module__.rsplit(".", 1)[-1]


def use_platform(platform: str):
    """Make the next MeshRenderer use ``platform`` (egl or osmesa)."""
    if bound_platform() not in (None, platform):
        for name in [m for m in sys.modules if m.split(".")[0] in ("OpenGL", "pyrender")]:
            del sys.modules[name]
    os.environ["PYOPENGL_PLATFORM"] = platform


def gl_help(platform: str | None = None) -> str:
    """A message naming the GL libraries the current PYOPENGL_PLATFORM needs, which are missing,
    and how to install them."""
    platform = platform or os.environ.get("PYOPENGL_PLATFORM", "egl")
    needed = PLATFORM_LIBRARIES.get(platform, ["GL"])
    missing = missing_libraries(platform)
    lines = [f"PYOPENGL_PLATFORM={platform}; "
             + (f"missing library: {', '.join(missing)}." if missing
                else f"libraries {', '.join('lib' + n for n in needed)} were found, but no context/frame could be made.")]
    lines.append("  EGL (default, headless; GPU driver or Mesa on CPU): "
                 "apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri, then --backend egl")
    lines.append("  OSMesa (pure software): apt-get install libosmesa6 and pip install 'PyOpenGL>=3.1.4' "
                 "(after pyrender; pyrender's pin 3.1.0 fails on Python 3.11), then --backend osmesa")
    lines.append("  or, with no GL at all: --backend cpu (numpy rasteriser, main/rendering/cpu.py)")
    if platform == "osmesa":
        try:
            import OpenGL
            if tuple(int(x) for x in OpenGL.__version__.split(".")[:3]) < (3, 1, 4):
                lines.append(f"  PyOpenGL {OpenGL.__version__} is installed: OSMesa needs >= 3.1.4")
        except Exception:  # pragma: no cover - diagnostics must not raise
            pass
    return "\n".join(lines)


class MeshRenderer:
    """Offscreen pyrender renderer of one mesh topology with a fixed camera and lights.

    ``render(vertices (V,3)) -> (size, size, 3) uint8``. Raises RenderError (with install hints) if the
    GL context cannot be created or a frame is one flat colour / has no mesh pixel.
    """

    def __init__(self, faces: np.ndarray, camera: Camera, size: int = 512):
        try:
            import pyrender
            self._pyrender = pyrender
            self.renderer = pyrender.OffscreenRenderer(size, size)
        except Exception as e:
            raise RenderError(f"could not create an offscreen GL renderer ({type(e).__name__}: {e}).\n"
                              + gl_help()) from e
        self.faces = np.asarray(faces, dtype=np.int64)
        self.material = pyrender.MetallicRoughnessMaterial(
            baseColorFactor=MESH_COLOR, metallicFactor=METALLIC, roughnessFactor=ROUGHNESS)
        self.scene = pyrender.Scene(bg_color=BG_COLOR, ambient_light=AMBIENT)
        self.scene.add(pyrender.PerspectiveCamera(yfov=camera.yfov, znear=camera.znear, zfar=camera.zfar,
                                                  aspectRatio=1.0), pose=camera.pose)
        for direction, intensity in LIGHTS:
            light_pose = np.eye(4)
            light_pose[:3, :3] = light_rotation(direction)
            self.scene.add(pyrender.DirectionalLight(color=np.ones(3), intensity=intensity), pose=light_pose)
        self.node = None

    def render(self, vertices: np.ndarray, index: int = 0) -> np.ndarray:
        import trimesh
        pyrender = self._pyrender
        tm = trimesh.Trimesh(vertices=np.asarray(vertices, dtype=np.float64), faces=self.faces,
                             process=False)
        mesh = pyrender.Mesh.from_trimesh(tm, material=self.material, smooth=True)
        if self.node is not None:
            self.scene.remove_node(self.node)
        self.node = self.scene.add(mesh)
        try:
            color, depth = self.renderer.render(self.scene)
        except Exception as e:
            raise RenderError(f"frame {index} failed to render ({type(e).__name__}: {e}).\n" + gl_help()) from e
        color = np.ascontiguousarray(color[..., :3])
        # A broken GL stack typically returns all-black (or all-background) buffers without raising.
        if (color == color[0, 0]).all() or not (depth > 0).any():
            raise RenderError(f"frame {index} rendered as a single flat colour with no mesh pixel; the "
                              f"vertices are finite and framed by the camera, so the GL backend is not "
                              f"drawing.\n" + gl_help())
        return color

    def close(self):
        try:
            self.renderer.delete()
        except Exception:  # pragma: no cover - best effort on a context that never worked
            pass
