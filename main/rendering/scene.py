"""What every render backend draws alike: the camera framed on the mesh, its projection, the lights,
the material and the background, and the error a backend raises when it cannot draw a frame.

The OpenGL backend (main/rendering/gl.py) hands these values to pyrender; the CPU rasteriser
(main/rendering/cpu.py) evaluates them itself. Keeping them in one place is what makes the two backends
frame, light and colour a face the same way.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from utils.errors import UserError

MESH_COLOR = (0.55, 0.55, 0.55, 1.0)
BG_COLOR = (1.0, 1.0, 1.0, 1.0)
AMBIENT = (0.1, 0.1, 0.1)
METALLIC, ROUGHNESS = 0.05, 0.7
# (direction towards the light, intensity), in camera-aligned world axes (the camera is not rotated).
# A key light from above-right of the camera and a dimmer fill from the left: a purely frontal light
# flattens the face and hides the lip contours.
LIGHTS = (((0.35, 0.45, 1.0), 2.5), ((-0.6, 0.1, 1.0), 1.0))


class RenderError(UserError, RuntimeError):
    """Rendering could not produce a valid video; the message says why and what to install."""


class Camera(NamedTuple):
    """A pinhole camera with a square image: ``pose`` (4,4) camera-to-world, looking down its -z axis
    with y up (the OpenGL / pyrender convention); ``yfov`` the vertical field of view (radians)."""
    pose: np.ndarray
    yfov: float
    znear: float
    zfar: float

    def projection(self) -> np.ndarray:
        """The OpenGL perspective matrix (4,4) for a square viewport, as pyrender builds it."""
        f = 1.0 / np.tan(self.yfov / 2)
        n, far = self.znear, self.zfar
        return np.array([[f, 0, 0, 0], [0, f, 0, 0],
                         [0, 0, (far + n) / (n - far), 2 * far * n / (n - far)],
                         [0, 0, -1, 0]])

    def to_pixels(self, points: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Project world points (N,3) into a ``size`` x ``size`` image.

        Returns (xy (N,2) in pixel units, x right, y down, pixel (i, j) centred at (i + 0.5, j + 0.5);
        depth (N,) the distance in front of the camera along its viewing axis, <= 0 behind it).
        """
        world_to_cam = np.linalg.inv(self.pose)
        cam = points @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
        depth = -cam[:, 2]
        f = 1.0 / np.tan(self.yfov / 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            ndc = f * cam[:, :2] / depth[:, None]
        xy = np.empty_like(ndc)
        xy[:, 0] = (ndc[:, 0] + 1) * (size / 2)
        xy[:, 1] = (1 - ndc[:, 1]) * (size / 2)
        return xy, depth


def frame_camera(frames: np.ndarray, yfov: float = np.pi / 8, margin: float = 1.15) -> Camera:
    """A frontal camera for vertices ``frames`` (T,V,3) or (V,3), fixed for the whole sequence.

    FLAME looks down +z with y up, and the camera looks down its -z axis, so the camera sits on the
    +z side of the bounding box centre with identity rotation, far enough that the x/y extent of the
    whole sequence (plus a margin) fits the square field of view.
    """
    pts = np.asarray(frames).reshape(-1, 3)
    lo, hi = pts.min(0), pts.max(0)
    center, extent = (lo + hi) / 2, (hi - lo)
    half = max(extent[0], extent[1], 1e-6) / 2 * margin
    dist = half / np.tan(yfov / 2) + extent[2] / 2
    pose = np.eye(4)
    pose[:3, 3] = center + np.array([0.0, 0.0, dist])
    return Camera(pose, yfov, dist * 0.01, dist * 10 + extent[2])


def light_rotation(direction) -> np.ndarray:
    """Rotation (3,3) whose -z axis points from ``direction`` towards the origin: the pose of a
    directional light at ``direction`` shining at the face."""
    z = np.asarray(direction, dtype=float)
    z = z / np.linalg.norm(z)
    x = np.cross([0.0, 1.0, 0.0], z)
    if np.linalg.norm(x) < 1e-6:
        x = np.array([1.0, 0.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)
