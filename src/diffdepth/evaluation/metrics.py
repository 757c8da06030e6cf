"""Depth metrics: pure functions ``metric(pred, gt, mask)``.

Definitions (REFERENCE.md "Evaluation protocols"; Eigen et al. 2014 for the classic set,
KITTI depth benchmark for iRMSE and SILog), computed per image over the valid pixels,
then averaged over images. With ``d = ln p - ln g``:

==========  ====================================================
abs_rel     mean |p - g| / g
sq_rel      mean (p - g)^2 / g
rmse        sqrt(mean (p - g)^2)                         (metres)
rmse_log    sqrt(mean d^2)
log10       mean |log10 p - log10 g|
delta1..3   fraction of pixels with max(p/g, g/p) < 1.25^k   (0..1)
i_rmse      sqrt(mean (1/p - 1/g)^2)                     (1/m)
silog       100 * sqrt(mean d^2 - (mean d)^2)
==========  ====================================================

Inputs are numpy arrays or torch tensors (not mixed). The last two dimensions are
``H, W``; any leading dimensions are images (``[H,W]``, ``[1,H,W]``, ``[B,1,H,W]`` and
``[B,H,W]`` all work). ``mask`` (bool, same shape) selects the valid pixels; ``None``
means all pixels. A metric is the mean over images of the per-image value; images whose
mask is empty are skipped, and if every image is empty a ``ValueError`` is raised (never
a NaN). Predictions and targets must be positive on the mask (the evaluator clips
predictions to the dataset range before scoring, as Marigold's protocol does).

Numpy inputs return a Python ``float``; torch inputs return a 0-d tensor (float64 for
float64 input, else float32) so the functions also serve validation loops.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch

#: metric names in report order
METRIC_NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10",
                "delta1", "delta2", "delta3", "i_rmse", "silog")
#: metrics where larger is better (the others: smaller is better)
HIGHER_IS_BETTER = frozenset({"delta1", "delta2", "delta3"})


# ---------------------------------------------------------------------------- helpers
def _is_torch(x) -> bool:
    return isinstance(x, torch.Tensor)


def _prepare(pred, gt, mask):
    """Validate and flatten to ``[N, H*W]`` float64 (numpy) or float (torch) + bool mask."""
    if _is_torch(pred) != _is_torch(gt) or (mask is not None and _is_torch(mask) != _is_torch(pred)):
        raise TypeError("pred, gt and mask must all be numpy arrays or all torch tensors")
    if tuple(pred.shape) != tuple(gt.shape):
        raise ValueError(f"pred shape {tuple(pred.shape)} != gt shape {tuple(gt.shape)}")
    if pred.ndim < 2:
        raise ValueError(f"depth maps need at least 2 dimensions [H,W], got shape {tuple(pred.shape)}")
    if mask is not None and tuple(mask.shape) != tuple(gt.shape):
        raise ValueError(f"mask shape {tuple(mask.shape)} != gt shape {tuple(gt.shape)}")
    h, w = pred.shape[-2:]
    if _is_torch(pred):
        dtype = torch.float64 if pred.dtype == torch.float64 else torch.float32
        p = pred.reshape(-1, h * w).to(dtype)
        g = gt.reshape(-1, h * w).to(device=p.device, dtype=dtype)
        m = (torch.ones_like(p, dtype=torch.bool) if mask is None
             else mask.reshape(-1, h * w).to(device=p.device, dtype=torch.bool))
    else:
        p = np.asarray(pred, dtype=np.float64).reshape(-1, h * w)
        g = np.asarray(gt, dtype=np.float64).reshape(-1, h * w)
        m = (np.ones(p.shape, dtype=bool) if mask is None
             else np.asarray(mask).astype(bool).reshape(-1, h * w))
    return p, g, m


def _valid_pixels(pred, gt, mask, name: str):
    """Per non-empty image, the valid pixels ``(p, g)`` as 1-D arrays; validated loudly."""
    p, g, m = _prepare(pred, gt, mask)
    out = []
    for i in range(p.shape[0]):
        sel = m[i]
        if not bool(sel.any()):
            continue
        pi, gi = p[i][sel], g[i][sel]
        if _is_torch(pi):
            bad = bool(((pi <= 0) | ~torch.isfinite(pi)).any() or ((gi <= 0) | ~torch.isfinite(gi)).any())
        else:
            bad = bool(((pi <= 0) | ~np.isfinite(pi)).any() or ((gi <= 0) | ~np.isfinite(gi)).any())
        if bad:
            raise ValueError(f"{name}: pred and gt must be finite and > 0 on the valid mask "
                             f"(clip predictions to the dataset range first)")
        out.append((pi, gi))
    if not out:
        raise ValueError(f"{name}: the valid mask is empty — nothing to evaluate")
    return out


def _mean(values):
    if _is_torch(values[0]):
        return torch.stack([torch.as_tensor(v) for v in values]).mean()
    return float(np.mean(values))


def _per_image(fn: Callable, pred, gt, mask, name: str):
    """Apply ``fn(p, g)`` (1-D valid pixels of one image) per image; mean over non-empty images."""
    return _mean([fn(pi, gi) for pi, gi in _valid_pixels(pred, gt, mask, name)])


def _lib(x):
    return torch if _is_torch(x) else np


# ---------------------------------------------------------------------------- per-image kernels
def _abs_rel(p, g):
    return (_lib(p).abs(p - g) / g).mean()


def _sq_rel(p, g):
    return ((p - g) ** 2 / g).mean()


def _rmse(p, g):
    return _lib(p).sqrt(((p - g) ** 2).mean())


def _rmse_log(p, g):
    xp = _lib(p)
    return xp.sqrt(((xp.log(p) - xp.log(g)) ** 2).mean())


def _log10(p, g):
    xp = _lib(p)
    return xp.abs(xp.log10(p) - xp.log10(g)).mean()


def _delta(k: int):
    thr = 1.25 ** k

    def fn(p, g):
        ratio = _lib(p).maximum(p / g, g / p)
        return (ratio < thr).to(p.dtype).mean() if _is_torch(p) else (ratio < thr).mean()

    return fn


def _i_rmse(p, g):
    return _lib(p).sqrt(((1.0 / p - 1.0 / g) ** 2).mean())


def _silog(p, g):
    xp = _lib(p)
    d = xp.log(p) - xp.log(g)
    var = (d ** 2).mean() - d.mean() ** 2
    # the difference of two means can dip below zero by rounding when all d are equal
    var = var.clamp_min(0.0) if _is_torch(var) else max(float(var), 0.0)
    return 100.0 * xp.sqrt(var) if _is_torch(var) else 100.0 * math.sqrt(var)


_KERNELS: Dict[str, Callable] = {
    "abs_rel": _abs_rel, "sq_rel": _sq_rel, "rmse": _rmse, "rmse_log": _rmse_log,
    "log10": _log10, "delta1": _delta(1), "delta2": _delta(2), "delta3": _delta(3),
    "i_rmse": _i_rmse, "silog": _silog,
}


# ---------------------------------------------------------------------------- public metrics
def abs_rel(pred, gt, mask=None):
    """Absolute relative error, mean |p−g|/g."""
    return _per_image(_abs_rel, pred, gt, mask, "abs_rel")


def sq_rel(pred, gt, mask=None):
    """Squared relative error, mean (p−g)²/g."""
    return _per_image(_sq_rel, pred, gt, mask, "sq_rel")


def rmse(pred, gt, mask=None):
    """Root mean squared error √mean(p−g)² (units of the depth)."""
    return _per_image(_rmse, pred, gt, mask, "rmse")


def rmse_log(pred, gt, mask=None):
    """RMSE of natural logs, √mean(ln p − ln g)²."""
    return _per_image(_rmse_log, pred, gt, mask, "rmse_log")


def log10(pred, gt, mask=None):
    """Mean absolute log10 error, mean|log10 p − log10 g|."""
    return _per_image(_log10, pred, gt, mask, "log10")


def delta1(pred, gt, mask=None):
    """Threshold accuracy: fraction with max(p/g, g/p) < 1.25."""
    return _per_image(_KERNELS["delta1"], pred, gt, mask, "delta1")


def delta2(pred, gt, mask=None):
    """Threshold accuracy: fraction with max(p/g, g/p) < 1.25²."""
    return _per_image(_KERNELS["delta2"], pred, gt, mask, "delta2")


def delta3(pred, gt, mask=None):
    """Threshold accuracy: fraction with max(p/g, g/p) < 1.25³."""
    return _per_image(_KERNELS["delta3"], pred, gt, mask, "delta3")


def i_rmse(pred, gt, mask=None):
    """Inverse-depth RMSE √mean(1/p − 1/g)² (KITTI benchmark; 1/m)."""
    return _per_image(_i_rmse, pred, gt, mask, "i_rmse")


def silog(pred, gt, mask=None):
    """Scale-invariant log error 100·√(mean d² − (mean d)²), d = ln p − ln g (Eigen et al. 2014, λ=1)."""
    return _per_image(_silog, pred, gt, mask, "silog")


METRICS: Dict[str, Callable] = {
    "abs_rel": abs_rel, "sq_rel": sq_rel, "rmse": rmse, "rmse_log": rmse_log, "log10": log10,
    "delta1": delta1, "delta2": delta2, "delta3": delta3, "i_rmse": i_rmse, "silog": silog,
}


def compute_metrics(pred, gt, mask=None, names: Optional[Tuple[str, ...]] = None) -> Dict[str, float]:
    """All (or the ``names``) metrics as a dict of Python floats (mean over non-empty images)."""
    names = tuple(names or METRIC_NAMES)
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; available: {', '.join(METRIC_NAMES)}")
    pixels = _valid_pixels(pred, gt, mask, "compute_metrics")  # masked once, shared by every metric
    out = {}
    for n in names:
        v = _mean([_KERNELS[n](pi, gi) for pi, gi in pixels])
        out[n] = float(v.item()) if _is_torch(v) else float(v)
    return out
