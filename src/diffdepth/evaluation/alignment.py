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
``sparse:N``
    :func:`fit_anchors` (robust, see below) to ``N`` ground-truth pixels sampled per sample with a
    seeded generator (``eval --alignment sparse:N``); all ``N`` enter the fit (no hold-out: the
    evaluation itself scores the rest).
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

from ..geometry import depth_to_disparity
from ..types import AFFINE_DEPTH, AFFINE_DISPARITY, METRIC_DEPTH, RELATIVE_DEPTH, check_kind

ALIGNMENTS = ("auto", "lsq", "lsq-disparity", "median", "none")
_BY_KIND = {AFFINE_DEPTH: "lsq", AFFINE_DISPARITY: "lsq-disparity",
            RELATIVE_DEPTH: "median", METRIC_DEPTH: "none"}
#: Marigold clamps aligned disparity at this value before inverting
DISPARITY_FLOOR = 1e-3
#: final lower clip so log metrics stay finite when min_depth is 0
MIN_POSITIVE = 1e-6


def parse_sparse(alignment: Optional[str]) -> Optional[int]:
    """``sparse:N`` → N (the evaluation fits each prediction to N sampled ground-truth pixels); else None."""
    if not isinstance(alignment, str) or not alignment.startswith("sparse:"):
        return None
    text = alignment.split(":", 1)[1]
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"alignment {alignment!r}: use sparse:N with N a positive number of pixels, e.g. sparse:100")
    return int(text)


def check_alignment(alignment: str) -> str:
    """argparse type: a name of :data:`ALIGNMENTS` or ``sparse:N``."""
    if alignment in ALIGNMENTS or parse_sparse(alignment):
        return alignment
    raise ValueError(f"unknown alignment {alignment!r}; use one of {', '.join(ALIGNMENTS)} or sparse:N")


def resolve_alignment(alignment: Optional[str], kind: str) -> str:
    """``auto``/``None`` → the method implied by ``kind``; otherwise validate the name."""
    if alignment in (None, "auto"):
        return _BY_KIND[check_kind(kind)]
    if parse_sparse(alignment):
        return alignment
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


def scale_shift(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                scale_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The one least-squares fit: ``(s, t) = argmin Σ w·(s·pred + t − target)²`` over the last dim.

    Torch, differentiable, computed in at least float32. Closed form, centred for accuracy:
    ``s = Σw(p−p̄)(g−ḡ) / Σw(p−p̄)²``, ``t = ḡ − s·p̄`` (weighted means); ``scale_only``:
    ``s = Σw·p·g / Σw·p²``, ``t = 0``. A constant prediction gets ``s = 0, t = ḡ`` (the
    least-squares aligned value); no weight gives ``(0, 0)``. Weight-0 entries may hold NaN.
    """
    dtype = torch.promote_types(pred.dtype, torch.float32)
    w = weight.to(dtype)
    p = torch.where(w > 0, pred.to(dtype), 0.0)
    g = torch.where(w > 0, target.to(dtype), 0.0)
    spp = (w * p * p).sum(-1)
    if scale_only:
        ok = spp > 0
        s = torch.where(ok, (w * p * g).sum(-1) / torch.where(ok, spp, 1.0), 0.0)
        return s, torch.zeros_like(s)
    n = w.sum(-1).clamp_min(torch.finfo(dtype).tiny)
    pm, gm = (w * p).sum(-1) / n, (w * g).sum(-1) / n
    dp = p - pm[..., None]
    var = (w * dp * dp).sum(-1)
    ok = var > (8 * torch.finfo(dtype).eps) ** 2 * spp  # else p is constant up to rounding
    s = torch.where(ok, (w * dp * (g - gm[..., None])).sum(-1) / torch.where(ok, var, 1.0), 0.0)
    return s, gm - s * pm


def fit_scale_shift(pred, target, mask, scale_only: bool = False) -> tuple[float, float]:
    """Least squares ``(s, t) = argmin Σ_mask (s·pred + t − target)²`` on numpy/torch arrays in float64
    (:func:`scale_shift`); ``mask`` is bool or non-negative weights.

    Raises ``ValueError`` when the mask is empty; a constant prediction gets ``s = 0``.
    """
    p, g, m = (torch.as_tensor(np.asarray(_as_numpy(a), dtype=np.float64)) for a in (pred, target, mask))
    if p.shape != g.shape or p.shape != m.shape:
        raise ValueError(f"shapes differ: pred {tuple(p.shape)}, target {tuple(g.shape)}, mask {tuple(m.shape)}")
    if not m.any():
        raise ValueError("cannot fit scale and shift: the valid mask is empty")
    s, t = scale_shift(p.reshape(-1), g.reshape(-1), m.reshape(-1), scale_only)
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


def disparity_floor(max_depth: Optional[float]) -> float:
    """Aligned disparity is clamped at ``max(1/max_depth, 1e-3)`` before inverting (see the module docstring)."""
    finite = max_depth is not None and math.isfinite(max_depth) and max_depth > 0
    return max(DISPARITY_FLOOR, 1.0 / max_depth) if finite else DISPARITY_FLOOR


def clamped_inverse(disparity: np.ndarray, floor: float) -> np.ndarray:
    """``1 / max(disparity, floor)``: aligned disparity to depth (NaN stays NaN)."""
    with np.errstate(invalid="ignore"):
        return 1.0 / np.maximum(disparity, floor)


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
        s, t = fit_scale_shift(pf, gf, mf)
        return AlignResult(s * p + t, method, s, t)
    if method == "lsq-disparity":
        fit_mask = fit_mask & (g > 0) & (p > 0)
        pf, gf, mf = _downsample_like_marigold([p, depth_to_disparity(g), fit_mask], fit_max_res)
        s, t = fit_scale_shift(pf, gf, mf)
        return AlignResult(clamped_inverse(s * p + t, disparity_floor(max_depth)), method, s, t)
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


# ---------------------------------------------------------------------------- sparse anchors
#: how an anchor fit may be asked for: ``auto`` = scale and shift for the affine-invariant kinds,
#: scale only for ``relative_depth``/``metric_depth`` (their zero is already right)
ANCHOR_FITS = ("auto", "scale", "scale-shift")
#: anchors the fit itself needs (the held-out ones come on top)
MIN_FIT_ANCHORS = {"scale": 3, "scale-shift": 5}
HOLDOUT_FRACTION = 0.2
#: a fit is flagged as poor below this inlier fraction or above this held-out AbsRel
POOR_INLIER_FRACTION = 0.5
POOR_HELDOUT_ABSREL = 0.25
_TUKEY_C = 4.685  # Tukey biweight constant (95 % efficiency at Gaussian noise)
_MAD_TO_SIGMA = 1.4826


class TooFewAnchors(ValueError):
    """Fewer usable anchors than the fit needs."""


def anchor_fit_mode(kind: str, fit: str = "auto") -> str:
    if fit not in ANCHOR_FITS:
        raise ValueError(f"unknown anchor fit {fit!r}; use one of {', '.join(ANCHOR_FITS)}")
    if fit != "auto":
        return fit
    return "scale-shift" if check_kind(kind) in (AFFINE_DEPTH, AFFINE_DISPARITY) else "scale"


def robust_scale_shift(pv, gv, *, scale_only: bool = False, seed: int = 0, trials: int = 300,
                       iterations: int = 50) -> tuple[float, float, np.ndarray, float]:
    """Robust ``s·pv + t ≈ gv`` on 1-D vectors: a least-median-of-squares start from ``trials``
    seeded minimal subsets (robust up to ~50 % outliers), Tukey-biweight IRLS with the noise
    ``σ = 1.4826·MAD`` of the residuals, then plain least squares on the inliers
    (``|r| < 4.685·σ``). Returns ``(s, t, inlier mask, σ)``; ``t = 0`` with ``scale_only``."""
    p = np.asarray(pv, dtype=np.float64)
    g = np.asarray(gv, dtype=np.float64)
    n, k = len(p), 1 if scale_only else 2
    rng = np.random.default_rng(seed)
    best, best_med = None, np.inf
    for _ in range(trials):
        idx = rng.choice(n, size=k, replace=False)
        if scale_only:
            if p[idx[0]] == 0:
                continue
            s, t = g[idx[0]] / p[idx[0]], 0.0
        else:
            dp = p[idx[1]] - p[idx[0]]
            if dp == 0:
                continue
            s = (g[idx[1]] - g[idx[0]]) / dp
            t = g[idx[0]] - s * p[idx[0]]
        med = float(np.median(np.abs(s * p + t - g)))
        if med < best_med:
            best, best_med = (s, t), med
    if best is None:  # every subset degenerate (a constant prediction): plain least squares
        best = fit_scale_shift(p, g, np.ones_like(p), scale_only)
    s, t = best
    floor = 1e-9 * float(np.median(np.abs(g))) + 1e-300  # exact data: MAD 0
    for _ in range(iterations):
        r = s * p + t - g
        sigma = max(_MAD_TO_SIGMA * float(np.median(np.abs(r))), floor)
        u = r / (_TUKEY_C * sigma)
        w = np.where(np.abs(u) < 1, (1 - u ** 2) ** 2, 0.0)
        if np.count_nonzero(w) < k:
            break
        s_new, t_new = fit_scale_shift(p, g, w, scale_only)
        done = abs(s_new - s) <= 1e-12 * abs(s) + 1e-300 and abs(t_new - t) <= 1e-12 * (abs(t) + abs(s)) + 1e-300
        s, t = s_new, t_new
        if done:
            break
    r = s * p + t - g
    sigma = max(_MAD_TO_SIGMA * float(np.median(np.abs(r))), floor)
    inliers = np.abs(r) < _TUKEY_C * sigma
    if np.count_nonzero(inliers) >= k:
        s, t = fit_scale_shift(p, g, inliers, scale_only)
    return s, t, inliers, sigma


@dataclass
class AnchorFit:
    """The alignment of one prediction to its anchors (what ``diffdepth align`` reports per image).

    ``scale``/``shift`` map the prediction into ``space`` (``depth`` in metres or ``disparity``
    in 1/m). Residuals and errors are in metres, over anchors: ``residual_*`` on the fit's
    inliers, ``heldout_*`` on the anchors kept out of the fit."""

    scale: float
    shift: float
    space: str
    fit: str
    kind: str
    n_anchors: int
    n_fit: int
    n_inliers: int
    inlier_fraction: float
    residual_rmse: float
    residual_absrel: float
    n_heldout: int
    heldout_absrel: Optional[float]
    heldout_rmse: Optional[float]
    seed: int
    floor: float = DISPARITY_FLOOR
    warning: Optional[str] = None

    def aligned(self, pred) -> np.ndarray:
        """The aligned depth (float64, metres) as computed: a disparity is clamped at ``floor`` and inverted."""
        p = _as_numpy(pred).astype(np.float64)
        v = self.scale * p + self.shift
        return clamped_inverse(v, self.floor) if self.space == "disparity" else v

    def apply(self, pred) -> np.ndarray:
        """Metric depth (float32 [H,W], metres); pixels that come out non-positive or non-finite are 0 (no depth)."""
        d = self.aligned(pred)
        d = np.where(np.isfinite(d) & (d > 0), d, 0.0)
        return d.astype(np.float32)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def _depth_errors(depth: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    if depth.size == 0:
        return math.nan, math.nan
    return float(np.mean(np.abs(depth - gt) / gt)), float(np.sqrt(np.mean((depth - gt) ** 2)))


def fit_anchors(pred, anchors, kind: str, *, fit: str = "auto", seed: int = 0,
                holdout: float = HOLDOUT_FRACTION, max_depth: Optional[float] = None) -> AnchorFit:
    """Robust scale (and shift) of ``pred`` [H,W] to a sparse anchor map [H,W] of metric depths
    (0/NaN/inf = no anchor), in the space where ``kind`` is affine: depth, or disparity for
    ``affine_invariant_disparity``. A seeded random ``holdout`` share of the anchors is kept
    out of the fit and scored (only when enough anchors remain for the fit).

    Raises :class:`TooFewAnchors` below :data:`MIN_FIT_ANCHORS`.
    """
    mode = anchor_fit_mode(kind, fit)
    space = "disparity" if kind == AFFINE_DISPARITY else "depth"
    p = _as_numpy(pred).astype(np.float64)
    a = _as_numpy(anchors).astype(np.float64)
    if p.shape != a.shape:
        raise ValueError(f"shapes differ: prediction {p.shape}, anchors {a.shape}")
    valid = np.isfinite(a) & (a > 0) & np.isfinite(p)
    if space == "disparity":
        valid &= p > 0
    pv, gv = p[valid], a[valid]
    n = len(pv)
    need = MIN_FIT_ANCHORS[mode]
    if n < need:
        raise TooFewAnchors(f"{n} usable anchor(s) (positive depth at a pixel with a finite prediction); "
                            f"a {mode} fit needs at least {need} — give more anchors")
    rng = np.random.default_rng(seed)
    n_hold = int(round(holdout * n))
    if n - n_hold < need:
        n_hold = 0
    order = rng.permutation(n)
    held, used = order[:n_hold], order[n_hold:]
    target = 1.0 / gv if space == "disparity" else gv
    s, t, inl, _ = robust_scale_shift(pv[used], target[used], scale_only=mode == "scale", seed=seed)
    floor = disparity_floor(max_depth)
    res = AnchorFit(s, t, space, mode, kind, n, len(used), int(inl.sum()), float(inl.mean()),
                    math.nan, math.nan, n_hold, None, None, seed, floor)
    depth_all = res.apply(pv).astype(np.float64)
    fit_idx = used[inl]
    res.residual_absrel, res.residual_rmse = _depth_errors(depth_all[fit_idx], gv[fit_idx])
    if n_hold:
        res.heldout_absrel, res.heldout_rmse = _depth_errors(depth_all[held], gv[held])
    problems = []
    if res.inlier_fraction < POOR_INLIER_FRACTION:
        problems.append(f"only {res.inlier_fraction:.0%} of the anchors fit")
    if res.heldout_absrel is not None and res.heldout_absrel > POOR_HELDOUT_ABSREL:
        problems.append(f"held-out AbsRel {res.heldout_absrel:.2f}")
    if not (s > 0):
        problems.append(f"non-positive scale {s:.3g}")
    if problems:
        res.warning = "poor fit: " + ", ".join(problems)
    return res
