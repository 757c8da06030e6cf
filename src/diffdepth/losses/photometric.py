"""Photometric self-supervision (Monodepth2, Godard et al. 2019; DiffSQL Eqs. 12-15).

Pure functions on tensors, validated loudly:

* :func:`ssim` — SSIM index map (Wang et al. 2004) with 3x3 average pooling over a
  reflection-padded image, C1 = 0.01², C2 = 0.03² (images in [0,1]).
* :func:`photometric_error` — pe(a, b) = α·(1 − SSIM(a, b))/2 + (1 − α)·|a − b|₁, α = 0.85
  (DiffSQL Eq. 12), averaged over colour channels -> [B,1,H,W].
* :func:`min_reprojection` — per-pixel minimum over source frames plus auto-masking
  (Monodepth2 Sec. 3.3, DiffSQL Eq. 14): the error of the *un-warped* sources competes
  in the same minimum, with 1e-5 noise to break ties; pixels where an un-warped source
  wins are masked out (static camera, objects moving with the camera, textureless areas).
* :func:`edge_aware_smoothness` — |∂x d*| e^{−|∂x I|} + |∂y d*| e^{−|∂y I|} on the
  mean-normalised disparity d* = d / mean(d) (DiffSQL Eq. 13, Monodepth2 Eq. 3).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

#: SSIM stabilisers for images in [0,1] (K1 = 0.01, K2 = 0.03, dynamic range 1)
SSIM_C1 = 0.01 ** 2
SSIM_C2 = 0.03 ** 2


def _check_pair(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.dim() != 4 or a.shape != b.shape:
        raise ValueError(f"{what}: expected two [B,C,H,W] tensors of equal shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if not (a.is_floating_point() and b.is_floating_point()):
        raise ValueError(f"{what}: expected floating-point images, got {a.dtype} and {b.dtype}")


def ssim(x: torch.Tensor, y: torch.Tensor, c1: float = SSIM_C1, c2: float = SSIM_C2) -> torch.Tensor:
    """Per-pixel SSIM index [B,C,H,W] of two images [B,C,H,W] (3x3 windows, reflection pad).

    SSIM = (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)); the local
    moments are 3x3 box averages, so SSIM(x, x) = 1 exactly.
    """
    _check_pair(x, y, "ssim")
    if min(x.shape[-2:]) < 2:
        raise ValueError(f"ssim: images must be at least 2x2 for reflection padding, got {tuple(x.shape[-2:])}")
    x = F.pad(x, (1, 1, 1, 1), mode="reflect")
    y = F.pad(y, (1, 1, 1, 1), mode="reflect")
    mu_x = F.avg_pool2d(x, 3, 1)
    mu_y = F.avg_pool2d(y, 3, 1)
    sigma_x = F.avg_pool2d(x * x, 3, 1) - mu_x * mu_x
    sigma_y = F.avg_pool2d(y * y, 3, 1) - mu_y * mu_y
    sigma_xy = F.avg_pool2d(x * y, 3, 1) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (sigma_x + sigma_y + c2)
    return num / den


def photometric_error(pred: torch.Tensor, target: torch.Tensor, alpha: float = 0.85) -> torch.Tensor:
    """pe = α·clamp((1 − SSIM)/2, 0, 1) + (1 − α)·|pred − target|, channel mean -> [B,1,H,W]."""
    _check_pair(pred, target, "photometric_error")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"photometric_error: alpha must be in [0,1], got {alpha}")
    l1 = (pred - target).abs().mean(1, keepdim=True)
    if alpha == 0.0:
        return l1
    dssim = ((1.0 - ssim(pred, target)) / 2.0).clamp(0.0, 1.0).mean(1, keepdim=True)
    return alpha * dssim + (1.0 - alpha) * l1


def min_reprojection(target: torch.Tensor, warped: Sequence[torch.Tensor],
                     sources: Optional[Sequence[torch.Tensor]] = None, alpha: float = 0.85,
                     tie_noise: float = 1e-5, generator: Optional[torch.Generator] = None,
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Minimum photometric error over source frames, with auto-masking.

    target [B,C,H,W]; ``warped``: the sources warped into the target view; ``sources``: the
    same sources un-warped (None disables auto-masking). Returns ``(loss_map [B,1,H,W],
    mask [B,1,H,W] bool)``: ``loss_map`` is min over all candidates (Monodepth2 Sec. 3.3);
    ``mask`` is True where a warped source gives the minimum (μ of DiffSQL Eq. 14). At masked-out
    pixels ``loss_map`` holds the un-warped error, which carries no gradient to depth or pose,
    so ``loss_map.mean()`` is the Monodepth2 objective.
    """
    if len(warped) == 0:
        raise ValueError("min_reprojection: need at least one warped source frame")
    reproj = torch.cat([photometric_error(w, target, alpha) for w in warped], 1)  # [B,S,H,W]
    if sources is None:
        return reproj.min(1, keepdim=True)[0], torch.ones_like(reproj[:, :1], dtype=torch.bool)
    if len(sources) != len(warped):
        raise ValueError(f"min_reprojection: {len(warped)} warped but {len(sources)} un-warped sources")
    identity = torch.cat([photometric_error(s, target, alpha) for s in sources], 1)  # [B,S,H,W]
    if tie_noise:
        where = "cpu" if generator is not None else identity.device  # a seeded generator lives on the CPU
        noise = torch.randn(identity.shape, generator=generator, device=where, dtype=identity.dtype)
        noise = noise.to(identity.device)
        identity = identity + noise * tie_noise
    combined = torch.cat([identity, reproj], 1)  # [B,2S,H,W]
    loss, idx = combined.min(1, keepdim=True)
    return loss, idx >= identity.shape[1]


def edge_aware_smoothness(disp: torch.Tensor, image: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Edge-aware smoothness (DiffSQL Eq. 13) of disparity [B,1,H,W] against image [B,C,H,W].

    With ``normalize`` the disparity is first divided by its per-image mean (Monodepth2: this
    removes the trivial shrinking solution). Returns the scalar mean over x and y gradients.
    """
    if disp.dim() != 4 or disp.shape[1] != 1 or image.dim() != 4 or disp.shape[-2:] != image.shape[-2:] \
            or disp.shape[0] != image.shape[0]:
        raise ValueError(f"edge_aware_smoothness: expected disp [B,1,H,W] and image [B,C,H,W] of the same "
                         f"size, got {tuple(disp.shape)} and {tuple(image.shape)}")
    if normalize:
        disp = disp / (disp.mean((2, 3), keepdim=True) + 1e-7)
    dx = (disp[..., :, :-1] - disp[..., :, 1:]).abs()
    dy = (disp[..., :-1, :] - disp[..., 1:, :]).abs()
    ix = (image[..., :, :-1] - image[..., :, 1:]).abs().mean(1, keepdim=True)
    iy = (image[..., :-1, :] - image[..., 1:, :]).abs().mean(1, keepdim=True)
    return (dx * torch.exp(-ix)).mean() + (dy * torch.exp(-iy)).mean()
