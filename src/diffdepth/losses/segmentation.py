"""Segmentation regulariser losses and PrimeDepth's dynamic loss weighting (PrimeDepth Eqs. 4-5).

* :func:`dice_loss` — 1 − (1/C) Σ_c (2 Σ_i y*_ic ŷ_ic + s) / (Σ_i (y*_ic + ŷ_ic) + s) per image,
  ŷ = softmax probabilities, y* one-hot labels, ignored pixels left out; ``s`` (default 1) is
  the usual smoothing term so classes absent from both label and prediction count as solved.
  Averaged over images.
* :func:`focal_loss` — mean over valid pixels of −(1 − p_t)^γ log p_t, p_t = probability of
  the true class (Lin et al. 2017), γ = 2. (Eq. 4 writes a sum over pixels; we take the mean
  so the loss does not grow with the resolution.)
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


def dice_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX,
              smooth: float = 1.0) -> torch.Tensor:
    """Soft multi-class Dice loss (Eq. 4, left) from ``logits [B,C,H,W]`` and ``labels [B,(1,)H,W]``."""
    labels = _check(logits, labels, "dice_loss", ignore_index)
    c = logits.shape[1]
    valid = (labels != ignore_index).unsqueeze(1).float()  # [B,1,H,W]
    probs = torch.softmax(logits.float(), dim=1) * valid  # [B,C,H,W]
    onehot = F.one_hot(labels.clamp(0, c - 1), c).permute(0, 3, 1, 2).float() * valid  # [B,C,H,W]
    inter = (probs * onehot).sum((2, 3))  # [B,C]
    denom = (probs + onehot).sum((2, 3))  # [B,C]
    dice = (2.0 * inter + smooth) / (denom + smooth)
    return 1.0 - dice.mean()


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0,
               ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Focal loss (Eq. 4, right), mean over non-ignored pixels."""
    labels = _check(logits, labels, "focal_loss", ignore_index)
    valid = labels != ignore_index  # [B,H,W]
    logp = torch.log_softmax(logits.float(), dim=1)  # [B,C,H,W]
    logp_t = logp.gather(1, labels.clamp(0, logits.shape[1] - 1).unsqueeze(1))[:, 0]  # [B,H,W]
    p_t = logp_t.exp()
    loss = -((1.0 - p_t) ** gamma) * logp_t
    return loss[valid].mean()


def dynamic_weighting(seg_loss: torch.Tensor, depth_loss: torch.Tensor, eps: float = 1e-12
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eq. 5: ``(L, λ)`` with L = seg + λ·depth and λ = stopgrad(seg / depth)."""
    lam = (seg_loss.detach() / depth_loss.detach().clamp_min(eps))
    return seg_loss + lam * depth_loss, lam


def primedepth_loss(depth_loss: torch.Tensor, seg_logits: Optional[torch.Tensor] = None,
                    seg_labels: Optional[torch.Tensor] = None, gamma: float = 2.0,
                    ignore_index: int = IGNORE_INDEX) -> dict:
    """The full objective: depth only when no segmentation labels, else Eq. 5. Returns the terms."""
    if seg_logits is None or seg_labels is None:
        return {"loss": depth_loss, "ssi": depth_loss.detach()}
    dice = dice_loss(seg_logits, seg_labels, ignore_index)
    focal = focal_loss(seg_logits, seg_labels, gamma, ignore_index)
    total, lam = dynamic_weighting(dice + focal, depth_loss)
    return {"loss": total, "ssi": depth_loss.detach(), "dice": dice.detach(), "focal": focal.detach(), "lambda": lam}
