"""Scene description (analytic primitives, materials, lights, pinhole camera) and ray casting.

Conventions (as :mod:`diffdepth.geometry`): camera +x right, +y down, +z forward; the
world frame uses the same axes (gravity along +y, the ground is the plane y = camera
height). Pixel (u, v) with integer centres looks along ``R @ K^-1 [u, v, 1]``; since the
camera-space ray has z = 1, the ray parameter at the hit *is* the planar depth, so the
depth maps are exact up to float64 rounding. Poses are camera-to-world 4x4 matrices.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

_EPS = 1e-6
_INF = np.inf


@dataclass
class Material:
    """Albedo pattern. ``kind``: plain | checker | stripes | noise; ``scale`` in metres."""

    kind: str = "plain"
    color_a: Tuple[float, float, float] = (0.7, 0.7, 0.7)
    color_b: Tuple[float, float, float] = (0.3, 0.3, 0.3)
    scale: float = 1.0
    grain: float = 0.08  # amplitude of fine value noise added to every pattern


@dataclass
class Plane:
    """Infinite plane ``normal . p = offset``."""

    normal: Sequence[float]
    offset: float
    material: Material = field(default_factory=Material)


@dataclass
class Box:
    """Axis-aligned box [lo, hi] (world coordinates, metres)."""

    lo: Sequence[float]
    hi: Sequence[float]
    material: Material = field(default_factory=Material)


@dataclass
class Sphere:
    center: Sequence[float]
    radius: float
    material: Material = field(default_factory=Material)


@dataclass
class Cylinder:
    """Capped cylinder with a vertical (y) axis through (cx, cz), spanning y0 < y < y1."""

    cx: float
    cz: float
    radius: float
    y0: float
    y1: float
    material: Material = field(default_factory=Material)


@dataclass
class PointLight:
    position: Sequence[float]
    intensity: float = 1.0
    falloff: float = 0.1  # intensity / (1 + falloff * distance^2)


@dataclass
class DirectionalLight:
    direction: Sequence[float]  # direction the light travels (from the light into the scene)
    intensity: float = 1.0


@dataclass
class Scene:
    primitives: List = field(default_factory=list)
    lights: List = field(default_factory=list)
    ambient: float = 0.3
    sky_horizon: Tuple[float, float, float] = (0.85, 0.88, 0.92)
    sky_zenith: Tuple[float, float, float] = (0.35, 0.55, 0.85)
    max_depth: float = math.inf  # planar depth beyond this is marked invalid (colour still rendered)
    far_clip: float = 400.0  # primitives entirely beyond this planar depth are not drawn
    noise_seed: int = 0
    gamma: float = 2.2
    #: pose of the reference frame in the scene's world coordinates; camera poses passed to
    #: :func:`render` are relative to it (sequences use frame 0, so frame 0's pose is I)
    reference_pose: np.ndarray = field(default_factory=lambda: np.eye(4))


@dataclass
class Camera:
    """Pinhole camera: K [3,3] in pixels, pose camera-to-world [4,4], image size."""

    K: np.ndarray
    pose: np.ndarray
    height: int
    width: int


# --------------------------------------------------------------------------- poses and ray casting


def rotation_ypr(yaw: float, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """Camera-to-world rotation: yaw about +y (turn right for yaw > 0), pitch about +x
    (look down for pitch > 0), roll about +z; applied roll, then pitch, then yaw."""
    cy, sy = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rx = np.array([[1, 0, 0], [0, cp, sp], [0, -sp, cp]])  # forward (0,0,1) -> (0, sin, cos): down
    Rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return Ry @ Rx @ Rz


def make_pose(position: Sequence[float], yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = rotation_ypr(yaw, pitch, roll)
    T[:3, 3] = position
    return T


def camera_rays(camera: Camera, pixels: Optional[np.ndarray] = None,
                reference_pose: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Ray origin [3] and world directions [N,3] (camera-space z = 1) for every pixel
    (row-major) or for the given ``pixels`` [N,2] (u, v; sub-pixel allowed)."""
    K = np.asarray(camera.K, dtype=np.float64)
    if pixels is None:
        v, u = np.meshgrid(np.arange(camera.height, dtype=np.float64),
                           np.arange(camera.width, dtype=np.float64), indexing="ij")
        u, v = u.reshape(-1), v.reshape(-1)
    else:
        pixels = np.asarray(pixels, dtype=np.float64)
        u, v = pixels[:, 0], pixels[:, 1]
    if reference_pose is None:
        reference_pose = np.eye(4)
    pix = np.stack([u, v, np.ones_like(u)], 0)  # [3,N]
    d_cam = np.linalg.solve(K, pix)  # [3,N]
    d_cam = d_cam / d_cam[2:3]  # exact z = 1 so that t == planar depth
    pose = np.asarray(reference_pose, dtype=np.float64) @ np.asarray(camera.pose, dtype=np.float64)
    d_world = (pose[:3, :3] @ d_cam).T  # [N,3]
    return pose[:3, 3].copy(), np.ascontiguousarray(d_world)


def _safe(d: np.ndarray) -> np.ndarray:
    """Replace exact zeros by a tiny number so slab divisions stay finite-signed."""
    return np.where(d == 0.0, 1e-300, d)


class Rays:
    """Ray bundle with one origin and per-axis direction arrays of any shape (so that a
    rectangular sub-window of an image is a cheap view)."""

    def __init__(self, o: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray) -> None:
        self.o = o
        self.dx, self.dy, self.dz = dx, dy, dz
        self.ix, self.iy, self.iz = 1.0 / _safe(dx), 1.0 / _safe(dy), 1.0 / _safe(dz)

    def __getitem__(self, sl) -> "Rays":
        r = Rays.__new__(Rays)
        r.o = self.o
        for k in ("dx", "dy", "dz", "ix", "iy", "iz"):
            setattr(r, k, getattr(self, k)[sl])
        return r


def intersect(prim, rays: Rays) -> np.ndarray:
    """Ray parameter t (shape of the ray arrays) of the first hit in front of the origin;
    inf where the ray misses. Rays start outside boxes, spheres and cylinders."""
    o = rays.o
    dx, dy, dz = rays.dx, rays.dy, rays.dz
    if isinstance(prim, Plane):
        n = np.asarray(prim.normal, dtype=np.float64)
        denom = dx * n[0] + dy * n[1] + dz * n[2]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (prim.offset - n @ o) / denom
        return np.where((np.abs(denom) > 1e-12) & (t > _EPS), t, _INF)
    if isinstance(prim, Box):
        tmin = tmax = None
        for ax, inv in enumerate((rays.ix, rays.iy, rays.iz)):
            t1 = (prim.lo[ax] - o[ax]) * inv
            t2 = (prim.hi[ax] - o[ax]) * inv
            lo_t, hi_t = np.minimum(t1, t2), np.maximum(t1, t2)
            tmin = lo_t if tmin is None else np.maximum(tmin, lo_t)
            tmax = hi_t if tmax is None else np.minimum(tmax, hi_t)
        return np.where((tmax >= tmin) & (tmin > _EPS), tmin, _INF)
    if isinstance(prim, Sphere):
        ocx, ocy, ocz = (o[0] - prim.center[0], o[1] - prim.center[1], o[2] - prim.center[2])
        a = dx * dx + dy * dy + dz * dz
        b = 2.0 * (dx * ocx + dy * ocy + dz * ocz)
        cc = ocx * ocx + ocy * ocy + ocz * ocz - prim.radius ** 2
        disc = b * b - 4 * a * cc
        with np.errstate(invalid="ignore"):
            t = (-b - np.sqrt(disc)) / (2 * a)
        return np.where((disc >= 0) & (t > _EPS), t, _INF)
    if isinstance(prim, Cylinder):
        ox, oz = o[0] - prim.cx, o[2] - prim.cz
        a = dx * dx + dz * dz
        b = 2.0 * (ox * dx + oz * dz)
        cc = ox * ox + oz * oz - prim.radius ** 2
        disc = b * b - 4 * a * cc
        with np.errstate(invalid="ignore", divide="ignore"):
            t_side = (-b - np.sqrt(disc)) / (2 * a)
        y_side = o[1] + t_side * dy
        best = np.where((disc >= 0) & (a > 1e-18) & (t_side > _EPS) & (y_side >= prim.y0) & (y_side <= prim.y1),
                        t_side, _INF)
        with np.errstate(over="ignore", invalid="ignore"):  # rays parallel to the caps
            for yc in (prim.y0, prim.y1):
                tc = (yc - o[1]) * rays.iy
                px = ox + tc * dx
                pz = oz + tc * dz
                ok = (tc > _EPS) & (px * px + pz * pz <= prim.radius ** 2)
                best = np.minimum(best, np.where(ok, tc, _INF))
        return best
    raise TypeError(f"unknown primitive {type(prim).__name__}")


def bounds(prim) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """World axis-aligned bounding box (lo, hi) of a primitive; None if unbounded."""
    if isinstance(prim, Box):
        return np.asarray(prim.lo, dtype=np.float64), np.asarray(prim.hi, dtype=np.float64)
    if isinstance(prim, Sphere):
        c = np.asarray(prim.center, dtype=np.float64)
        return c - prim.radius, c + prim.radius
    if isinstance(prim, Cylinder):
        r = prim.radius
        return np.array([prim.cx - r, prim.y0, prim.cz - r]), np.array([prim.cx + r, prim.y1, prim.cz + r])
    return None


def screen_bounds(prim, K: np.ndarray, world_to_cam: np.ndarray, far_clip: float):
    """Conservative pixel-coordinate bounds (u0, u1, v0, v1) containing every pixel
    position whose ray can hit ``prim``; None if it cannot be seen (behind the camera or
    beyond ``far_clip``); "all" when unsure (unbounded, or straddling the camera plane)."""
    bb = bounds(prim)
    if bb is None:
        return "all"
    lo, hi = bb
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    cam = corners @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]  # [8,3]
    if (cam[:, 2] <= _EPS).all():
        return None  # entirely behind the camera
    if (cam[:, 2] <= _EPS).any():
        return "all"
    if cam[:, 2].min() > far_clip:
        return None
    pix = cam @ K.T
    u, v = pix[:, 0] / pix[:, 2], pix[:, 1] / pix[:, 2]
    return u.min() - 1.0, u.max() + 1.0, v.min() - 1.0, v.max() + 1.0


def screen_window(prim, K: np.ndarray, world_to_cam: np.ndarray, height: int, width: int,
                  far_clip: float):
    """Conservative pixel window (slice rows, slice cols) that contains every pixel whose
    ray can hit ``prim``; None if it cannot be seen. Full image when unsure."""
    bnd = screen_bounds(prim, K, world_to_cam, far_clip)
    if bnd is None:
        return None
    if bnd == "all":
        return slice(0, height), slice(0, width)
    u0, u1, v0, v1 = bnd
    c0, c1 = max(int(math.floor(u0)), 0), min(int(math.ceil(u1)) + 1, width)
    r0, r1 = max(int(math.floor(v0)), 0), min(int(math.ceil(v1)) + 1, height)
    if c0 >= c1 or r0 >= r1:
        return None
    return slice(r0, r1), slice(c0, c1)


def surface_normal(prim, p: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Unit normals [N,3] at hit points p, oriented towards the ray origin."""
    if isinstance(prim, Plane):
        n = np.broadcast_to(np.asarray(prim.normal, dtype=np.float64), p.shape).copy()
    elif isinstance(prim, Box):
        lo = np.asarray(prim.lo, dtype=np.float64)
        hi = np.asarray(prim.hi, dtype=np.float64)
        dist = np.concatenate([np.abs(p - lo), np.abs(p - hi)], 1)  # [N,6]
        k = dist.argmin(1)
        n = np.zeros_like(p)
        n[np.arange(len(p)), k % 3] = np.where(k < 3, -1.0, 1.0)
    elif isinstance(prim, Sphere):
        n = p - np.asarray(prim.center, dtype=np.float64)
    elif isinstance(prim, Cylinder):
        rx, rz = p[:, 0] - prim.cx, p[:, 2] - prim.cz
        r = np.sqrt(rx * rx + rz * rz)
        side = np.abs(r - prim.radius)
        cap0, cap1 = np.abs(p[:, 1] - prim.y0), np.abs(p[:, 1] - prim.y1)
        n = np.stack([rx, np.zeros_like(rx), rz], 1)
        n[cap0 < side] = (0.0, -1.0, 0.0)
        n[(cap1 < side) & (cap1 <= cap0)] = (0.0, 1.0, 0.0)
    else:
        raise TypeError(f"unknown primitive {type(prim).__name__}")
    n = n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    flip = np.einsum("ij,ij->i", n, d) > 0
    n[flip] *= -1.0
    return n
