"""Combining our prediction with another model's saved prediction (``--ensemble-with``).

PrimeDepth's paper averages its disparity pixel-wise with Depth Anything's (both
affine-invariant): the external map is first aligned to ours by least-squares scale and
shift, then the two are averaged. That is what :func:`ensemble_with_external` does for
any affine-invariant output; depth outputs are averaged in their own space.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..types import AFFINE_DEPTH, AFFINE_DISPARITY, DepthPrediction


def align_lstsq(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``s * source + t`` with (s, t) minimising ``||s * source + t - target||²`` on ``mask``."""
    x, y = source[mask].astype(np.float64), target[mask].astype(np.float64)
    if x.size < 2:
        raise InputError("too few valid pixels to align the external prediction")
    A = np.stack([x, np.ones_like(x)], 1)
    (s, t), *_ = np.linalg.lstsq(A, y, rcond=None)
    return (s * source + t).astype(np.float32)


def ensemble_with_external(pred: DepthPrediction, external: np.ndarray) -> DepthPrediction:
    """Pixel-wise mean of ``pred`` and ``external`` aligned to it (same kind assumed).

    ``pred.depth`` is ``[H,W]`` (pipeline output); ``external`` any 2-D map, resized
    bilinearly to ``[H,W]`` if needed. Only affine-invariant kinds can be combined this way.
    """
    if pred.kind not in (AFFINE_DISPARITY, AFFINE_DEPTH):
        raise InputError(f"--ensemble-with needs an affine-invariant prediction, this method gives {pred.kind}")
    ours = np.asarray(pred.depth, dtype=np.float32)
    ext = np.asarray(external, dtype=np.float32).squeeze()
    if ext.ndim != 2:
        raise InputError(f"--ensemble-with: expected a 2-D depth/disparity map, got shape {external.shape}")
    if ext.shape != ours.shape:
        ext = F.interpolate(torch.from_numpy(ext)[None, None], size=ours.shape, mode="bilinear",
                            align_corners=False)[0, 0].numpy()
    mask = np.isfinite(ours) & np.isfinite(ext)
    aligned = align_lstsq(ext, ours, mask)
    mean = np.where(mask, 0.5 * (ours + aligned), ours).astype(np.float32)
    return DepthPrediction(mean, pred.kind, pred.uncertainty, dict(pred.extras))
