"""Segmentation regulariser losses and PrimeDepth's dynamic loss weighting (PrimeDepth Eqs. 4-5).

* :func:`dice_loss` — 1 − (1/C) Σ_c (2 Σ_i y*_ic ŷ_ic + s) / (Σ_i (y*_ic + ŷ_ic) + s) per image,
  ŷ = softmax probabilities, y* one-hot labels, ignored pixels left out, averaged over images.
  Eq. 4 as printed has no smoothing: ``smooth=0`` (default), so every class absent from an
  image's labels contributes a Dice of 0 (a loss of 1/C). ``smooth=1`` is the common variant
  in which classes absent from both label and prediction count as solved.
* :func:`focal_loss` — −(1 − p_t)^γ log p_t, p_t = probability of the true class (Lin et al.
  2017), γ = 2. Eq. 4 as printed *sums* over the h·w pixels of an image: ``reduction="sum"``
  (default; sum over non-ignored pixels divided by the batch size, i.e. the mean over images
  of the per-image sums). ``reduction="mean"`` (mean over non-ignored pixels) keeps the loss
  independent of the resolution.
* :func:`dynamic_weighting` — L = L_dice + L_focal + λ·L_ssi with λ = sg((L_dice + L_focal) / L_ssi)
  (Eq. 5): the depth term is rescaled to the size of the segmentation term, but its gradient
  keeps the direction of ∇L_ssi.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255


def _check(logits: torch.Tensor, labels: torch.Tensor, what: str, ignore_index: int) -> torch.Tensor:
    if logits.dim() != 4:
        raise ValueError(f"{what}: expected logits [B,C,H,W], got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"{what}: logits must be floating point, got {logits.dtype}")
    if labels.dim() == 4:
        if labels.shape[1] != 1:
            raise ValueError(f"{what}: expected labels [B,H,W] or [B,1,H,W], got {tuple(labels.shape)}")
        labels = labels[:, 0]
    if labels.shape != (logits.shape[0],) + tuple(logits.shape[2:]):
        raise ValueError(f"{what}: labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"{what}: labels must be an integer class map, got {labels.dtype}")
    labels = labels.long()
    valid = labels != ignore_index
    c = logits.shape[1]
    bad = valid & ((labels < 0) | (labels >= c))
    if bool(bad.any()):
        raise ValueError(f"{what}: label values must be in [0, {c - 1}] or {ignore_index} (ignore); "
                         f"found {int(labels[bad][0])}")
    if not bool(valid.any()):
        raise ValueError(f"{what}: every pixel is ignored")
    return labels


#: how each regulariser term may be reduced; the first is Eq. 4 as printed
FOCAL_REDUCTIONS = ("sum", "mean")


def dice_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX,
              smooth: float = 0.0) -> torch.Tensor:
    """Soft multi-class Dice loss (Eq. 4, left) from ``logits [B,C,H,W]`` and ``labels [B,(1,)H,W]``.

    ``smooth=0`` is the paper's form; the denominator is kept >= 1e-12 so a class with no
    probability mass and no label gives 0, not NaN.
    """
    if smooth < 0:
        raise ValueError(f"dice_loss: smooth must be >= 0, got {smooth}")
    labels = _check(logits, labels, "dice_loss", ignore_index)
    c = logits.shape[1]
    valid = (labels != ignore_index).unsqueeze(1).float()  # [B,1,H,W]
    probs = torch.softmax(logits.float(), dim=1) * valid  # [B,C,H,W]
    onehot = F.one_hot(labels.clamp(0, c - 1), c).permute(0, 3, 1, 2).float() * valid  # [B,C,H,W]
    inter = (probs * onehot).sum((2, 3))  # [B,C]
    denom = (probs + onehot).sum((2, 3))  # [B,C]
    dice = (2.0 * inter + smooth) / (denom + smooth).clamp_min(1e-12)
    return 1.0 - dice.mean()


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0,
               ignore_index: int = IGNORE_INDEX, reduction: str = "sum") -> torch.Tensor:
    """Focal loss (Eq. 4, right): ``sum`` over an image's non-ignored pixels (the paper; mean over
    images) or ``mean`` over all non-ignored pixels."""
    if reduction not in FOCAL_REDUCTIONS:
        raise ValueError(f"focal_loss: reduction must be one of {FOCAL_REDUCTIONS}, got {reduction!r}")
    labels = _check(logits, labels, "focal_loss", ignore_index)
    valid = labels != ignore_index  # [B,H,W]
    logp = torch.log_softmax(logits.float(), dim=1)  # [B,C,H,W]
    logp_t = logp.gather(1, labels.clamp(0, logits.shape[1] - 1).unsqueeze(1))[:, 0]  # [B,H,W]
    p_t = logp_t.exp()
    loss = -((1.0 - p_t) ** gamma) * logp_t
    if reduction == "sum":
        return loss[valid].sum() / logits.shape[0]
    return loss[valid].mean()


def dynamic_weighting(seg_loss: torch.Tensor, depth_loss: torch.Tensor, eps: float = 1e-12
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eq. 5: ``(L, λ)`` with L = seg + λ·depth and λ = stopgrad(seg / depth)."""
    lam = (seg_loss.detach() / depth_loss.detach().clamp_min(eps))
    return seg_loss + lam * depth_loss, lam


def primedepth_loss(depth_loss: torch.Tensor, seg_logits: Optional[torch.Tensor] = None,
                    seg_labels: Optional[torch.Tensor] = None, gamma: float = 2.0,
                    ignore_index: int = IGNORE_INDEX, dice_smooth: float = 0.0,
                    focal_reduction: str = "sum") -> dict:
    """The full objective: depth only when no segmentation labels, else Eq. 5. Returns the terms.

    Defaults are Eq. 4 as printed (Dice without smoothing, focal summed over pixels);
    ``dice_smooth=1, focal_reduction="mean"`` is the resolution-independent variant.
    """
    if seg_logits is None or seg_labels is None:
        return {"loss": depth_loss, "ssi": depth_loss.detach()}
    dice = dice_loss(seg_logits, seg_labels, ignore_index, smooth=dice_smooth)
    focal = focal_loss(seg_logits, seg_labels, gamma, ignore_index, reduction=focal_reduction)
    total, lam = dynamic_weighting(dice + focal, depth_loss)
    return {"loss": total, "ssi": depth_loss.detach(), "dice": dice.detach(), "focal": focal.detach(), "lambda": lam}
