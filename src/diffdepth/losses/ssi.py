"""Scale-and-shift-invariant MSE in pixel space (PrimeDepth Eq. 3, after MiDaS, Ranftl et al. 2020).

Pure functions on tensors, validated loudly:

* :func:`normalize_target` — d* = (d − t(d)) / s(d) with t(d) = median(d) and
  s(d) = mean |d − t(d)| over the valid pixels of each image (PrimeDepth Sec. 3.4).
* :func:`align_least_squares` — per-image scale a and shift b minimising
  Σ_valid (a·p + b − d*)² (the evaluation's closed form, differentiable in p).
* :func:`ssi_mse_loss` — L_ssi = MSE(d*, α(d*, p̂)) over valid pixels, averaged over images.

Images with fewer than two valid pixels are left out of the batch mean; a batch with no
usable image raises ``ValueError`` (an empty mask is a data bug, not a zero loss).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..evaluation.alignment import scale_shift


def _check(pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor], what: str) -> torch.Tensor:
    if pred.dim() != 4 or pred.shape[1] != 1:
        raise ValueError(f"{what}: expected pred [B,1,H,W], got {tuple(pred.shape)}")
    if target.shape != pred.shape:
        raise ValueError(f"{what}: target {tuple(target.shape)} does not match pred {tuple(pred.shape)}")
    if not (pred.is_floating_point() and target.is_floating_point()):
        raise ValueError(f"{what}: expected floating-point pred and target, got {pred.dtype} and {target.dtype}")
    if mask is None:
        mask = torch.isfinite(target)
    else:
        if mask.shape != pred.shape:
            raise ValueError(f"{what}: mask {tuple(mask.shape)} does not match pred {tuple(pred.shape)}")
        if mask.dtype != torch.bool:
            raise ValueError(f"{what}: mask must be bool, got {mask.dtype}")
        mask = mask & torch.isfinite(target)
    if not bool(mask.any()):
        raise ValueError(f"{what}: the valid mask is empty for the whole batch")
    return mask


def normalize_target(target: torch.Tensor, mask: Optional[torch.Tensor] = None, eps: float = 1e-8
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Median / mean-absolute-deviation normalisation per image.

    ``target [B,1,H,W]``, ``mask`` bool ``[B,1,H,W]`` -> ``(d*, usable)`` where ``d*`` has the
    target's shape (0 at invalid pixels) and ``usable [B]`` marks images with >= 2 valid
    pixels and a non-zero deviation. The median of an even count is the lower middle
    value (``torch.median``), as in MiDaS' reference code.
    """
    mask = _check(target, target, mask, "normalize_target")
    b = target.shape[0]
    out = torch.zeros_like(target, dtype=torch.float32)
    usable = torch.zeros(b, dtype=torch.bool, device=target.device)
    for i in range(b):
        m = mask[i]
        vals = target[i][m].float()  # [n]
        if vals.numel() < 2:
            continue
        t = vals.median()
        s = (vals - t).abs().mean()
        if s <= eps:
            continue
        out[i][m] = (vals - t) / s
        usable[i] = True
    return out, usable


def align_least_squares(pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares scale/shift of ``pred`` onto ``target`` per image
    (:func:`diffdepth.evaluation.alignment.scale_shift`; gradients flow through the closed form).

    Returns ``(aligned [B,1,H,W], scale [B], shift [B])`` with ``aligned = scale·pred + shift``;
    a constant prediction gets scale 0 and shift = mean target.
    """
    mask = _check(pred, target, mask, "align_least_squares")
    scale, shift = scale_shift(pred.flatten(1), target.flatten(1), mask.flatten(1))
    aligned = scale.view(-1, 1, 1, 1) * pred.to(scale.dtype) + shift.view(-1, 1, 1, 1)
    return aligned, scale, shift


def ssi_mse_loss(pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """PrimeDepth Eq. 3: ``MSE(d*, α(d*, pred))`` over valid pixels, mean over usable images.

    ``pred`` and ``target`` are ``[B,1,H,W]`` in the same space (PrimeDepth: disparity);
    ``mask`` bool ``[B,1,H,W]`` (default: finite target).
    """
    mask = _check(pred, target, mask, "ssi_mse_loss")
    d_star, usable = normalize_target(target, mask)
    if not bool(usable.any()):
        raise ValueError("ssi_mse_loss: no image has two or more distinct valid target values")
    aligned, _, _ = align_least_squares(pred, d_star, mask)
    m = mask.float()
    per_image = ((aligned - d_star) ** 2 * m).sum((1, 2, 3)) / m.sum((1, 2, 3)).clamp_min(1.0)
    return per_image[usable].mean()
