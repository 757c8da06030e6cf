"""Random scene generators (rooms, streets, a driving sequence) and the rendering of one still sample.

Everything is deterministic from the seed: scene ``i`` of a run with seed ``S`` draws from
``numpy.random.default_rng([S, i])``.
"""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

import numpy as np

from .geometry import (Box, Camera, Cylinder, DirectionalLight, Material, Plane, PointLight, Scene, Sphere,
                       make_pose)
from .rendering import render

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
    zb = -rng.uniform(0.6, 1.5)
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
    # rug
    rx, rz = rng.uniform(0.8, 2.0), rng.uniform(0.8, 2.0)
    cxr, czr = rng.uniform(xl + rx / 2, xr - rx / 2), rng.uniform(1.0, zf - rz / 2 - 0.2)
    prims.append(Box((cxr - rx / 2, floor_y - 0.01, czr - rz / 2), (cxr + rx / 2, floor_y + 0.01, czr + rz / 2),
                     _material(rng, ("checker", "stripes", "noise"), (0.1, 0.4))))
    prims += _furniture(rng, xl, xr, zf, floor_y)
    prims += _free_standing(rng, xl, xr, zf, floor_y, height)
    prims += _pictures(rng, xl, xr, zf, floor_y, ceil_y)
    lights = [PointLight((rng.uniform(xl + 0.5, xr - 0.5), ceil_y + 0.3, rng.uniform(0.5, zf - 0.5)),
                         intensity=rng.uniform(0.8, 1.6), falloff=rng.uniform(0.05, 0.2))
              for _ in range(int(rng.integers(1, 4)))]
    scene = Scene(prims, lights, ambient=float(rng.uniform(0.2, 0.35)), max_depth=math.inf,
                  noise_seed=int(rng.integers(2**31)))
    pose = make_pose((0.0, 0.0, 0.0), yaw=rng.uniform(-0.35, 0.35), pitch=rng.uniform(0.0, 0.3),
                     roll=rng.uniform(-0.03, 0.03))
    return scene, pose


def _clear_of_camera(xa: float, xb: float, za: float, zb: float) -> bool:
    """The floor footprint [xa, xb] x [za, zb] leaves the camera (at the origin) free."""
    return not (xa < 0.7 and xb > -0.7 and za < 1.2 and zb > -1.0)


def _furniture(rng, xl: float, xr: float, zf: float, floor_y: float) -> List:
    """2-5 boxes on the floor of the room [xl, xr] x [.., zf] (some against the side walls), half
    of them with a sphere on top."""
    prims: List = []
    for _ in range(int(rng.integers(2, 6))):
        for _try in range(10):
            bw, bd, bh = rng.uniform(0.4, 1.6), rng.uniform(0.4, 1.2), rng.uniform(0.4, 1.3)
            if rng.random() < 0.4:  # against the left/right wall
                xa = xl if rng.random() < 0.5 else xr - bw
            else:
                xa = rng.uniform(xl, xr - bw)
            za = rng.uniform(0.5, zf - bd)
            if _clear_of_camera(xa, xa + bw, za, za + bd):
                prims.append(Box((xa, floor_y - bh, za), (xa + bw, floor_y, za + bd), _material(rng)))
                if rng.random() < 0.5:  # an object on top
                    r = rng.uniform(0.08, min(bw, bd) / 2.2)
                    prims.append(Sphere((xa + bw / 2, floor_y - bh - r, za + bd / 2), r, _material(rng)))
                break
    return prims


def _free_standing(rng, xl: float, xr: float, zf: float, floor_y: float, height: float) -> List:
    """Free-standing spheres and cylinders on the floor."""
    prims: List = []
    for _ in range(int(rng.integers(1, 4))):
        r = rng.uniform(0.15, 0.5)
        cx, cz = rng.uniform(xl + r, xr - r), rng.uniform(1.5 + r, zf - r)
        if _clear_of_camera(cx - r, cx + r, cz - r, cz + r):
            prims.append(Sphere((cx, floor_y - r, cz), r, _material(rng)))
    for _ in range(int(rng.integers(1, 4))):
        r = rng.uniform(0.08, 0.4)
        hgt = rng.uniform(0.3, min(2.0, height - 0.2))
        cx, cz = rng.uniform(xl + r, xr - r), rng.uniform(1.5 + r, zf - r)
        if _clear_of_camera(cx - r, cx + r, cz - r, cz + r):
            prims.append(Cylinder(cx, cz, r, floor_y - hgt, floor_y, _material(rng)))
    return prims


def _pictures(rng, xl: float, xr: float, zf: float, floor_y: float, ceil_y: float) -> List:
    """1-3 thin textured boxes on the far and side walls."""
    prims: List = []
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
    return prims


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
        prims += _facades(rng, side, road + walk, cam_h, z_min, z_max)
        prims += _parked_cars(rng, side, road, cam_h, z_min, z_max)
        prims += _poles_and_trees(rng, side, road, cam_h, z_min, z_max)
    if traffic:
        for _ in range(int(rng.integers(0, 3))):
            xc = rng.choice([-1.0, 1.0]) * rng.uniform(1.3, max(1.4, road - 2.0))
            zc = rng.uniform(8.0, 40.0)
            prims += _car(rng, xc, zc, rng.uniform(3.8, 4.8), cam_h)
    az = rng.uniform(-math.pi, math.pi)
    el = rng.uniform(math.radians(25), math.radians(65))
    sun = DirectionalLight((math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)),
                           intensity=rng.uniform(0.7, 1.0))
    scene = Scene(prims, [sun], ambient=float(rng.uniform(0.3, 0.45)), max_depth=max_depth,
                  noise_seed=int(rng.integers(2**31)))
    pose = make_pose((rng.uniform(-0.8, 0.8), 0.0, 0.0), yaw=rng.uniform(-0.12, 0.12),
                     pitch=rng.uniform(-0.02, 0.06))
    return scene, pose


def _car(rng, xc: float, z: float, length: float, cam_h: float) -> List:
    """A car (body and cabin boxes) centred at x = ``xc``, from z to z + ``length``."""
    body = _material(rng, ("plain", "noise"), (0.3, 1.0), 0.04)
    return [Box((xc - 0.9, cam_h - 1.0, z), (xc + 0.9, cam_h - 0.25, z + length), body),
            Box((xc - 0.75, cam_h - 1.5, z + 0.9), (xc + 0.75, cam_h - 1.0, z + length - 1.0),
                Material("plain", (0.15, 0.18, 0.22), (0.1, 0.1, 0.1), 1.0, 0.03))]


def _facades(rng, side: float, x_walk: float, cam_h: float, z_min: float, z_max: float) -> List:
    """Building boxes beyond the sidewalk (outer edge at ``side * x_walk``) from z_min to z_max."""
    prims: List = []
    z = z_min
    while z < z_max:
        bl = rng.uniform(6.0, 20.0)
        setback = rng.uniform(0.0, 2.0)
        depth = rng.uniform(6.0, 12.0)
        bh = rng.uniform(6.0, 25.0)
        x_in = x_walk + setback
        xa, xb = sorted((side * x_in, side * (x_in + depth)))
        prims.append(Box((xa, cam_h - bh, z), (xb, cam_h, z + bl),
                         _material(rng, ("stripes", "checker", "noise", "plain"), (0.5, 2.5))))
        z += bl + rng.uniform(0.0, 4.0)
    return prims


def _parked_cars(rng, side: float, road: float, cam_h: float, z_min: float, z_max: float) -> List:
    """Cars parked along the kerb (a car with probability 0.6 at each slot)."""
    prims: List = []
    z = z_min + rng.uniform(0.0, 10.0)
    while z < z_max:
        if rng.random() < 0.6:
            cl = rng.uniform(3.8, 4.8)
            prims += _car(rng, side * (road - 1.1), z, cl, cam_h)
            z += cl + rng.uniform(1.0, 6.0)
        else:
            z += rng.uniform(4.0, 12.0)
    return prims


def _poles_and_trees(rng, side: float, road: float, cam_h: float, z_min: float, z_max: float) -> List:
    """Poles (cylinders) and trees (trunk cylinder, sphere crown) along the kerb."""
    prims: List = []
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
    return prims


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
