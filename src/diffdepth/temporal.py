"""Temporal stabilisation for any method (a pipeline stage for videos and frame sequences).

Each frame's prediction is aligned to a running reference: the pixel-wise median of the
last ``window`` aligned frames. The alignment lives in the space where the method is
invariant (least-squares scale and shift of the values for affine depth or disparity, the
median ratio for relative depth, nothing for metric depth) and is robust to moving objects:
after a first fit, the ``trim`` fraction of pixels with the largest residuals is left out and
the fit repeated (three rounds), so what moves against the reference does not bend it. The
first frame sets the scale. Memory: ``window`` frames at the output size; the stage streams
over clips of any length.
"""
from __future__ import annotations

from collections import deque
from typing import Deque, Optional, Tuple

import numpy as np

from .errors import InputError
from .types import AFFINE_DEPTH, AFFINE_DISPARITY, METRIC_DEPTH, RELATIVE_DEPTH, DepthMap

#: ``--temporal`` values: ``latent`` (default, as before) runs the method's own temporal hook
#: (Marigold: latent blending), ``none`` predicts every frame alone, ``align`` adds this stage to
#: independent frames, ``align+latent`` adds it to the hook
TEMPORAL_MODES = ("latent", "none", "align", "align+latent")


def robust_fit(kind: str, values: np.ndarray, reference: np.ndarray, trim: float = 0.2,
               rounds: int = 3) -> Tuple[float, float]:
    """``(scale, shift)`` mapping ``values`` onto ``reference`` by kind, trimming the largest residuals."""
    from .evaluation.alignment import fit_median_scale, fit_scale_shift

    mask = np.isfinite(values) & np.isfinite(reference)
    if kind == METRIC_DEPTH or not mask.any():
        return 1.0, 0.0
    if kind == RELATIVE_DEPTH:
        mask &= (values > 0) & (reference > 0)
        return (fit_median_scale(values, reference, mask), 0.0) if mask.any() else (1.0, 0.0)
    if kind not in (AFFINE_DEPTH, AFFINE_DISPARITY):
        raise ValueError(f"unknown depth kind {kind!r}")
    v = np.where(mask, values, 0.0)
    r = np.where(mask, reference, 0.0)
    s, t = fit_scale_shift(v, r, mask)
    for _ in range(rounds - 1 if trim > 0 else 0):
        residual = np.abs(s * v + t - r)
        cut = np.quantile(residual[mask], 1.0 - trim)
        keep = mask & (residual <= cut)
        if keep.sum() < 2:
            break
        s, t = fit_scale_shift(v, r, keep)
    return s, t


class TemporalAligner:
    """Streams predictions (numpy ``[H,W]`` at the output size) through the alignment stage."""

    def __init__(self, window: int = 8, trim: float = 0.2):
        if window < 1:
            raise InputError(f"temporal window must be >= 1 frame, got {window}")
        if not 0.0 <= trim < 1.0:
            raise InputError(f"trim must be in [0, 1), got {trim}")
        self.window: Deque[np.ndarray] = deque(maxlen=window)
        self.trim = trim
        self.last: Tuple[float, float] = (1.0, 0.0)

    def reference(self) -> Optional[np.ndarray]:
        if not self.window:
            return None
        if len(self.window) == 1:
            return self.window[0]
        return np.median(np.stack(self.window), axis=0)

    def __call__(self, pred: DepthMap) -> DepthMap:
        values = np.asarray(pred.depth, dtype=np.float64)
        ref = self.reference()
        if ref is not None and ref.shape != values.shape:
            raise InputError(f"frame of size {values.shape} in a sequence of {ref.shape}; frames must share one size")
        s, t = (1.0, 0.0) if ref is None else robust_fit(pred.kind, values, ref, self.trim)
        self.last = (s, t)
        aligned = (s * values + t).astype(np.float32)
        self.window.append(aligned)
        unc = None if pred.uncertainty is None else (abs(s) * np.asarray(pred.uncertainty)).astype(np.float32)
        return DepthMap(aligned, pred.kind, unc, dict(pred.extras or {}))
