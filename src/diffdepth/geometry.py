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


def depth_to_disparity(depth, invalid: float = 0.0):
    """``1/depth`` where ``depth > 0``, else ``invalid`` (0, or NaN to keep "no value" apart from
    "far"); numpy (float64 unless float32 in) or torch. NaN depth is invalid. Its own inverse."""
    if isinstance(depth, torch.Tensor):
        ok = depth > 0
        return torch.where(ok, 1.0 / torch.where(ok, depth, 1.0), invalid)
    depth = np.asarray(depth)
    depth = depth if depth.dtype == np.float32 else depth.astype(np.float64)
    ok = depth > 0
    with np.errstate(invalid="ignore"):
        return np.where(ok, 1.0 / np.where(ok, depth, 1.0), np.asarray(invalid, depth.dtype))


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


# ---------------------------------------------------------------------------------------------
# Rigid motion and view synthesis for self-supervised training (Monodepth2, Godard et al. 2019,
# Sec. 3; Zhou et al. 2017). Appended by the DiffSQL engineer; the functions above are reused.


def skew(v: torch.Tensor) -> torch.Tensor:
    """Cross-product matrix [v]x: v [...,3] -> [...,3,3] with [v]x @ u == v x u."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], -1).reshape(*v.shape[:-1], 3, 3)


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula: axis-angle v [...,3] (angle = |v|, axis = v/|v|) -> rotation [...,3,3].

    R = I + (sin θ / θ) [v]x + ((1 − cos θ) / θ²) [v]x², with the Taylor series of both
    coefficients near θ = 0 so the map is exact and differentiable at the identity.
    """
    theta2 = (axis_angle * axis_angle).sum(-1, keepdim=True).unsqueeze(-1)  # [...,1,1]
    small = theta2 < 1e-6
    theta2_safe = torch.where(small, torch.ones_like(theta2), theta2)
    theta = theta2_safe.sqrt()
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta2_safe)
    k = skew(axis_angle)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(k)
    return eye + a * k + b * (k @ k)


def pose_to_matrix(axis_angle: torch.Tensor, translation: torch.Tensor, invert: bool = False) -> torch.Tensor:
    """axis-angle [B,3] + translation [B,3] -> 4x4 rigid transform [B,4,4] ``[[R, t], [0, 1]]``.

    ``invert=True`` returns the inverse ``[[Rᵀ, −Rᵀt], [0, 1]]`` (Monodepth2 predicts the pose of
    the earlier frame relative to the later one, so the transform towards frame −1 is inverted).
    """
    if axis_angle.shape[-1] != 3 or translation.shape[-1] != 3:
        raise ValueError(f"axis_angle and translation must end in 3, got {tuple(axis_angle.shape)}, {tuple(translation.shape)}")
    rot = axis_angle_to_matrix(axis_angle.reshape(-1, 3))  # [B,3,3]
    t = translation.reshape(-1, 3, 1)  # [B,3,1]
    if invert:
        rot = rot.transpose(1, 2)
        t = -rot @ t
    out = torch.zeros(rot.shape[0], 4, 4, dtype=rot.dtype, device=rot.device)
    out[:, :3, :3] = rot
    out[:, :3, 3:] = t
    out[:, 3, 3] = 1.0
    return out


def pixels_to_grid(pix: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel coordinates [B,2,H*W] (integer pixel centres, as :func:`pixel_grid`) -> a
    ``grid_sample`` grid [B,H,W,2] in [-1,1] for ``align_corners=True`` (pixel 0 -> −1,
    pixel W−1 -> +1)."""
    b = pix.shape[0]
    x = pix[:, 0] / max(width - 1, 1) * 2.0 - 1.0
    y = pix[:, 1] / max(height - 1, 1) * 2.0 - 1.0
    return torch.stack([x, y], -1).reshape(b, height, width, 2)


def warp_to_target(source: torch.Tensor, depth: torch.Tensor, K: torch.Tensor, T: torch.Tensor,
                   padding_mode: str = "border") -> Tuple[torch.Tensor, torch.Tensor]:
    """Synthesise the target view from a source frame (Monodepth2 Eq. 2 / Zhou et al. 2017).

    source [B,C,H,W]; depth [B,1,H,W] of the *target* frame; K [B,3,3] (or [3,3]) at this
    resolution; T [B,4,4] maps target-camera points to source-camera points. Each target pixel
    is back-projected with K⁻¹ and its depth, moved by T, projected with K, and the source is
    sampled there bilinearly (``grid_sample``, ``align_corners=True`` to match integer pixel
    centres, ``padding_mode`` border by default). Returns the warped image [B,C,H,W] and a
    bool mask [B,1,H,W] of pixels that land inside the source with positive depth.
    """
    import torch.nn.functional as F

    b, _, h, w = depth.shape
    if source.shape[0] != b or source.shape[-2:] != (h, w):
        raise ValueError(f"source {tuple(source.shape)} and depth {tuple(depth.shape)} disagree")
    if K.dim() == 2:
        K = K.unsqueeze(0).expand(b, 3, 3)
    K = K.to(depth.dtype)
    points = backproject(depth, torch.linalg.inv(K))  # [B,3,HW] in the target camera
    pix, z = project(points, K, T.to(depth.dtype))  # [B,2,HW], [B,1,HW] in the source camera
    grid = pixels_to_grid(pix, h, w)  # [B,H,W,2]
    warped = F.grid_sample(source, grid.to(source.dtype), mode="bilinear", padding_mode=padding_mode,
                           align_corners=True)  # [B,C,H,W]
    inside = (grid.abs() <= 1.0 + 1e-4).all(-1)  # slack for round-off at the border
    inside = inside.unsqueeze(1) & (z.reshape(b, 1, h, w) > 0)
    return warped, inside


# ---------------------------------------------------------------------------------------------
# Depth maps moved between the frames of a posed sequence (the temporal consistency metric).


def relative_pose(cam_to_world_a: np.ndarray, cam_to_world_b: np.ndarray) -> np.ndarray:
    """4x4 transform taking camera-a points to camera-b points: ``inv(T_b) @ T_a`` for
    camera-to-world poses ``T_a``, ``T_b``."""
    return np.linalg.inv(np.asarray(cam_to_world_b, np.float64)) @ np.asarray(cam_to_world_a, np.float64)


def reproject_depth(depth: np.ndarray, K: np.ndarray, a_to_b: np.ndarray,
                    mask: Optional[np.ndarray] = None, K_b: Optional[np.ndarray] = None) -> np.ndarray:
    """Planar depth of frame a [H,W] as seen from frame b: each pixel with depth > 0 (and
    ``mask``) is back-projected with ``K``, moved by ``a_to_b`` (4x4), projected with ``K_b``
    (default ``K``) and rounded to the nearest pixel of b; where several land on one pixel the
    nearest (smallest z) wins. Returns [H,W] float64, 0 where nothing lands or z <= 0."""
    depth = np.asarray(depth, dtype=np.float64)
    h, w = depth.shape
    keep = np.isfinite(depth) & (depth > 0)
    if mask is not None:
        keep &= np.asarray(mask, dtype=bool).reshape(h, w)
    ys, xs = np.nonzero(keep)
    z = depth[ys, xs]
    K = np.asarray(K, np.float64)
    K_b = K if K_b is None else np.asarray(K_b, np.float64)
    rays = np.linalg.inv(K) @ np.stack([xs, ys, np.ones_like(xs)]).astype(np.float64)  # [3,N]
    T = np.asarray(a_to_b, np.float64)
    pts = T[:3, :3] @ (rays * z) + T[:3, 3:]
    zb = pts[2]
    front = zb > 0
    pix = K_b @ pts[:, front]
    u = np.round(pix[0] / pix[2]).astype(np.int64)
    v = np.round(pix[1] / pix[2]).astype(np.int64)
    zb = zb[front]
    inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
    out = np.full(h * w, np.inf)
    np.minimum.at(out, v[inside] * w + u[inside], zb[inside])
    out[~np.isfinite(out)] = 0.0
    return out.reshape(h, w)
