"""Aligning a prediction to the ground truth before scoring, and clipping it to the dataset range.

Methods (REFERENCE.md "Evaluation protocols"):

``lsq``
    least-squares scale ``s`` and shift ``t`` in depth space on the valid pixels,
    ``argmin Σ (s·p + t − g)²`` (Marigold, Ke et al. 2024, eval protocol).
``lsq-disparity``
    the prediction is a disparity: fit ``s·p + t`` against ``1/g`` on the valid pixels
    with ``p > 0`` (as Marigold does), clamp the aligned disparity to
    ``>= max(1/max_depth, 1e-3)`` and invert. Marigold clamps at ``1e-3`` then clips the
    depth to ``max_depth``; clamping at ``max(1/max_depth, 1e-3)`` gives the same depths.
``median``
    ``ratio = median(g) / median(p)`` on the valid pixels (self-supervised protocol of
    Zhou et al. 2017 / Monodepth2), ``shift = 0``.
``none``
    metric predictions, scale 1, shift 0.
``auto``
    from the prediction kind: ``affine_invariant_depth → lsq``,
    ``affine_invariant_disparity → lsq-disparity``, ``relative_depth → median``,
    ``metric_depth → none``.

After alignment :func:`finalize_depth` replaces non-finite values and clips to
``[min_depth, max_depth]`` (then to ``>= 1e-6`` so every metric is defined), returning
how many valid pixels were non-finite or non-positive so the report can count them.
Pixels whose prediction is non-finite are left out of the fit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..types import AFFINE_DEPTH, AFFINE_DISPARITY, METRIC_DEPTH, RELATIVE_DEPTH, check_kind

ALIGNMENTS = ("auto", "lsq", "lsq-disparity", "median", "none")
_BY_KIND = {AFFINE_DEPTH: "lsq", AFFINE_DISPARITY: "lsq-disparity",
            RELATIVE_DEPTH: "median", METRIC_DEPTH: "none"}
#: Marigold clamps aligned disparity at this value before inverting
DISPARITY_FLOOR = 1e-3
#: final lower clip so log metrics stay finite when min_depth is 0
MIN_POSITIVE = 1e-6


def resolve_alignment(alignment: Optional[str], kind: str) -> str:
    """``auto``/``None`` → the method implied by ``kind``; otherwise validate the name."""
    if alignment in (None, "auto"):
        return _BY_KIND[check_kind(kind)]
    if alignment not in ALIGNMENTS:
        raise ValueError(f"unknown alignment {alignment!r}; use one of {', '.join(ALIGNMENTS)}")
    return alignment


@dataclass
class AlignResult:
    """``depth`` is the aligned prediction (float64 [H,W], before range clipping)."""

    depth: np.ndarray
    method: str
    scale: float = 1.0
    shift: float = 0.0


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def fit_scale_shift(pred, target, mask) -> tuple[float, float]:
    """Least squares ``(s, t) = argmin Σ_mask (s·pred + t − target)²`` (float64).

    Raises ``ValueError`` when the mask is empty. A constant prediction gets the
    minimum-norm solution (numpy ``lstsq``), i.e. a finite pair.
    """
    p = _as_numpy(pred).astype(np.float64)
    g = _as_numpy(target).astype(np.float64)
    m = _as_numpy(mask).astype(bool)
    if p.shape != g.shape or p.shape != m.shape:
        raise ValueError(f"shapes differ: pred {p.shape}, target {g.shape}, mask {m.shape}")
    if not m.any():
        raise ValueError("cannot fit scale and shift: the valid mask is empty")
    pv, gv = p[m], g[m]
    a = np.stack([pv, np.ones_like(pv)], axis=1)  # [N,2]
    (s, t), *_ = np.linalg.lstsq(a, gv, rcond=None)
    return float(s), float(t)


def fit_median_scale(pred, target, mask) -> float:
    """``median(target[mask]) / median(pred[mask])`` (Monodepth2 median scaling)."""
    p = _as_numpy(pred).astype(np.float64)
    g = _as_numpy(target).astype(np.float64)
    m = _as_numpy(mask).astype(bool)
    if not m.any():
        raise ValueError("cannot compute the median ratio: the valid mask is empty")
    med_p = float(np.median(p[m]))
    if med_p == 0.0 or not math.isfinite(med_p):
        raise ValueError(f"cannot compute the median ratio: median prediction is {med_p}")
    return float(np.median(g[m])) / med_p


def _downsample_like_marigold(arrays, max_res: Optional[int]):
    """Marigold's ``--alignment_max_res``: nearest resampling of ``[1,H,W]`` tensors with
    ``torch.nn.Upsample(scale_factor=min(max_res/H, max_res/W))``. On a 3-D tensor that
    interpolates the last axis only (width), which we reproduce for parity."""
    h, w = arrays[0].shape[-2:]
    if max_res is None:
        return arrays
    factor = float(np.min(max_res / np.array([h, w])))
    if factor >= 1:
        return arrays
    out = []
    for a in arrays:
        t = torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float64).unsqueeze(0)  # [1,H,W]
        r = torch.nn.functional.interpolate(t, scale_factor=factor, mode="nearest")[0].numpy()
        out.append(r.astype(bool) if a.dtype == bool else r)
    return out


def align(pred, gt, mask, method: str, *, max_depth: Optional[float] = None,
          fit_max_res: Optional[int] = None) -> AlignResult:
    """Align ``pred`` [H,W] to ``gt`` [H,W] on ``mask`` with ``method`` (not ``auto``).

    ``max_depth`` sets the disparity clamp of ``lsq-disparity``; ``fit_max_res`` reproduces
    Marigold's ``--alignment_max_res`` (the fit only sees a resampled copy).
    """
    p = _as_numpy(pred).astype(np.float64)
    g = _as_numpy(gt).astype(np.float64)
    m = _as_numpy(mask).astype(bool)
    if p.shape != g.shape or p.shape != m.shape:
        raise ValueError(f"shapes differ: pred {p.shape}, gt {g.shape}, mask {m.shape}")
    fit_mask = m & np.isfinite(p)  # non-finite predictions never enter a fit
    if method == "none":
        return AlignResult(p.copy(), method)
    if method == "lsq":
        pf, gf, mf = _downsample_like_marigold([p, g, fit_mask], fit_max_res)
        s, t = fit_scale_shift(np.where(mf, pf, 0.0), gf, mf)
        return AlignResult(s * p + t, method, s, t)
    if method == "lsq-disparity":
        gt_disp = np.zeros_like(g)
        gt_disp[g > 0] = 1.0 / g[g > 0]
        fit_mask = fit_mask & (g > 0) & (p > 0)
        pf, gf, mf = _downsample_like_marigold([p, gt_disp, fit_mask], fit_max_res)
        s, t = fit_scale_shift(np.where(mf, pf, 0.0), gf, mf)
        disp = s * p + t
        floor = DISPARITY_FLOOR
        if max_depth is not None and math.isfinite(max_depth) and max_depth > 0:
            floor = max(floor, 1.0 / max_depth)
        with np.errstate(invalid="ignore"):
            disp = np.where(np.isnan(disp), disp, np.maximum(disp, floor))
        return AlignResult(1.0 / disp, method, s, t)
    if method == "median":
        ratio = fit_median_scale(p, g, fit_mask & (p > 0))
        return AlignResult(p * ratio, method, ratio, 0.0)
    raise ValueError(f"unknown alignment {method!r}; use one of lsq, lsq-disparity, median, none")


@dataclass
class FinalizeCounts:
    nonfinite: int  # valid pixels whose aligned prediction was NaN/±inf
    nonpositive: int  # valid pixels whose aligned prediction was <= 0


def finalize_depth(depth, mask, min_depth: float, max_depth: float,
                   gt=None) -> tuple[np.ndarray, FinalizeCounts]:
    """Replace non-finite values and clip to the dataset range (Marigold's eval protocol).

    ``+inf → max_depth``, ``-inf`` and ``NaN → min_depth`` (a NaN is treated like a
    missing, non-positive depth); where ``max_depth`` is infinite (ETH3D), ``+inf`` becomes
    the largest valid ground-truth depth (``gt``) or the largest finite prediction.
    Then ``clip(min_depth, max_depth)`` and ``clip(>= 1e-6)``. Counts are over ``mask``.
    """
    d = _as_numpy(depth).astype(np.float64).copy()
    m = _as_numpy(mask).astype(bool)
    finite = np.isfinite(d)
    counts = FinalizeCounts(int((~finite & m).sum()), int((finite & (d <= 0) & m).sum()))
    if not finite.all():
        hi = max_depth
        if not math.isfinite(hi):
            candidates = []
            if gt is not None:
                gv = _as_numpy(gt)[m]
                gv = gv[np.isfinite(gv)]
                if gv.size:
                    candidates.append(float(gv.max()))
            if finite.any():
                candidates.append(float(d[finite].max()))
            hi = max(candidates) if candidates else 1.0
        d[np.isposinf(d)] = hi
        d[np.isneginf(d) | np.isnan(d)] = min_depth
    d = np.clip(d, min_depth, max_depth)
    d = np.maximum(d, MIN_POSITIVE)
    return d, counts
