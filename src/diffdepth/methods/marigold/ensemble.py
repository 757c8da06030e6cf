"""Test-time ensembling of several denoising runs (Marigold, Ke et al. 2024, Sec. 3.3).

Affine-invariant members (:func:`ensemble_affine`): each member i gets a scale s_i and a
shift t_i chosen to minimise

    Σ_{i<j} RMS(s_i d_i + t_i − s_j d_j − t_j) + λ (|min m| + |1 − max m|),   λ = 0.02,

where m is the reduced (median or mean) aligned map; the regulariser pins m to [0, 1]
(it also rules out the trivial solution s = 0). The objective is minimised with BFGS
(scipy, numerical gradients) on maps downsampled to at most ``max_res`` pixels per side,
starting from s_i = 1/(max − min), t_i = −s_i·min. With Marigold's defaults (2 BFGS
iterations, tol 1e-3) this reproduces the published checkpoints' ensembling. The result is
reduced (median: uncertainty = median absolute deviation; mean: uncertainty = standard
deviation) and rescaled to [0, 1] (uncertainty by the same factor).

Metric members (:func:`ensemble_log`): no alignment — depth in metres is not ambiguous —
so members are reduced in log space (the space the MetricGold normaliser is linear in):
median/mean of log d, exponentiated. The uncertainty is the MAD / std of log d (relative)
times the depth: a first-order uncertainty in metres.
"""
from __future__ import annotations

from itertools import combinations
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import InputError

REDUCTIONS = ("median", "mean")


def _reduce(x: torch.Tensor, reduction: str, with_uncertainty: bool):
    """Reduce over members (dim 0). Median = lower middle value for even counts (torch)."""
    if reduction == "median":
        m = torch.median(x, dim=0, keepdim=True).values
        u = torch.median(torch.abs(x - m), dim=0, keepdim=True).values if with_uncertainty else None
    elif reduction == "mean":
        m = torch.mean(x, dim=0, keepdim=True)
        u = torch.std(x, dim=0, keepdim=True) if with_uncertainty else None
    else:
        raise InputError(f"unknown reduction {reduction!r}; use median or mean")
    return m, u


def _shrink(depth: torch.Tensor, max_res: Optional[int]) -> torch.Tensor:
    """Nearest-neighbour downsampling so that the longer side is at most ``max_res``."""
    h, w = depth.shape[-2:]
    if max_res is None or max(h, w) <= max_res:
        return depth
    size = (h * max_res // max(h, w), w * max_res // max(h, w))
    return F.interpolate(depth, size, mode="nearest-exact")


def align_params(depth: torch.Tensor, reduction: str = "median", regularizer_strength: float = 0.02,
                 max_iter: int = 2, tol: float = 1e-3, max_res: Optional[int] = 1024) -> np.ndarray:
    """BFGS scale/shift per member -> float64 array [s_1..s_E, t_1..t_E]. ``depth``: [E,1,H,W]."""
    from scipy.optimize import minimize

    E = depth.shape[0]
    d = _shrink(depth.detach().to(torch.float32), max_res)
    flat = d.reshape(E, -1)
    lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    s0 = 1.0 / (hi - lo).clamp(min=1e-6)
    x0 = torch.cat((s0, -s0 * lo)).cpu().numpy().astype(np.float64)
    pairs = list(combinations(range(E), 2))

    def objective(params: np.ndarray) -> float:
        aligned = apply_params(d, params)
        cost = 0.0
        for i, j in pairs:  # pairwise RMS distance between aligned members
            cost += ((aligned[i] - aligned[j]) ** 2).mean().sqrt().item()
        if regularizer_strength > 0:
            m, _ = _reduce(aligned, reduction, False)
            cost += (m.min().abs().item() + (1.0 - m.max()).abs().item()) * regularizer_strength
        return cost

    result = minimize(objective, x0, method="BFGS", tol=tol, options={"maxiter": max_iter, "disp": False})
    return result.x


def apply_params(depth: torch.Tensor, params: np.ndarray) -> torch.Tensor:
    """s_i d_i + t_i with params [s..., t...] (float64) applied in the maps' dtype. [E,1,H,W]."""
    E = depth.shape[0]
    s, t = np.split(np.asarray(params), 2)
    s = torch.from_numpy(s).to(depth).view(E, 1, 1, 1)
    t = torch.from_numpy(t).to(depth).view(E, 1, 1, 1)
    return depth * s + t


def ensemble_affine(depth: torch.Tensor, reduction: str = "median", with_uncertainty: bool = True,
                    regularizer_strength: float = 0.02, max_iter: int = 2, tol: float = 1e-3,
                    max_res: Optional[int] = 1024):
    """Align E affine-invariant maps [E,1,H,W] and reduce them -> ([1,1,H,W] in [0,1], uncertainty or None)."""
    if depth.dim() != 4 or depth.shape[1] != 1:
        raise InputError(f"ensemble members must be [E,1,H,W], got {tuple(depth.shape)}")
    if reduction not in REDUCTIONS:
        raise InputError(f"unknown reduction {reduction!r}; use median or mean")
    if depth.shape[0] > 1:
        params = align_params(depth, reduction, regularizer_strength, max_iter, tol, max_res)
        depth = apply_params(depth, params)
    m, u = _reduce(depth, reduction, with_uncertainty)
    lo, hi = m.min(), m.max()
    span = (hi - lo).clamp(min=1e-6)
    m = (m - lo) / span
    if u is not None:
        u = u / span
    return m, u


def ensemble_log(depth: torch.Tensor, reduction: str = "median", with_uncertainty: bool = True, eps: float = 1e-6):
    """Reduce E metric maps [E,1,H,W] (metres) in log space -> ([1,1,H,W] metres, uncertainty in metres or None)."""
    if depth.dim() != 4 or depth.shape[1] != 1:
        raise InputError(f"ensemble members must be [E,1,H,W], got {tuple(depth.shape)}")
    log_d = torch.log(depth.float().clamp(min=eps))
    m, u = _reduce(log_d, reduction, with_uncertainty)
    out = torch.exp(m)
    if u is not None:
        u = u * out  # d(exp(x)) = exp(x) dx: relative spread -> metres
    return out.to(depth.dtype), (u.to(depth.dtype) if u is not None else None)
