"""A camera for synthetic 3-D scenes: intrinsics and extrinsics, projection of points to pixels,
back-projection of pixels to points, z-buffer visibility and rendering by z-buffer splatting.

Conventions (OpenCV's): camera coordinates have x to the right, y down and z forward (the depth).
A world point p goes to camera coordinates c = R p + t; a pinhole camera maps c to the pixel
coordinates u = fx·c_x/c_z + cx, v = fy·c_y/c_z + cy, an orthographic one to u = fx·c_x + cx,
v = fy·c_y + cy (depth c_z either way). Pixel (col, row) covers u ∈ [col, col+1), v ∈ [row, row+1),
so its centre is (col + ½, row + ½). Images are indexed ``image[row, col]``.

Why a z-buffer: a point projects to a pixel whether or not something nearer covers it. A point
whose depth lies beyond the nearest surface at its pixel (by more than a tolerance) is hidden,
and must not take the features or colours of the foreground surface drawn there.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Camera:
    """A pinhole (or orthographic) camera: ``intrinsics`` K (3×3), rotation ``R`` (3×3, world to
    camera) and translation ``t`` (3,), and the image ``width`` × ``height`` in pixels."""

    intrinsics: np.ndarray
    R: np.ndarray
    t: np.ndarray
    width: int
    height: int
    orthographic: bool = False

    @classmethod
    def look_at(cls, eye, target, up=(0.0, 0.0, 1.0), *, width: int, height: int, focal: float,
                orthographic: bool = False) -> "Camera":
        """A camera at ``eye`` looking at ``target``, with ``up`` pointing up in the image; ``focal``
        in pixels (per metre of scene for an orthographic camera), principal point at the centre."""
        eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
        forward = target - eye
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, up)
        if np.linalg.norm(right) < 1e-9:
            raise ValueError("look_at: up is parallel to the viewing direction")
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        R = np.stack([right, down, forward])
        K = np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])
        return cls(K, R, -R @ eye, int(width), int(height), orthographic)

    # -- geometry ---------------------------------------------------------------------------------
    def to_camera(self, xyz: np.ndarray) -> np.ndarray:
        return np.asarray(xyz, dtype=np.float64) @ self.R.T + self.t

    def project(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(uv (N, 2) continuous pixel coordinates, depth (N,)) of world points (N, 3); a point at
        or behind a pinhole camera's plane gets uv = NaN."""
        c = self.to_camera(xyz)
        depth = c[:, 2]
        if self.orthographic:
            plane = c[:, :2]
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                plane = np.where(depth[:, None] > 1e-9, c[:, :2] / depth[:, None], np.nan)
        K = self.intrinsics
        uv = np.stack([K[0, 0] * plane[:, 0] + K[0, 2], K[1, 1] * plane[:, 1] + K[1, 2]], axis=1)
        return uv, depth

    def backproject(self, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """World points (N, 3) at continuous pixel coordinates ``uv`` (N, 2) and camera ``depth``
        (N,): the inverse of `project`."""
        uv, depth = np.asarray(uv, dtype=np.float64), np.asarray(depth, dtype=np.float64)
        K = self.intrinsics
        x = (uv[:, 0] - K[0, 2]) / K[0, 0]
        y = (uv[:, 1] - K[1, 2]) / K[1, 1]
        if not self.orthographic:
            x, y = x * depth, y * depth
        c = np.stack([x, y, depth], axis=1)
        return (c - self.t) @ self.R  # R is orthonormal: R⁻¹ = Rᵀ

    def pixels(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pixel (N, 2) int (col, row), depth (N,), inside (N,) bool): the pixel each point falls
        in, and whether that pixel is in the image and the point in front of the camera."""
        uv, depth = self.project(xyz)
        finite = np.isfinite(uv).all(1)
        pix = np.full((len(uv), 2), -1, dtype=np.int64)
        pix[finite] = np.floor(uv[finite]).astype(np.int64)
        inside = finite & (depth > 0) & (pix[:, 0] >= 0) & (pix[:, 0] < self.width) \
            & (pix[:, 1] >= 0) & (pix[:, 1] < self.height)
        pix[~inside] = -1
        return pix, depth, inside


def _splat_targets(camera: Camera, xyz: np.ndarray, radius: int):
    """(flat pixel index, depth, source point) of every pixel each point covers: the point's
    pixel and, for ``radius`` r > 0, the (2r+1)² square around it."""
    pix, depth, inside = camera.pixels(xyz)
    source = np.flatnonzero(inside)
    cols, rows, depths, sources = [], [], [], []
    for dr in range(-radius, radius + 1):
        for dc in range(-radius, radius + 1):
            c, r = pix[source, 0] + dc, pix[source, 1] + dr
            ok = (c >= 0) & (c < camera.width) & (r >= 0) & (r < camera.height)
            cols.append(c[ok]), rows.append(r[ok]), depths.append(depth[source[ok]]), sources.append(source[ok])
    rows_, cols_ = np.concatenate(rows), np.concatenate(cols)
    return rows_ * camera.width + cols_, np.concatenate(depths), np.concatenate(sources)


def zbuffer(camera: Camera, xyz: np.ndarray, radius: int = 0) -> np.ndarray:
    """The depth of the nearest point at each pixel, (height, width), inf where nothing falls."""
    flat, depth, _ = _splat_targets(camera, xyz, radius)
    buffer = np.full(camera.width * camera.height, np.inf)
    np.minimum.at(buffer, flat, depth)
    return buffer.reshape(camera.height, camera.width)


def visibility(camera: Camera, xyz: np.ndarray, depth_map: np.ndarray, tolerance: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """(pixel (N, 2) int (col, row), visible (N,) bool): a point is visible where it projects into
    the image and its depth is at most the z-buffer's there plus ``tolerance`` (scene units);
    a hidden or outside point keeps its pixel only if inside, and ``visible`` is False."""
    pix, depth, inside = camera.pixels(xyz)
    visible = np.zeros(len(pix), dtype=bool)
    nearest = depth_map[pix[inside, 1], pix[inside, 0]]
    visible[inside] = depth[inside] <= nearest + tolerance
    return pix, visible


def splat(camera: Camera, xyz: np.ndarray, values: np.ndarray, radius: int = 0,
          background: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Render per-point ``values`` (N, C) by z-buffer splatting: (image (height, width, C), depth
    (height, width)). Each pixel takes the value of the nearest point covering it (its pixel,
    or a (2r+1)² square for ``radius`` r), ``background`` where none does."""
    values = np.asarray(values)
    flat, depth, source = _splat_targets(camera, xyz, radius)
    buffer = np.full(camera.width * camera.height, np.inf)
    np.minimum.at(buffer, flat, depth)
    front = depth <= buffer[flat]  # the nearest point(s) at each covered pixel
    image = np.full((camera.width * camera.height, values.shape[1]), background, dtype=values.dtype)
    image[flat[front]] = values[source[front]]  # ties have equal depth: either value is the surface
    return image.reshape(camera.height, camera.width, -1), buffer.reshape(camera.height, camera.width)
