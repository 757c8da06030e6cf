"""Procedural RGB-D scenes with exact metric ground truth, rendered by ray casting in numpy.

Scenes are unions of analytic primitives (planes, axis-aligned boxes, spheres, vertical
cylinders) with procedural textures (checker, stripes, value noise) evaluated in world
coordinates, lit by Lambertian shading (ambient + point/directional lights, no shadows).
Because every texture and light lives in world space and shading is view-independent,
a static point has the same colour in every frame of a camera sequence, as the
photometric-consistency assumption of self-supervised training (Monodepth2) requires.

Conventions (as :mod:`diffdepth.geometry`): camera +x right, +y down, +z forward; the
world frame uses the same axes (gravity along +y, the ground is the plane y = camera
height). Pixel (u, v) with integer centres looks along ``R @ K^-1 [u, v, 1]``; since the
camera-space ray has z = 1, the ray parameter at the hit *is* the planar depth, so the
depth maps are exact up to float64 rounding. Poses are camera-to-world 4x4 matrices.

Everything is deterministic from the seed: scene ``i`` of a run with seed ``S`` draws from
``numpy.random.default_rng([S, i])``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

# --------------------------------------------------------------------------- scene description

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


# --------------------------------------------------------------------------- geometry helpers


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


# --------------------------------------------------------------------------- textures


_NOISE_N = 64  # lattice period of the value noise (cells)


class ValueNoise:
    """3-D lattice value noise: random values on the integer lattice (periodic with period
    64 cells), interpolated with smoothstep weights; fully determined by ``seed``."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng([int(seed), 7919])
        self.table = rng.random(_NOISE_N ** 3)  # flat [64,64,64]

    def __call__(self, p: np.ndarray) -> np.ndarray:
        """p [N,3] -> noise in [0,1] [N]."""
        n = _NOISE_N
        fl = np.floor(p)
        f = p - fl
        w = f * f * (3.0 - 2.0 * f)
        i = fl.astype(np.int64) & (n - 1)
        i1 = (i + 1) & (n - 1)
        xs = (i[:, 0] * (n * n), i1[:, 0] * (n * n))
        ys = (i[:, 1] * n, i1[:, 1] * n)
        zs = (i[:, 2], i1[:, 2])
        wx, wy, wz = w[:, 0], w[:, 1], w[:, 2]
        T = self.table
        out = np.zeros(len(p))
        for a in (0, 1):
            ax = wx if a else 1.0 - wx
            for b in (0, 1):
                axy = ax * (wy if b else 1.0 - wy)
                xy = xs[a] + ys[b]
                out += axy * ((1.0 - wz) * T[xy + zs[0]] + wz * T[xy + zs[1]])
        return out

    def fbm(self, p: np.ndarray, octaves: int = 3) -> np.ndarray:
        total, amp, norm = np.zeros(len(p)), 1.0, 0.0
        for k in range(octaves):
            total += amp * self(p * (2.0 ** k) + 17.0 * k)
            norm += amp
            amp *= 0.5
        return total / norm


def _plane_uv(p: np.ndarray, n: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Two world coordinates spanning the face: drop the axis the normal is closest to."""
    axis = np.abs(n).argmax(1)
    u = np.where(axis == 0, p[:, 2], p[:, 0])
    v = np.where(axis == 1, p[:, 2], p[:, 1])
    return u, v


def albedo(material: Material, p: np.ndarray, n: np.ndarray, noise: ValueNoise) -> np.ndarray:
    """Albedo [N,3] of ``material`` at world points p [N,3] with normals n."""
    a = np.asarray(material.color_a, dtype=np.float64)
    b = np.asarray(material.color_b, dtype=np.float64)
    s = float(material.scale)
    if material.kind == "plain":
        m = np.zeros(len(p))
    elif material.kind == "checker":
        u, v = _plane_uv(p, n)
        m = ((np.floor(u / s) + np.floor(v / s)) % 2).astype(np.float64)
    elif material.kind == "stripes":
        u, v = _plane_uv(p, n)
        m = (np.floor((u + 0.5 * v) / s) % 2).astype(np.float64)
    elif material.kind == "noise":
        m = noise.fbm(p / s, 3)
        m = np.clip((m - 0.5) * 2.5 + 0.5, 0.0, 1.0)
    else:
        raise ValueError(f"unknown material kind {material.kind!r}")
    col = a[None] * (1.0 - m[:, None]) + b[None] * m[:, None]
    if material.grain > 0:
        g = noise(p * 9.0 + 3.3) - 0.5
        col = col * (1.0 + 2.0 * material.grain * g[:, None])
    return np.clip(col, 0.0, 1.0)


# --------------------------------------------------------------------------- rendering


def render(scene: Scene, camera: Camera, pixels: Optional[np.ndarray] = None,
           cull: bool = True) -> Dict[str, np.ndarray]:
    """Ray-cast ``scene`` from ``camera``.

    Returns ``image`` float32 [H,W,3] in [0,1], ``depth`` float32 [H,W] planar metres
    (0 where invalid), ``valid`` bool [H,W], ``depth64`` float64 [H,W] (inf for sky),
    ``ids`` int64 [H,W] (index of the primitive seen, -1 for sky), and
    ``K``/``pose``. With ``pixels`` [N,2] (u, v) the arrays are [N,...] instead.
    ``cull=False`` tests every ray against every primitive (for checking the culling).
    """
    o, d = camera_rays(camera, pixels, scene.reference_pose)  # [3], [N,3]
    n_rays = len(d)
    grid = pixels is None
    shape2 = (camera.height, camera.width) if grid else (n_rays,)
    rays = Rays(o, *(np.ascontiguousarray(d[:, k].reshape(shape2)) for k in range(3)))
    best_t = np.full(shape2, _INF)
    best_id = np.full(shape2, -1, dtype=np.int64)
    world_to_cam = np.linalg.inv(np.asarray(scene.reference_pose, dtype=np.float64)
                                 @ np.asarray(camera.pose, dtype=np.float64))
    K = np.asarray(camera.K, dtype=np.float64)
    if not grid:
        pu, pv = np.asarray(pixels, dtype=np.float64)[:, 0], np.asarray(pixels, dtype=np.float64)[:, 1]
    for k, prim in enumerate(scene.primitives):
        if grid and not cull:
            win = (slice(None), slice(None))
            t = intersect(prim, rays[win])
            closer = t < best_t
            best_t[closer] = t[closer]
            best_id[closer] = k
        elif grid:  # screen-space culling: only the window the primitive can cover
            win = screen_window(prim, K, world_to_cam, camera.height, camera.width, scene.far_clip)
            if win is None:
                continue
            t = intersect(prim, rays[win])
            bt, bi = best_t[win], best_id[win]  # views into the full arrays
            closer = t < bt
            bt[closer] = t[closer]
            bi[closer] = k
        else:  # the same culling on an arbitrary set of pixel positions
            bnd = screen_bounds(prim, K, world_to_cam, scene.far_clip) if cull else "all"
            if bnd is None:
                continue
            if bnd == "all":
                sel = np.arange(n_rays)
            else:
                sel = np.nonzero((pu >= bnd[0]) & (pu <= bnd[1]) & (pv >= bnd[2]) & (pv <= bnd[3]))[0]
                if not len(sel):
                    continue
            t = intersect(prim, rays[sel])
            closer = t < best_t[sel]
            best_t[sel[closer]] = t[closer]
            best_id[sel[closer]] = k
    best_t = best_t.reshape(-1)
    best_id = best_id.reshape(-1)

    hit = best_id >= 0
    color = np.empty((n_rays, 3))
    # sky: gradient on the elevation of the unit ray direction (-y is up)
    dn = d / np.linalg.norm(d, axis=1, keepdims=True)
    up = np.clip(-dn[:, 1], 0.0, 1.0)[:, None] ** 0.6
    sky = (1.0 - up) * np.asarray(scene.sky_horizon) + up * np.asarray(scene.sky_zenith)
    color[~hit] = sky[~hit]

    noise = ValueNoise(scene.noise_seed)
    idx_hit = np.nonzero(hit)[0]
    if len(idx_hit):
        p_all = o + best_t[idx_hit, None] * d[idx_hit]
        normals = np.empty_like(p_all)
        alb = np.empty_like(p_all)
        ids = best_id[idx_hit]
        # group the hits by primitive with one sort instead of a mask per primitive
        order = np.argsort(ids, kind="stable")
        uniq, starts = np.unique(ids[order], return_index=True)
        ends = np.append(starts[1:], len(order))
        for k, a, b in zip(uniq, starts, ends):
            sel = order[a:b]
            prim = scene.primitives[k]
            nk = surface_normal(prim, p_all[sel], d[idx_hit[sel]])
            normals[sel] = nk
            alb[sel] = albedo(prim.material, p_all[sel], nk, noise)
        light = np.full(len(p_all), float(scene.ambient))
        for lt in scene.lights:
            if isinstance(lt, DirectionalLight):
                ldir = -np.asarray(lt.direction, dtype=np.float64)
                ldir = ldir / np.linalg.norm(ldir)
                light += lt.intensity * np.clip(normals @ ldir, 0.0, None)
            else:
                L = np.asarray(lt.position, dtype=np.float64) - p_all
                dist2 = np.einsum("ij,ij->i", L, L)
                lam = np.einsum("ij,ij->i", normals, L) / np.sqrt(np.maximum(dist2, 1e-12))
                light += lt.intensity * np.clip(lam, 0.0, None) / (1.0 + lt.falloff * dist2)
        color[idx_hit] = alb * light[:, None]

    color = np.clip(color, 0.0, 1.0) ** (1.0 / scene.gamma)
    valid = hit & (best_t <= scene.max_depth)
    depth = np.where(valid, best_t, 0.0)
    shape = (camera.height, camera.width) if pixels is None else (n_rays,)
    return {
        "image": color.reshape(*shape, 3).astype(np.float32),
        "depth": depth.reshape(shape).astype(np.float32),
        "depth64": np.where(hit, best_t, _INF).reshape(shape),
        "valid": valid.reshape(shape),
        "ids": best_id.reshape(shape),  # index of the primitive hit, -1 = sky
        "K": np.asarray(camera.K, dtype=np.float64),
        "pose": np.asarray(camera.pose, dtype=np.float64),
    }


# --------------------------------------------------------------------------- scene generators

INDOOR_FOCAL = 518.8579 / 640.0  # NYUv2-like focal length as a fraction of the image width
OUTDOOR_FOCAL = 721.5377 / 1242.0  # KITTI-like (~0.58 x width)


def default_intrinsics(kind: str, height: int, width: int) -> np.ndarray:
    """Square pixels, principal point at (W/2, H/2) (the :mod:`diffdepth.geometry` convention)."""
    f = (INDOOR_FOCAL if kind == "indoor" else OUTDOOR_FOCAL) * width
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def _color(rng, lo=0.15, hi=0.95) -> Tuple[float, float, float]:
    return tuple(float(x) for x in rng.uniform(lo, hi, 3))


def _material(rng, kinds=("plain", "checker", "stripes", "noise"), scale=(0.1, 0.6), grain=0.08) -> Material:
    kind = kinds[int(rng.integers(len(kinds)))]
    return Material(kind=kind, color_a=_color(rng), color_b=_color(rng),
                    scale=float(rng.uniform(*scale)), grain=grain)


def make_indoor_scene(rng: np.random.Generator) -> Tuple[Scene, np.ndarray]:
    """A box room (floor, ceiling, four walls as planes) with furniture boxes, spheres,
    cylinders, wall pictures and a rug; 1-3 point lights under the ceiling.
    Returns the scene and a camera pose inside it. Planar depths stay below ~9 m."""
    w = rng.uniform(4.0, 7.0)
    length = rng.uniform(5.0, 8.0)
    height = rng.uniform(2.5, 3.2)
    cam_h = rng.uniform(1.1, 1.7)  # camera height above the floor; world y = 0 at the camera
    x0 = rng.uniform(-0.25, 0.25) * w  # room centre offset in x
    xl, xr = x0 - w / 2, x0 + w / 2
    zb, zf = -rng.uniform(0.6, 1.5), None
    zf = zb + length
    floor_y, ceil_y = cam_h, cam_h - height
    prims: List = [
        Plane((0, -1, 0), -floor_y, _material(rng, ("checker", "noise", "stripes"), (0.2, 0.8))),
        Plane((0, 1, 0), ceil_y, Material("plain", _color(rng, 0.7, 0.95), _color(rng, 0.7, 0.95), 1.0, 0.03)),
        Plane((1, 0, 0), xl, _material(rng, ("plain", "stripes", "noise"), (0.2, 1.0))),
        Plane((-1, 0, 0), -xr, _material(rng, ("plain", "stripes", "noise"), (0.2, 1.0))),
        Plane((0, 0, -1), -zf, _material(rng, ("plain", "stripes", "noise", "checker"), (0.2, 1.0))),
        Plane((0, 0, 1), zb, _material(rng, ("plain", "noise"), (0.2, 1.0))),
    ]

    def clear_of_camera(xa, xb, za, zb_):
        return not (xa < 0.7 and xb > -0.7 and za < 1.2 and zb_ > -1.0)

    # rug
    rx, rz = rng.uniform(0.8, 2.0), rng.uniform(0.8, 2.0)
    cxr, czr = rng.uniform(xl + rx / 2, xr - rx / 2), rng.uniform(1.0, zf - rz / 2 - 0.2)
    prims.append(Box((cxr - rx / 2, floor_y - 0.01, czr - rz / 2), (cxr + rx / 2, floor_y + 0.01, czr + rz / 2),
                     _material(rng, ("checker", "stripes", "noise"), (0.1, 0.4))))
    # furniture boxes on the floor (some against the walls)
    for _ in range(int(rng.integers(2, 6))):
        for _try in range(10):
            bw, bd, bh = rng.uniform(0.4, 1.6), rng.uniform(0.4, 1.2), rng.uniform(0.4, 1.3)
            if rng.random() < 0.4:  # against the left/right wall
                xa = xl if rng.random() < 0.5 else xr - bw
            else:
                xa = rng.uniform(xl, xr - bw)
            za = rng.uniform(0.5, zf - bd)
            if clear_of_camera(xa, xa + bw, za, za + bd):
                prims.append(Box((xa, floor_y - bh, za), (xa + bw, floor_y, za + bd), _material(rng)))
                if rng.random() < 0.5:  # an object on top
                    r = rng.uniform(0.08, min(bw, bd) / 2.2)
                    prims.append(Sphere((xa + bw / 2, floor_y - bh - r, za + bd / 2), r, _material(rng)))
                break
    # free-standing spheres and cylinders
    for _ in range(int(rng.integers(1, 4))):
        r = rng.uniform(0.15, 0.5)
        cx, cz = rng.uniform(xl + r, xr - r), rng.uniform(1.5 + r, zf - r)
        if clear_of_camera(cx - r, cx + r, cz - r, cz + r):
            prims.append(Sphere((cx, floor_y - r, cz), r, _material(rng)))
    for _ in range(int(rng.integers(1, 4))):
        r = rng.uniform(0.08, 0.4)
        hgt = rng.uniform(0.3, min(2.0, height - 0.2))
        cx, cz = rng.uniform(xl + r, xr - r), rng.uniform(1.5 + r, zf - r)
        if clear_of_camera(cx - r, cx + r, cz - r, cz + r):
            prims.append(Cylinder(cx, cz, r, floor_y - hgt, floor_y, _material(rng)))
    # pictures on the far and side walls
    for _ in range(int(rng.integers(1, 4))):
        pw, ph = rng.uniform(0.4, 1.2), rng.uniform(0.3, 0.9)
        py = rng.uniform(ceil_y + 0.3, floor_y - 1.2 - ph) if floor_y - 1.2 - ph > ceil_y + 0.3 else ceil_y + 0.3
        wall = int(rng.integers(3))
        mat = _material(rng, ("checker", "stripes", "noise"), (0.05, 0.3))
        if wall == 0:
            px = rng.uniform(xl + 0.1, xr - pw - 0.1)
            prims.append(Box((px, py, zf - 0.03), (px + pw, py + ph, zf + 0.01), mat))
        else:
            pz = rng.uniform(1.0, max(1.1, zf - pw - 0.1))
            xs = (xl - 0.01, xl + 0.03) if wall == 1 else (xr - 0.03, xr + 0.01)
            prims.append(Box((xs[0], py, pz), (xs[1], py + ph, pz + pw), mat))
    lights = []
    for _ in range(int(rng.integers(1, 4))):
        lights.append(PointLight((rng.uniform(xl + 0.5, xr - 0.5), ceil_y + 0.3, rng.uniform(0.5, zf - 0.5)),
                                 intensity=rng.uniform(0.8, 1.6), falloff=rng.uniform(0.05, 0.2)))
    scene = Scene(prims, lights, ambient=float(rng.uniform(0.2, 0.35)), max_depth=math.inf,
                  noise_seed=int(rng.integers(2**31)))
    pose = make_pose((0.0, 0.0, 0.0), yaw=rng.uniform(-0.35, 0.35), pitch=rng.uniform(0.0, 0.3),
                     roll=rng.uniform(-0.03, 0.03))
    return scene, pose


def make_outdoor_scene(rng: np.random.Generator, z_min: float = -30.0, z_max: float = 150.0,
                       traffic: bool = True, max_depth: float = 80.0) -> Tuple[Scene, np.ndarray]:
    """A street: ground plane, sidewalks, building façades (boxes) along both sides,
    parked cars (two boxes each), poles and trees (cylinders, sphere crowns), optional
    cars ahead in the lanes, a sun (directional light) and sky (no hit -> invalid depth).
    The camera drives along +z at x ~ 0 with the ground at y = camera height."""
    cam_h = rng.uniform(1.5, 1.8)
    road = rng.uniform(3.5, 5.5)  # half width of the road
    walk = rng.uniform(1.5, 3.0)
    prims: List = [Plane((0, -1, 0), -cam_h, Material("noise", _color(rng, 0.25, 0.4), _color(rng, 0.15, 0.3),
                                                      rng.uniform(0.3, 1.5), 0.1))]
    # lane markings: thin boxes on the road centre line
    z = z_min
    while z < z_max:
        prims.append(Box((-0.08, cam_h - 0.005, z), (0.08, cam_h + 0.01, z + 3.0),
                         Material("plain", (0.9, 0.9, 0.85), (0.9, 0.9, 0.85), 1.0, 0.05)))
        z += 9.0
    for side in (-1.0, 1.0):
        xa, xb = sorted((side * road, side * (road + walk)))
        prims.append(Box((xa, cam_h - 0.15, z_min), (xb, cam_h + 0.5, z_max),
                         Material("checker", _color(rng, 0.5, 0.75), _color(rng, 0.4, 0.65), rng.uniform(0.4, 1.0), 0.08)))
        # façades
        z = z_min
        while z < z_max:
            bl = rng.uniform(6.0, 20.0)
            setback = rng.uniform(0.0, 2.0)
            depth = rng.uniform(6.0, 12.0)
            bh = rng.uniform(6.0, 25.0)
            x_in = road + walk + setback
            xa, xb = sorted((side * x_in, side * (x_in + depth)))
            prims.append(Box((xa, cam_h - bh, z), (xb, cam_h, z + bl),
                             _material(rng, ("stripes", "checker", "noise", "plain"), (0.5, 2.5))))
            z += bl + rng.uniform(0.0, 4.0)
        # parked cars
        z = z_min + rng.uniform(0.0, 10.0)
        while z < z_max:
            if rng.random() < 0.6:
                xc = side * (road - 1.1)
                cl = rng.uniform(3.8, 4.8)
                body = _material(rng, ("plain", "noise"), (0.3, 1.0), 0.04)
                prims.append(Box((xc - 0.9, cam_h - 1.0, z), (xc + 0.9, cam_h - 0.25, z + cl), body))
                prims.append(Box((xc - 0.75, cam_h - 1.5, z + 0.9), (xc + 0.75, cam_h - 1.0, z + cl - 1.0),
                                 Material("plain", (0.15, 0.18, 0.22), (0.1, 0.1, 0.1), 1.0, 0.03)))
                z += cl + rng.uniform(1.0, 6.0)
            else:
                z += rng.uniform(4.0, 12.0)
        # poles and trees
        z = z_min + rng.uniform(0.0, 15.0)
        while z < z_max:
            xp = side * (road + 0.5)
            if rng.random() < 0.5:
                ph = rng.uniform(4.0, 7.0)
                prims.append(Cylinder(xp, z, rng.uniform(0.08, 0.15), cam_h - ph, cam_h,
                                      Material("plain", _color(rng, 0.3, 0.6), (0.2, 0.2, 0.2), 1.0, 0.05)))
            else:
                th = rng.uniform(2.0, 3.5)
                prims.append(Cylinder(xp, z, rng.uniform(0.12, 0.25), cam_h - th, cam_h,
                                      Material("noise", (0.35, 0.25, 0.15), (0.2, 0.15, 0.1), 0.2, 0.1)))
                cr = rng.uniform(1.0, 2.0)
                prims.append(Sphere((xp, cam_h - th - cr * 0.7, z), cr,
                                    Material("noise", (0.2, 0.5, 0.15), (0.1, 0.3, 0.08), rng.uniform(0.1, 0.4), 0.15)))
            z += rng.uniform(10.0, 25.0)
    if traffic:
        for _ in range(int(rng.integers(0, 3))):
            xc = rng.choice([-1.0, 1.0]) * rng.uniform(1.3, max(1.4, road - 2.0))
            zc = rng.uniform(8.0, 40.0)
            cl = rng.uniform(3.8, 4.8)
            prims.append(Box((xc - 0.9, cam_h - 1.0, zc), (xc + 0.9, cam_h - 0.25, zc + cl),
                             _material(rng, ("plain", "noise"), (0.3, 1.0), 0.04)))
            prims.append(Box((xc - 0.75, cam_h - 1.5, zc + 0.9), (xc + 0.75, cam_h - 1.0, zc + cl - 1.0),
                             Material("plain", (0.15, 0.18, 0.22), (0.1, 0.1, 0.1), 1.0, 0.03)))
    az = rng.uniform(-math.pi, math.pi)
    el = rng.uniform(math.radians(25), math.radians(65))
    sun = DirectionalLight((math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)),
                           intensity=rng.uniform(0.7, 1.0))
    scene = Scene(prims, [sun], ambient=float(rng.uniform(0.3, 0.45)), max_depth=max_depth,
                  noise_seed=int(rng.integers(2**31)))
    pose = make_pose((rng.uniform(-0.8, 0.8), 0.0, 0.0), yaw=rng.uniform(-0.12, 0.12),
                     pitch=rng.uniform(-0.02, 0.06))
    return scene, pose


def make_sequence(rng: np.random.Generator, n_frames: int, max_depth: float = 80.0,
                  ) -> Tuple[Scene, List[np.ndarray]]:
    """A static street and ``n_frames`` camera-to-world poses of a camera driving forward
    (0.6-1.2 m per frame) with a slow lateral sway and slight yaw/pitch oscillation.
    Poses are expressed relative to frame 0 (its pose is the identity), as in KITTI
    odometry; the scene is moved accordingly."""
    speed = rng.uniform(0.6, 1.2)
    scene, _ = make_outdoor_scene(rng, z_min=-30.0, z_max=n_frames * speed + 150.0, traffic=False,
                                  max_depth=max_depth)
    period = rng.uniform(30.0, 80.0)
    phase = rng.uniform(0, 2 * math.pi)
    world_poses = []
    for i in range(n_frames):
        s = math.sin(2 * math.pi * i / period + phase)
        c = math.cos(2 * math.pi * i / (0.7 * period) + phase)
        world_poses.append(make_pose((0.4 * s, 0.0, i * speed), yaw=0.05 * c, pitch=0.02 + 0.01 * s,
                                     roll=0.005 * c))
    inv0 = np.linalg.inv(world_poses[0])
    scene.reference_pose = world_poses[0]
    return scene, [np.eye(4)] + [inv0 @ P for P in world_poses[1:]]


# --------------------------------------------------------------------------- writing datasets

#: date folder used for KITTI-like layouts (an obviously synthetic date in KITTI's pattern)
SYNTH_DATE = "2000_01_01"
KINDS = ("indoor", "outdoor", "sequence")
LAYOUTS = ("folder", "nyu", "kitti", "pseudo")
#: KITTI stereo rig offsets (metres, along camera x) written into calib_cam_to_cam.txt for
#: cameras 0-3 (grey left/right, colour left/right), approximately those of the real rig
_KITTI_CAM_X = (0.0, -0.54, 0.06, -0.47)


def drive_name(index: int, date: str = SYNTH_DATE) -> str:
    return f"{date}_drive_{index:04d}_sync"


def render_sample(kind: str, index: int, seed: int, size: Tuple[int, int]) -> Dict[str, np.ndarray]:
    """Render still scene ``index`` of ``kind`` (indoor|outdoor) for a run with ``seed``."""
    h, w = size
    rng = np.random.default_rng([int(seed), int(index)])
    if kind == "indoor":
        scene, pose = make_indoor_scene(rng)
    elif kind == "outdoor":
        scene, pose = make_outdoor_scene(rng)
    else:
        raise ValueError(f"render_sample renders indoor or outdoor scenes, not {kind!r}")
    return render(scene, Camera(default_intrinsics(kind, h, w), pose, h, w))


def kitti_calib_text(K: np.ndarray, width: int, height: int) -> str:
    """``calib_cam_to_cam.txt`` in the KITTI raw format for a rectified rig whose four
    cameras share ``K`` (R = R_rect = I, D = 0); P_rect_0i = K [I | t_i], with
    t_i = (x_i, 0, 0) so that P_rect_0i[0,3] = fx * x_i as in KITTI."""
    def fmt(vals) -> str:
        return " ".join(f"{float(v):.12e}" for v in np.asarray(vals).ravel())

    lines = ["calib_time: 01-Jan-2000 00:00:00", f"corner_dist: {fmt([0.0995])}"]
    K = np.asarray(K, dtype=np.float64)
    for i, x in enumerate(_KITTI_CAM_X):
        P = np.zeros((3, 4))
        P[:, :3] = K
        P[:, 3] = K @ np.array([x, 0.0, 0.0])
        lines += [f"S_{i:02d}: {fmt([width, height])}", f"K_{i:02d}: {fmt(K)}", f"D_{i:02d}: {fmt(np.zeros(5))}",
                  f"R_{i:02d}: {fmt(np.eye(3))}", f"T_{i:02d}: {fmt([x, 0.0, 0.0])}",
                  f"S_rect_{i:02d}: {fmt([width, height])}", f"R_rect_{i:02d}: {fmt(np.eye(3))}",
                  f"P_rect_{i:02d}: {fmt(P)}"]
    return "\n".join(lines) + "\n"


#: Velodyne -> camera-0 rotation: velodyne x forward, y left, z up; camera x right, y down, z forward
VELO_TO_CAM_R = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])


def kitti_velo_calib_text() -> str:
    """``calib_velo_to_cam.txt`` for a scanner at the centre of camera 2 (the rendered camera):
    X_cam0 = R X_velo + T with T = -(camera-2 offset), so that P_rect_02 R_rect_00 [R|T]
    maps a scan point to its pixel in image_02 and velodyne x equals camera-2 depth."""
    T = np.array([-_KITTI_CAM_X[2], 0.0, 0.0])
    fmt = lambda v: " ".join(f"{float(x):.12e}" for x in np.asarray(v).ravel())  # noqa: E731
    return (f"calib_time: 01-Jan-2000 00:00:00\nR: {fmt(VELO_TO_CAM_R)}\nT: {fmt(T)}\n"
            f"delta_f: {fmt([0, 0])}\ndelta_c: {fmt([0, 0])}\n")


def lidar_scan(scene: Scene, camera: Camera, n_beams: int = 64, elevation_deg=(2.0, -24.8),
               azimuth_step_deg: float = 0.2, max_range: float = 120.0) -> np.ndarray:
    """A Velodyne-HDL-64E-like scan from the centre of ``camera``, covering its horizontal
    field of view (+2 deg): ``n_beams`` elevations, one return per (beam, azimuth) at the
    nearest surface within ``max_range`` metres. Returns float32 [N,4] in the scanner frame
    (x forward, y left, z up, reflectance = grey value of the surface)."""
    K = np.asarray(camera.K, dtype=np.float64)
    half = math.atan2(max(K[0, 2], camera.width - K[0, 2]), K[0, 0]) + math.radians(2.0)
    el = np.radians(np.linspace(elevation_deg[0], elevation_deg[1], n_beams))
    az = np.arange(-half, half + 1e-9, math.radians(azimuth_step_deg))
    E, A = np.meshgrid(el, az, indexing="ij")
    d_cam = np.stack([-np.cos(E) * np.sin(A), -np.sin(E), np.cos(E) * np.cos(A)], -1).reshape(-1, 3)
    d_cam = d_cam / d_cam[:, 2:3]  # z = 1: the returned ray parameter is the planar depth
    pix = d_cam @ K.T  # [N,3], third column 1
    r = render(scene, camera, pixels=pix[:, :2])
    z = r["depth64"]
    pts = d_cam * z[:, None]  # camera coordinates
    keep = np.isfinite(z) & (np.linalg.norm(pts, axis=1) <= max_range)
    pts = pts[keep]
    refl = r["image"][keep].mean(1)
    velo = np.stack([pts[:, 2], -pts[:, 0], -pts[:, 1], refl], 1)
    return velo.astype(np.float32)


def _progress(total: int, desc: str, enabled: bool):
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, disable=None if enabled else True, leave=False)  # None: off when not a terminal
    except ImportError:  # pragma: no cover
        return None


def write_pseudo_sample(out, kind: str, name: str, r: Dict[str, np.ndarray]) -> None:
    """One sample of the ``pseudo`` layout (see :func:`write_dataset`)."""
    from PIL import Image

    from ..utils import atomic_path
    from .folder import write_rgb, write_text

    out = Path(out)
    write_rgb(out / "images" / f"{name}.png", r["image"])
    with atomic_path(out / "depth" / f"{name}.npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.where(r["valid"], r["depth"], 0.0).astype(np.float32))
    ids = r["ids"]
    seg = np.where((ids >= 0) & (ids < 150), ids, 255).astype(np.uint8)
    with atomic_path(out / "segmentation" / f"{name}.png") as tmp:
        Image.fromarray(seg, "L").save(tmp)
    n_obj = len(np.unique(ids[ids >= 0]))
    what = "room" if kind == "indoor" else "street"
    write_text(out / "captions" / f"{name}.txt", f"a rendered {what} with {n_obj} visible surfaces\n")


def write_dataset(out, kind: str, n: int, size: Tuple[int, int], seed: int, layout: Optional[str] = None,
                  progress: bool = False) -> Dict:
    """Render ``n`` samples (``sequence``: ``n`` frames) and write them under ``out``.

    Layouts (paths relative to ``out``):

    ``folder`` (default for indoor/outdoor; read by :class:`diffdepth.data.folder.FolderDepthDataset`)
        ``<kind>_<i:05d>.png``, ``<kind>_<i:05d>_depth.png`` (uint16 mm, 0 = invalid, depths
        above 65.535 m invalid), ``<kind>_<i:05d>_K.txt``.
    ``nyu`` (Marigold's NYUv2 extraction)
        ``test/<kind>_<i:04d>/rgb_<i:04d>.png``, ``depth_<i:04d>.png`` (uint16 mm),
        ``filled_<i:04d>.png`` (same as depth: the synthetic depth is complete); split file
        ``filename_list_test.txt`` with lines ``<rgb> <depth> <filled>``; ``intrinsics.txt``.
    ``pseudo`` (a pseudo-label folder for PrimeDepth pre-training, read by
    :class:`diffdepth.data.pseudo.PseudoLabelDataset`; the exact depth plays the teacher)
        ``images/<kind>_<i:05d>.png``, ``depth/<kind>_<i:05d>.npy`` (float32 metres, 0 = invalid),
        ``segmentation/<kind>_<i:05d>.png`` (8-bit primitive index as class id, 255 = sky or index
        >= 150), ``captions/<kind>_<i:05d>.txt``, ``labels.json`` (``depth_kind: depth``).
    ``kitti`` (Marigold's KITTI Eigen layout)
        ``<date>/<date>_drive_0000_sync/image_02/data/<i:010d>.png``,
        ``<date>_drive_0000_sync/proj_depth/groundtruth/image_02/<i:010d>.png`` (uint16, m x 256),
        ``<date>/calib_cam_to_cam.txt``; split ``eigen_test_files_with_gt.txt`` with lines
        ``<rgb> <depth> <focal>``; ``intrinsics.txt``.
    ``sequence`` (always KITTI-raw-like; read by :class:`diffdepth.data.sequences.KittiRawSequences`)
        ``<date>/calib_cam_to_cam.txt``, ``<date>/<drive>/image_02/data/<i:010d>.png``,
        ``<date>/<drive>/proj_depth/groundtruth/image_02/<i:010d>.png`` (dense, uint16, m x 256,
        0 = invalid/sky/> 80 m; where the KITTI depth benchmark's annotated depth is found),
        ``<date>/<drive>/velodyne_points/data/<i:010d>.bin`` (simulated 64-beam scan, float32
        x,y,z,reflectance) with ``<date>/calib_velo_to_cam.txt``,
        ``<date>/<drive>/poses.txt`` (camera-to-world 3x4 per frame, row-major, frame 0 = I);
        Monodepth2 splits ``train_files.txt``/``val_files.txt`` (``<date>/<drive> <i> l``,
        frames with both neighbours; the 3rd of every 5 such frames goes to val), ``test_files.txt``
        (every frame, same format: Monodepth2's Velodyne and improved-GT protocols) and
        ``test_files_with_gt.txt`` (Marigold KITTI format ``<rgb> <depth> <focal>``, every frame).

    Returns a summary dict (paths, counts, seconds per frame).
    """
    import time
    from pathlib import Path

    from ..utils import atomic_path
    from .folder import encode_depth_uint16, write_folder_sample, write_matrix, write_png16, write_rgb, write_text

    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    if layout is None:
        layout = "kitti" if kind == "sequence" else "folder"
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if layout == "pseudo" and kind == "sequence":
        raise ValueError("the pseudo layout holds still scenes; use --kind indoor or outdoor")
    if kind == "sequence" and layout != "kitti":
        raise ValueError("--kind sequence is always written in the KITTI-raw-like layout; use --layout kitti")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if kind == "sequence" and n < 3:
        raise ValueError(f"a sequence needs at least 3 frames (target and two neighbours), got {n}")
    out = Path(out)
    h, w = size
    bar = _progress(n, f"synth {kind}", progress)
    t_render = 0.0
    summary: Dict = {"out": str(out), "kind": kind, "layout": layout, "n": n, "size": [h, w], "seed": seed}

    def tick():
        if bar is not None:
            bar.update(1)

    if kind == "sequence":
        date, drive = SYNTH_DATE, drive_name(0)
        rng = np.random.default_rng([int(seed), 0])
        scene, poses = make_sequence(rng, n)
        K = default_intrinsics("outdoor", h, w)
        write_text(out / date / "calib_cam_to_cam.txt", kitti_calib_text(K, w, h))
        write_text(out / date / "calib_velo_to_cam.txt", kitti_velo_calib_text())
        drive_dir = out / date / drive
        gt_lines = []
        for i, pose in enumerate(poses):
            t0 = time.perf_counter()
            cam = Camera(K, pose, h, w)
            r = render(scene, cam)
            t_render += time.perf_counter() - t0
            write_rgb(drive_dir / "image_02" / "data" / f"{i:010d}.png", r["image"])
            gt_rel = f"{date}/{drive}/proj_depth/groundtruth/image_02/{i:010d}.png"
            write_png16(out / gt_rel, encode_depth_uint16(r["depth"], 256.0))
            scan = lidar_scan(scene, cam)
            with atomic_path(drive_dir / "velodyne_points" / "data" / f"{i:010d}.bin") as tmp:
                scan.astype("<f4").tofile(tmp)
            gt_lines.append(f"{date}/{drive}/image_02/data/{i:010d}.png {gt_rel} {K[0, 0]:.4f}")
            tick()
        write_text(drive_dir / "poses.txt",
                   "".join(" ".join(f"{v:.12e}" for v in P[:3].ravel()) + "\n" for P in poses))
        inner = list(range(1, n - 1))
        val = [i for j, i in enumerate(inner) if j % 5 == 2]
        train = [i for i in inner if i not in set(val)]
        write_text(out / "train_files.txt", "".join(f"{date}/{drive} {i} l\n" for i in train))
        write_text(out / "val_files.txt", "".join(f"{date}/{drive} {i} l\n" for i in val))
        write_text(out / "test_files_with_gt.txt", "\n".join(gt_lines) + "\n")
        write_text(out / "test_files.txt", "".join(f"{date}/{drive} {i} l\n" for i in range(n)))
        summary.update(train=len(train), val=len(val))
    else:
        K = default_intrinsics(kind, h, w)
        lines = []
        if layout == "kitti":
            date, drive = SYNTH_DATE, drive_name(0)
            write_text(out / date / "calib_cam_to_cam.txt", kitti_calib_text(K, w, h))
        for i in range(n):
            t0 = time.perf_counter()
            r = render_sample(kind, i, seed, (h, w))
            t_render += time.perf_counter() - t0
            if layout == "folder":
                write_folder_sample(out, f"{kind}_{i:05d}", r["image"], r["depth"], r["K"])
            elif layout == "pseudo":
                write_pseudo_sample(out, kind, f"{kind}_{i:05d}", r)
            elif layout == "nyu":
                scene_dir = f"test/{kind}_{i:04d}"
                rgb, dep, fil = (f"{scene_dir}/{p}_{i:04d}.png" for p in ("rgb", "depth", "filled"))
                write_rgb(out / rgb, r["image"])
                q = encode_depth_uint16(r["depth"], 1000.0)
                write_png16(out / dep, q)
                write_png16(out / fil, q)
                lines.append(f"{rgb} {dep} {fil}")
            else:
                rgb = f"{date}/{drive}/image_02/data/{i:010d}.png"
                dep = f"{drive}/proj_depth/groundtruth/image_02/{i:010d}.png"
                write_rgb(out / rgb, r["image"])
                write_png16(out / dep, encode_depth_uint16(r["depth"], 256.0))
                lines.append(f"{rgb} {dep} {K[0, 0]:.4f}")
            tick()
        if layout == "nyu":
            write_text(out / "filename_list_test.txt", "\n".join(lines) + "\n")
            summary["split_file"] = str(out / "filename_list_test.txt")
        elif layout == "kitti":
            write_text(out / "eigen_test_files_with_gt.txt", "\n".join(lines) + "\n")
            summary["split_file"] = str(out / "eigen_test_files_with_gt.txt")
        if layout == "pseudo":
            write_text(out / "labels.json", json.dumps({"depth_kind": "depth", "teacher": "diffdepth synth (exact depth)"}) + "\n")
        elif layout != "folder":
            write_matrix(out / "intrinsics.txt", K)
    if bar is not None:
        bar.close()
    summary["seconds_per_frame"] = t_render / n
    return summary
