"""Temporal consistency of depth over a posed sequence: the TAE (temporal alignment error).

Definition (after Video Depth Anything, Chen et al. 2025, ``benchmark/eval/eval_tae.py``):

1. The predictions of one sequence are aligned to its ground truth with **one** scale and
   shift for the whole sequence (the evaluation's alignment, e.g. least squares in depth or
   disparity, fitted on the valid pixels of all its frames together), then clipped to the
   dataset's depth range. One alignment per sequence, not per frame, so that a prediction
   whose scale jumps from frame to frame is penalised.
2. For each pair of consecutive frames (t, t+1) of the sequence, with camera-to-world poses
   ``P_t``, ``P_t+1`` and intrinsics ``K``: every valid pixel of frame t is back-projected
   with its aligned depth, moved into camera t+1 with ``inv(P_t+1) @ P_t``, projected and
   rounded to the nearest pixel (the nearest point wins where several land on one);
   ``e(t→t+1) = mean |d_t+1 − d_t→t+1| / d_t+1`` over the pixels of frame t+1 that are hit
   and valid (AbsRel against frame t+1's own aligned prediction).
3. ``TAE(t, t+1) = (e(t→t+1) + e(t+1→t)) / 2``; the reported TAE is the mean over all pairs
   (every sequence's pairs together). A perfect prediction scores ~0 (only rounding to pixels
   remains); VDA reports it ×100.

As in VDA, the ground truth's valid pixels (the evaluation mask) serve the alignment only;
the error is taken on every pixel of the evaluation crop where the predictions are positive
(sparse ground truth such as LiDAR would leave almost no pixel valid in both frames).
Differences from VDA's script: the z-buffer (VDA keeps the last point written), the source
pixels are restricted to the crop as well, and a pair with no pixel in either direction is
left out (VDA counts it as 0). Under several processes a sequence split between them is aligned
per part and loses the pair at the split.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from ..geometry import relative_pose, reproject_depth
from .alignment import align, finalize_depth


def directional_error(depth_a: np.ndarray, depth_b: np.ndarray, K: np.ndarray, a_to_b: np.ndarray,
                      mask_a: np.ndarray, mask_b: np.ndarray) -> Optional[float]:
    """AbsRel of frame a's depth moved into frame b against frame b's depth (None: no overlap)."""
    moved = reproject_depth(depth_a, K, a_to_b, mask_a)
    hit = (moved > 0) & (np.asarray(depth_b) > 0) & np.asarray(mask_b, bool)
    if not hit.any():
        return None
    db = np.asarray(depth_b, np.float64)[hit]
    return float(np.mean(np.abs(db - moved[hit]) / db))


def pair_tae(depth_a, depth_b, K, pose_a, pose_b, mask_a, mask_b) -> Optional[float]:
    """``(e(a→b) + e(b→a)) / 2`` for camera-to-world poses; None when either side has no overlap."""
    ab = relative_pose(pose_a, pose_b)
    e1 = directional_error(depth_a, depth_b, K, ab, mask_a, mask_b)
    e2 = directional_error(depth_b, depth_a, K, np.linalg.inv(ab), mask_b, mask_a)
    if e1 is None or e2 is None:
        return None
    return 0.5 * (e1 + e2)


def sequence_tae(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                 poses: Sequence[np.ndarray], Ks: Sequence[np.ndarray], alignment: str,
                 min_depth: float, max_depth: float, region: Optional[np.ndarray] = None) -> List[Optional[float]]:
    """TAE of each consecutive pair of one sequence (``len(preds) - 1`` values, None where a pair
    has no overlap), after one ``alignment`` (not ``auto``) for the whole sequence, fitted on the
    ground-truth ``masks``; the error is taken over ``region`` (default: every pixel)."""
    if len(preds) < 2:
        return []
    p = np.stack([np.asarray(x, np.float64) for x in preds])
    g = np.stack([np.asarray(x, np.float64) for x in gts])
    m = np.stack([np.asarray(x, bool) for x in masks])
    res = align(p, g, m, alignment, max_depth=max_depth)
    everywhere = np.ones(p.shape, bool)
    depth, _ = finalize_depth(res.depth, everywhere, min_depth, max_depth, gt=g)
    r = np.ones(p.shape[1:], bool) if region is None else np.asarray(region, bool)
    return [pair_tae(depth[i], depth[i + 1], Ks[i], poses[i], poses[i + 1], r, r) for i in range(len(preds) - 1)]
