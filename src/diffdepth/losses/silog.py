"""Scale-invariant logarithmic loss (SiLog).

Eigen et al., "Depth Map Prediction from a Single Image using a Multi-Scale Deep Network"
(NeurIPS 2014), Eq. 4, in the square-root form used by BTS, AdaBins, VPD and ECoDepth::

    g_i = log d̂_i - log d_i   over valid pixels i
    L   = sqrt( mean(g^2) - lambda * mean(g)^2 )

lambda = 0 gives the RMS log error, lambda = 1 a fully scale-invariant error;
VPD uses 0.5, ECoDepth 0.85. With ``per_image=False`` (VPD) the means pool every valid
pixel of the batch; with ``per_image=True`` L is computed per image and averaged.

Computed as ``mean((g - mean g)^2) + (1 - lambda) mean(g)^2`` (the same quantity) so that
float32 does not lose it to cancellation when lambda is near 1.
"""
from __future__ import annotations

import torch


def silog_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
               lam: float = 0.85, per_image: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """SiLog of ``pred`` vs ``target`` (both [B,1,H,W] or [B,H,W], metres) over ``mask`` (bool).

    Predictions are clamped to ``eps`` before the log; targets inside the mask must be > 0.
    Raises ValueError on mismatched shapes, a non-bool mask, an empty mask or lam outside [0, 1].
    """
    if pred.shape != target.shape:
        raise ValueError(f"silog_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if mask is None:
        mask = target > 0
    if mask.shape != pred.shape:
        raise ValueError(f"silog_loss: mask {tuple(mask.shape)} does not match pred {tuple(pred.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"silog_loss: mask must be bool, got {mask.dtype}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"silog_loss: lambda {lam} must lie in [0, 1]")
    if not bool(mask.any()):
        raise ValueError("silog_loss: the mask selects no pixel")
    if bool((target[mask] <= 0).any()):
        raise ValueError("silog_loss: target depth must be > 0 inside the mask")
    safe_target = torch.where(mask, target.float(), torch.ones_like(target, dtype=torch.float32))
    g = torch.where(mask, torch.log(pred.float().clamp_min(eps)) - torch.log(safe_target),
                    torch.zeros_like(pred, dtype=torch.float32))  # log-ratio on valid pixels, 0 elsewhere
    m = mask.float()
    if per_image:
        dims = tuple(range(1, g.ndim))
        n = m.sum(dims)
        keep = n > 0
        mean_g = g.sum(dims) / n.clamp_min(1)
        centred = (g - mean_g.view(-1, *([1] * (g.ndim - 1)))) * m
        value = (centred * centred).sum(dims) / n.clamp_min(1) + (1.0 - lam) * mean_g * mean_g
        return value[keep].clamp_min(1e-12).sqrt().mean()
    n = m.sum()
    mean_g = g.sum() / n
    centred = (g - mean_g) * m
    return ((centred * centred).sum() / n + (1.0 - lam) * mean_g * mean_g).clamp_min(1e-12).sqrt()

