"""Losses in the VAE latent space (Marigold / MetricGold training).

* :func:`latent_valid_mask` — a latent pixel is valid only if every image pixel it covers is:
  the invalid mask is max-pooled over ``factor``×``factor`` windows (8 for SD's VAE) and
  inverted (Marigold, Ke et al. 2024, Sec. 3.2 "we mask invalid pixels").
* :func:`masked_latent_mse` — mean squared error over valid latent positions and all channels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def latent_valid_mask(valid: torch.Tensor, factor: int = 8) -> torch.Tensor:
    """[B,1,H,W] bool pixel mask -> [B,1,H/f,W/f] bool latent mask (all covered pixels valid)."""
    if valid.dim() != 4 or valid.shape[1] != 1:
        raise ValueError(f"valid mask must be [B,1,H,W], got {tuple(valid.shape)}")
    H, W = valid.shape[-2:]
    if H % factor or W % factor:
        raise ValueError(f"mask size {H}x{W} is not a multiple of the latent factor {factor}")
    invalid = (~valid.bool()).float()
    return F.max_pool2d(invalid, kernel_size=factor, stride=factor) < 0.5


def masked_latent_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of (pred − target)² over valid latent positions (mask [B,1,h,w], broadcast over channels).

    Raises when shapes disagree; an all-invalid batch gives a zero loss that still carries
    gradients (so a step with no valid pixel is a no-op, not a crash).
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    err = (pred.float() - target.float()) ** 2
    if mask is None:
        return err.mean()
    if mask.dim() != 4 or mask.shape[0] != pred.shape[0] or mask.shape[-2:] != pred.shape[-2:]:
        raise ValueError(f"mask {tuple(mask.shape)} does not fit prediction {tuple(pred.shape)}")
    m = mask.to(err.dtype).expand_as(err)
    count = m.sum()
    return (err * m).sum() / count.clamp(min=1.0)
