"""Depth normalisers: metres <-> the [-1, 1] range the Stable Diffusion VAE expects.

Two normalisers share one interface (``encode(depth, valid) -> x``, ``decode(x) -> depth``):

* :class:`AffineNormalizer` (Marigold, Ke et al. 2024, Sec. 3.2): per image,
  ``d' = 2 (d - q2) / (q98 - q2) - 1`` with ``q2``/``q98`` the 2 %/98 % quantiles of the
  valid depths, clipped to [-1, 1]. The scale and shift are lost, so ``decode`` maps back to
  the unit range ``[0, 1]`` (the affine-invariant depth Marigold outputs).
* :class:`LogNormalizer` (MetricGold, Sec. "log-scaled depth representation"):
  ``d' = 2 log(d / d_min) / log(d_max / d_min) - 1``, clipped; its inverse
  ``d = d_min exp((d' + 1) / 2 · log(d_max / d_min))`` gives metres.

Both are stateless apart from their constructor arguments and work on ``[B,1,H,W]``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ...errors import ConfigError, InputError


def _check(depth: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
    if depth.dim() != 4 or depth.shape[1] != 1:
        raise InputError(f"depth must be [B,1,H,W], got {tuple(depth.shape)}")
    if valid is None:
        valid = torch.isfinite(depth) & (depth > 0)
    if valid.shape != depth.shape:
        raise InputError(f"valid mask {tuple(valid.shape)} does not match depth {tuple(depth.shape)}")
    return valid.bool() & torch.isfinite(depth)


class AffineNormalizer:
    """Marigold's affine-invariant normaliser (quantiles of valid depth -> [-1, 1])."""

    kind = "affine"

    def __init__(self, q_low: float = 0.02, q_high: float = 0.98, eps: float = 1e-6):
        if not 0.0 <= q_low < q_high <= 1.0:
            raise ConfigError(f"quantiles must satisfy 0 <= q_low < q_high <= 1, got {q_low}, {q_high}")
        self.q_low, self.q_high, self.eps = float(q_low), float(q_high), float(eps)

    def config(self) -> dict:
        return {"normalizer": self.kind, "q_low": self.q_low, "q_high": self.q_high}

    def quantiles(self, depth: torch.Tensor, valid: Optional[torch.Tensor] = None):
        """Per-image (q_low, q_high) over valid pixels -> two tensors [B,1,1,1]."""
        valid = _check(depth, valid)
        lows, highs = [], []
        q = torch.tensor([self.q_low, self.q_high], dtype=torch.float32, device=depth.device)
        for d, m in zip(depth, valid):
            values = d[m].float()
            if values.numel() == 0:  # no valid pixel: any range works, the loss masks it all out
                lows.append(depth.new_zeros(()).float())
                highs.append(depth.new_ones(()).float())
                continue
            if values.numel() > 2**24 - 1:  # torch.quantile's size limit: subsample evenly
                values = values[:: values.numel() // (2**24 - 1) + 1]
            lo, hi = torch.quantile(values, q)
            lows.append(lo)
            highs.append(hi)
        shape = (depth.shape[0], 1, 1, 1)
        return torch.stack(lows).view(shape), torch.stack(highs).view(shape)

    def encode(self, depth: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[B,1,H,W] depth (any unit) -> [B,1,H,W] in [-1, 1]; invalid pixels become -1."""
        valid = _check(depth, valid)
        lo, hi = self.quantiles(depth, valid)
        x = 2.0 * (depth.float() - lo) / (hi - lo).clamp(min=self.eps) - 1.0
        x = torch.where(valid, x, torch.full_like(x, -1.0))
        return x.clamp(-1.0, 1.0).to(depth.dtype)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> affine-invariant depth in [0, 1] (Marigold's output convention)."""
        return (x.clamp(-1.0, 1.0) + 1.0) / 2.0


class LogNormalizer:
    """MetricGold's log-depth normaliser: metres <-> [-1, 1] through log(d / d_min)."""

    kind = "log"

    def __init__(self, d_min: float = 0.1, d_max: float = 100.0):
        if not (d_min > 0 and d_max > d_min and math.isfinite(d_max)):
            raise ConfigError(f"log normaliser needs 0 < d_min < d_max < inf, got d_min={d_min}, d_max={d_max}")
        self.d_min, self.d_max = float(d_min), float(d_max)
        self.log_range = math.log(self.d_max / self.d_min)

    def config(self) -> dict:
        return {"normalizer": self.kind, "d_min": self.d_min, "d_max": self.d_max}

    def encode(self, depth: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[B,1,H,W] metres -> [-1, 1]; depths outside [d_min, d_max] clip, invalid pixels become -1."""
        valid = _check(depth, valid)
        d = torch.where(valid, depth.float(), torch.full_like(depth, self.d_min, dtype=torch.float32))
        x = 2.0 * torch.log(d.clamp(min=self.d_min) / self.d_min) / self.log_range - 1.0
        return x.clamp(-1.0, 1.0).to(depth.dtype)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> metres in [d_min, d_max]."""
        x = x.float().clamp(-1.0, 1.0)
        return self.d_min * torch.exp((x + 1.0) / 2.0 * self.log_range)
