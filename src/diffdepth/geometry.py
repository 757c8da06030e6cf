"""Camera geometry: intrinsics, back-projection, projection, depth <-> disparity, point clouds.

Conventions: pinhole camera, +x right, +y down, +z forward (OpenCV). Intrinsics ``K``
are 3x3 in pixels. Depth is planar (z), not distance to the camera centre.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import torch

#: field of view used when neither a focal length nor EXIF data is given (degrees, horizontal)
DEFAULT_FOV_DEG = 60.0


def intrinsics_from_fov(width: int, height: int, fov_deg: float = DEFAULT_FOV_DEG) -> np.ndarray:
    """K for a horizontal field of view, principal point at the image centre."""
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"field of view must be in (0, 180) degrees, got {fov_deg}")
    f = 0.5 * width / math.tan(math.radians(fov_deg) / 2.0)
    return intrinsics_from_focal(width, height, f)


def intrinsics_from_focal(width: int, height: int, focal_px: float) -> np.ndarray:
    if not focal_px > 0:
        raise ValueError(f"focal length must be positive, got {focal_px}")
    return np.array([[focal_px, 0.0, width / 2.0], [0.0, focal_px, height / 2.0], [0.0, 0.0, 1.0]])


def scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Intrinsics after resizing the image by (sx, sy)."""
    K = np.array(K, dtype=np.float64, copy=True)
    K[0] *= sx
    K[1] *= sy
    return K


def pixel_grid(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Homogeneous pixel coordinates [3, H*W] (x, y, 1), pixel centres at integers."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=dtype),
                            torch.arange(width, device=device, dtype=dtype), indexing="ij")
    ones = torch.ones_like(xs)
    return torch.stack([xs, ys, ones], 0).reshape(3, -1)


def backproject(depth: torch.Tensor, K_inv: torch.Tensor) -> torch.Tensor:
    """depth [B,1,H,W], K_inv [B,3,3] -> camera points [B,3,H*W]."""
    b, _, h, w = depth.shape
    pix = pixel_grid(h, w, depth.device, depth.dtype)  # [3,HW]
    rays = K_inv @ pix.unsqueeze(0)  # [B,3,HW]
    return rays * depth.reshape(b, 1, -1)


def project(points: torch.Tensor, K: torch.Tensor, T: Optional[torch.Tensor] = None,
            eps: float = 1e-7) -> Tuple[torch.Tensor, torch.Tensor]:
    """points [B,3,N] -> pixels [B,2,N] and depth [B,1,N] after the rigid transform T [B,4,4]."""
    if T is not None:
        points = T[:, :3, :3] @ points + T[:, :3, 3:]
    cam = K @ points
    z = cam[:, 2:3]
    return cam[:, :2] / (z + eps), z


def depth_to_disparity(depth, eps: float = 1e-8):
    """1/depth where depth > 0, else 0 (numpy or torch)."""
    if isinstance(depth, torch.Tensor):
        return torch.where(depth > eps, 1.0 / depth.clamp_min(eps), torch.zeros_like(depth))
    depth = np.asarray(depth)
    out = np.zeros_like(depth, dtype=np.float64 if depth.dtype == np.float64 else np.float32)
    mask = depth > eps
    out[mask] = 1.0 / depth[mask]
    return out


disparity_to_depth = depth_to_disparity  # the map is its own inverse


def depth_to_points(depth: np.ndarray, K: np.ndarray, mask: Optional[np.ndarray] = None) -> np.ndarray:
    """Planar depth [H,W] + K -> points [N,3] (float32) for pixels with depth > 0 (and ``mask``)."""
    depth = np.asarray(depth, dtype=np.float64)
    h, w = depth.shape
    keep = np.isfinite(depth) & (depth > 0)
    if mask is not None:
        keep &= np.asarray(mask, dtype=bool)
    ys, xs = np.nonzero(keep)
    z = depth[ys, xs]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    # pixel centres: index i covers [i, i+1), centre at i + 0.5 in a continuous frame whose
    # principal point is W/2; we use integer pixel coordinates with cx = W/2 as OpenCV does
    x = (xs - cx) / fx * z
    y = (ys - cy) / fy * z
    return np.stack([x, y, z], 1).astype(np.float32)


def distance_to_planar_depth(distance: np.ndarray, focal_px: float) -> np.ndarray:
    """Convert distance to the camera centre (e.g. Hypersim) to planar depth z.

    For pixel (u, v) relative to the image centre, z = r * f / sqrt(u^2 + v^2 + f^2),
    with u, v measured to pixel centres.
    """
    h, w = distance.shape[-2:]
    u = np.arange(w) - (w - 1) / 2.0
    v = np.arange(h) - (h - 1) / 2.0
    uu, vv = np.meshgrid(u, v)
    return distance * focal_px / np.sqrt(uu ** 2 + vv ** 2 + focal_px ** 2)
