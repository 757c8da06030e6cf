"""Rendering: procedural textures (checker, stripes, value noise) in world coordinates,
Lambertian shading (ambient + point/directional lights, no shadows), the ray-cast image and
depth of a camera, and a simulated lidar scan.

Because every texture and light lives in world space and shading is view-independent, a static
point has the same colour in every frame of a camera sequence, as the photometric-consistency
assumption of self-supervised training (Monodepth2) requires.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import numpy as np

from .geometry import (_INF, Camera, DirectionalLight, Material, Rays, Scene, camera_rays, intersect,
                       screen_bounds, screen_window, surface_normal)

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
    best_t, best_id = _first_hits(scene, camera, o, d, pixels, cull)
    hit = best_id >= 0
    color = _shade(scene, o, d, best_t, best_id)
    valid = hit & (best_t <= scene.max_depth)
    depth = np.where(valid, best_t, 0.0)
    shape = (camera.height, camera.width) if pixels is None else (len(d),)
    return {
        "image": color.reshape(*shape, 3).astype(np.float32),
        "depth": depth.reshape(shape).astype(np.float32),
        "depth64": np.where(hit, best_t, _INF).reshape(shape),
        "valid": valid.reshape(shape),
        "ids": best_id.reshape(shape),  # index of the primitive hit, -1 = sky
        "K": np.asarray(camera.K, dtype=np.float64),
        "pose": np.asarray(camera.pose, dtype=np.float64),
    }


def _first_hits(scene: Scene, camera: Camera, o: np.ndarray, d: np.ndarray, pixels: Optional[np.ndarray],
                cull: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Ray parameter [N] and primitive index [N] of the nearest hit of every ray (inf / -1: none).
    With ``cull`` each primitive is tested only on the rays of its conservative screen bounds."""
    grid = pixels is None
    shape2 = (camera.height, camera.width) if grid else (len(d),)
    rays = Rays(o, *(np.ascontiguousarray(d[:, k].reshape(shape2)) for k in range(3)))
    best_t = np.full(shape2, _INF)
    best_id = np.full(shape2, -1, dtype=np.int64)
    world_to_cam = np.linalg.inv(np.asarray(scene.reference_pose, dtype=np.float64)
                                 @ np.asarray(camera.pose, dtype=np.float64))
    K = np.asarray(camera.K, dtype=np.float64)
    if not grid:
        pu, pv = np.asarray(pixels, dtype=np.float64)[:, 0], np.asarray(pixels, dtype=np.float64)[:, 1]
    for k, prim in enumerate(scene.primitives):
        if grid:  # screen-space culling: only the window the primitive can cover
            win = (screen_window(prim, K, world_to_cam, camera.height, camera.width, scene.far_clip) if cull
                   else (slice(None), slice(None)))
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
                sel = np.arange(len(d))
            else:
                sel = np.nonzero((pu >= bnd[0]) & (pu <= bnd[1]) & (pv >= bnd[2]) & (pv <= bnd[3]))[0]
                if not len(sel):
                    continue
            t = intersect(prim, rays[sel])
            closer = t < best_t[sel]
            best_t[sel[closer]] = t[closer]
            best_id[sel[closer]] = k
    return best_t.reshape(-1), best_id.reshape(-1)


def _shade(scene: Scene, o: np.ndarray, d: np.ndarray, best_t: np.ndarray, best_id: np.ndarray) -> np.ndarray:
    """Gamma-encoded colour [N,3] of every ray: the sky gradient on a miss, albedo x light on a hit."""
    hit = best_id >= 0
    color = np.empty((len(d), 3))
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
        color[idx_hit] = alb * _light(scene, p_all, normals)[:, None]
    return np.clip(color, 0.0, 1.0) ** (1.0 / scene.gamma)


def _light(scene: Scene, p: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Lambertian irradiance [N] at points p [N,3]: ambient + directional + point lights (with falloff)."""
    light = np.full(len(p), float(scene.ambient))
    for lt in scene.lights:
        if isinstance(lt, DirectionalLight):
            ldir = -np.asarray(lt.direction, dtype=np.float64)
            ldir = ldir / np.linalg.norm(ldir)
            light += lt.intensity * np.clip(normals @ ldir, 0.0, None)
        else:
            L = np.asarray(lt.position, dtype=np.float64) - p
            dist2 = np.einsum("ij,ij->i", L, L)
            lam = np.einsum("ij,ij->i", normals, L) / np.sqrt(np.maximum(dist2, 1e-12))
            light += lt.intensity * np.clip(lam, 0.0, None) / (1.0 + lt.falloff * dist2)
    return light


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
