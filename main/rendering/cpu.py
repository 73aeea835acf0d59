"""A z-buffered triangle rasteriser in numpy: the render backend for machines where no OpenGL context
can be made (no EGL, no OSMesa), or when asked for with ``--backend cpu``.

It draws the scene of main/rendering/scene.py as the pyrender path does: the same camera, back faces
culled, pixel centres sampled (a pixel is covered when its centre is inside a triangle), the nearest
surface kept, and pyrender's metallic-roughness shading with the same lights, evaluated at the
vertices and interpolated across each triangle (Gouraud) instead of per pixel. Edges are not
anti-aliased. Everything is vectorised over triangles and over candidate pixels; no compiled code.

``CpuMeshRenderer(faces, camera, size).render(vertices (V,3)) -> (size, size, 3) uint8``.
"""
from __future__ import annotations

import numpy as np

from main.rendering.scene import AMBIENT, BG_COLOR, LIGHTS, MESH_COLOR, METALLIC, ROUGHNESS, Camera, RenderError

_MIN_ROUGHNESS = 0.04  # pyrender's floor on roughness, also the dielectric reflectance f0


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit normals (V,3): the area-weighted sum of the normals of the faces around each vertex."""
    v0, v1, v2 = (vertices[faces[:, i]] for i in range(3))
    face_n = np.cross(v1 - v0, v2 - v0)  # length = twice the area: area weighting for free
    idx = faces.ravel()
    n = np.stack([np.bincount(idx, np.repeat(face_n[:, c], 3), minlength=len(vertices)) for c in range(3)], 1)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    return n / np.where(length > 0, length, 1.0)


def shade(points: np.ndarray, normals: np.ndarray, eye: np.ndarray) -> np.ndarray:
    """Colour (N,3) in [0,1] of surface points seen from ``eye``: pyrender's metallic-roughness BRDF
    for directional lights (its mesh.frag, without textures or shadows), ambient light, then its
    gamma of 1/2.2."""
    base = np.asarray(MESH_COLOR[:3])
    roughness = float(np.clip(ROUGHNESS, _MIN_ROUGHNESS, 1.0))
    c_diff = base * (1 - _MIN_ROUGHNESS) * (1 - METALLIC)
    f0 = _MIN_ROUGHNESS + (base - _MIN_ROUGHNESS) * METALLIC
    a2 = roughness ** 4  # the shader's microfacet term squares roughness twice
    k = (roughness + 1) ** 2 / 8
    view = eye - points
    view /= np.linalg.norm(view, axis=1, keepdims=True)
    color = np.zeros_like(points)
    for direction, intensity in LIGHTS:
        light = np.asarray(direction, dtype=float) / np.linalg.norm(direction)
        half = view + light
        half /= np.linalg.norm(half, axis=1, keepdims=True)
        nl = np.clip(normals @ light, 0.001, 1.0)
        nv = np.clip(np.abs(np.sum(normals * view, 1)), 0.001, 1.0)
        nh = np.clip(np.sum(normals * half, 1), 0.0, 1.0)
        vh = np.clip(np.sum(view * half, 1), 0.0, 1.0)
        fresnel = f0 + (1 - f0) * ((1 - vh) ** 5)[:, None]
        geometric = nv / (nv * (1 - k) + k) * nl / (nl * (1 - k) + k)
        microfacet = a2 / (np.pi * (nh * nh * (a2 - 1) + 1) ** 2)
        diffuse = (1 - fresnel) * c_diff / np.pi
        specular = fresnel * (geometric * microfacet / (4 * nl * nv + 0.001))[:, None]
        color += (nl * intensity)[:, None] * (diffuse + specular)
    color += base * np.asarray(AMBIENT)
    return np.clip(color, 0.0, None) ** (1 / 2.2)


def rasterize(xy: np.ndarray, depth: np.ndarray, faces: np.ndarray, size: int, budget: int = 1 << 21):
    """The visible surface of a triangle mesh on a ``size`` x ``size`` pixel grid.

    xy (V,2): vertex positions in pixels (x right, y down, pixel centres at +0.5); depth (V,): distance
    in front of the camera. Triangles with a vertex on or behind the camera plane are dropped (not
    clipped: a framed face is wholly in front), and so are back faces (clockwise on screen in y-up
    terms, as OpenGL culls them). Candidate pixels are enumerated at most ``budget`` at a time, so a
    mesh whose triangles cover the image many times over costs time, not memory.
    Returns (pixel (P,) flat indices y * size + x, face (P,) the face seen there, bary (P,3) its
    screen-space barycentric coordinates at the pixel centre), one row per covered pixel.
    """
    empty = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3), np.float32)
    keep = np.flatnonzero((depth[faces] > 0).all(1))
    p0, p1, p2 = (xy[faces[keep, i]] for i in range(3))
    # twice the signed area; with y pointing down, front faces (counter-clockwise in y-up) are negative
    area2 = (p1[:, 0] - p0[:, 0]) * (p2[:, 1] - p0[:, 1]) - (p2[:, 0] - p0[:, 0]) * (p1[:, 1] - p0[:, 1])
    # the pixels whose centres lie in the bounding box, cut to the image (empty when outside it)
    lo = np.clip(np.ceil(np.minimum(np.minimum(p0, p1), p2) - 0.5), 0, size).astype(np.int64)
    hi = np.clip(np.floor(np.maximum(np.maximum(p0, p1), p2) - 0.5), -1, size - 1).astype(np.int64)
    extent = hi - lo + 1
    sel = np.flatnonzero((area2 < 0) & (extent > 0).all(1))
    if len(sel) == 0:
        return empty
    keep, p0, p1, p2, area2, lo, extent = keep[sel], p0[sel], p1[sel], p2[sel], area2[sel], lo[sel], extent[sel]

    # Barycentric coordinate i is an affine function of the pixel: b_i = a_i * dx + c_i * dy + e_i,
    # with (dx, dy) the offset from the corner of the triangle's bounding box (small numbers, so float32
    # keeps its precision). b_i is the signed area of the triangle the pixel centre makes with the edge
    # opposite vertex i, over the whole triangle's.
    origin = lo + 0.5
    coef = []
    for a, b in ((p1, p2), (p2, p0)):
        ea, eb = a - origin, b - origin
        coef += [(ea[:, 1] - eb[:, 1]) / area2, (eb[:, 0] - ea[:, 0]) / area2,
                 (ea[:, 0] * eb[:, 1] - eb[:, 0] * ea[:, 1]) / area2]
    per_tri = np.stack(coef).astype(np.float32)  # (6, K): a_0, c_0, e_0, a_1, c_1, e_1
    counts = extent[:, 0] * extent[:, 1]
    group = (np.cumsum(counts) - 1) // budget
    cuts = np.r_[0, np.flatnonzero(np.diff(group)) + 1, len(counts)]
    parts = [_covered(slice(s, e), per_tri, counts, lo, extent[:, 0], size) for s, e in zip(cuts[:-1], cuts[1:])]
    tri, pixel, b0, b1 = (np.concatenate(x) for x in zip(*parts))
    if len(tri) == 0:
        return empty
    b2 = 1.0 - b0 - b1

    # z-buffer: inverse depth is affine in screen space; the largest one at a pixel is the nearest
    kept_faces = faces[keep[tri]]
    inv = 1.0 / depth.astype(np.float32)
    inv_depth = b0 * inv[kept_faces[:, 0]] + b1 * inv[kept_faces[:, 1]] + b2 * inv[kept_faces[:, 2]]
    nearest = np.full(size * size, -np.inf, np.float32)
    np.maximum.at(nearest, pixel, inv_depth)
    win = np.flatnonzero(inv_depth >= nearest[pixel])
    owner = np.full(size * size, -1, np.int64)
    owner[pixel[win]] = win  # one winner per pixel, whichever of equally near candidates comes last
    win = owner[owner >= 0]
    return pixel[win], keep[tri[win]], np.stack([b0[win], b1[win], b2[win]], 1)


def _covered(chunk: slice, per_tri, counts, lo, width, size):
    """The candidate pixels of the triangles in ``chunk`` whose centres fall inside them:
    (triangle index, flat pixel index, b0, b1)."""
    counts = counts[chunk]
    tri = np.repeat(np.arange(chunk.start, chunk.stop), counts)
    local = np.arange(len(tri)) - np.repeat(np.cumsum(counts) - counts, counts)
    w = np.repeat(width[chunk], counts)
    dy = local // w
    dx = local - dy * w
    c = np.repeat(per_tri[:, chunk], counts, axis=1)  # repeating rows is faster than gathering by tri
    fx, fy = dx.astype(np.float32), dy.astype(np.float32)
    b0 = c[0] * fx + c[1] * fy + c[2]
    b1 = c[3] * fx + c[4] * fy + c[5]
    inside = np.flatnonzero((b0 >= 0) & (b1 >= 0) & (b0 + b1 <= 1))
    tri = tri[inside]
    pixel = (lo[tri, 1] + dy[inside]) * size + lo[tri, 0] + dx[inside]
    return tri, pixel, b0[inside], b1[inside]


class CpuMeshRenderer:
    """Draws one mesh topology with a fixed camera, like main/rendering/gl.py's MeshRenderer.

    ``render(vertices (V,3)) -> (size, size, 3) uint8``. A frame in which no pixel shows the mesh is a
    RenderError, never a blank frame in the video.
    """

    def __init__(self, faces: np.ndarray, camera: Camera, size: int = 512):
        self.faces = np.asarray(faces, dtype=np.int64)
        self.camera = camera
        self.size = size
        self.background = np.round(np.asarray(BG_COLOR[:3]) * 255).astype(np.uint8)

    def render(self, vertices: np.ndarray, index: int = 0) -> np.ndarray:
        vertices = np.asarray(vertices, dtype=np.float64)
        xy, depth = self.camera.to_pixels(vertices, self.size)
        pixel, face, bary = rasterize(xy, depth, self.faces, self.size)
        if len(pixel) == 0:
            raise RenderError(f"frame {index} has no mesh pixel: every triangle is behind the camera, outside "
                              f"the image or facing away")
        colors = shade(vertices, vertex_normals(vertices, self.faces), self.camera.pose[:3, 3]).astype(np.float32)
        corners = self.faces[face]
        rgb = (bary[:, 0:1] * colors[corners[:, 0]] + bary[:, 1:2] * colors[corners[:, 1]]
               + bary[:, 2:3] * colors[corners[:, 2]])
        img = np.empty((self.size * self.size, 3), np.uint8)
        img[:] = self.background
        img[pixel] = np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)
        return img.reshape(self.size, self.size, 3)

    def close(self):
        pass
