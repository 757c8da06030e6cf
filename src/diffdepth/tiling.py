"""Tiled inference: detail at the input's native resolution without seams (a pipeline stage).

The pipeline first predicts the whole image at the method's processing resolution (the
*global pass*, resized back to the input size as usual). Then overlapping tiles of
``tile x tile`` pixels are cut from the input at its native resolution and predicted one
batch at a time. Each tile is aligned to the global prediction over the tile's footprint in
the space where the method is affine-invariant, with the solver of
:mod:`diffdepth.evaluation.alignment`:

* ``affine_invariant_depth`` / ``affine_invariant_disparity``: least-squares scale and shift
  of the tile's values (depth, resp. disparity) against the global values;
* ``relative_depth`` (up to scale): the median ratio, no shift;
* ``metric_depth``: nothing (the tiles are already in metres).

The fit compares the global values with the tile's values low-passed to the global pass's
resolution (resized down and back up): an affine map commutes with that low-pass, so the
detail only the tile resolves (sharp depth edges) does not bend the fit.

The aligned tiles are blended with raised-cosine weights: along each axis a tile's weight
rises as ``0.5 - 0.5 cos`` over the part it shares with its neighbour and is 1 elsewhere, so
that two neighbours' weights are complementary; the blend divides by the sum of the weights,
so they sum to 1 at every pixel. A tile's edge (where a model sees the least context) thus
counts least, and no tile ends abruptly. Tiles are placed evenly, the first at the image's
start and the last at its end, with at least ``overlap`` pixels shared.

Cost: ``1 + ny * nx`` model passes, ``n = ceil((side - tile) / (tile - overlap)) + 1`` per
axis (a 2048x1536 input with ``tile=512, overlap=128``: 5 x 4 = 20 tiles); memory: one
batch of tiles in the model plus two float64 ``H x W`` accumulators. The uncertainty (when
the method gives one) is blended the same way, multiplied by the tile's ``|scale|``; other
extras (e.g. segmentation) come from the global pass.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, List, Optional, Tuple

import numpy as np

from .errors import InputError
from .types import AFFINE_DEPTH, AFFINE_DISPARITY, METRIC_DEPTH, RELATIVE_DEPTH, DepthMap

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import DepthPipeline, Prepared


def default_overlap(tile: int) -> int:
    return tile // 4


def tile_starts(length: int, tile: int, overlap: int) -> List[int]:
    """Start offsets of tiles of ``tile`` px covering ``[0, length)``, evenly placed, first at 0,
    last at ``length - tile``, neighbours sharing at least ``overlap`` px (one tile when it fits)."""
    tile = min(tile, length)
    if tile >= length:
        return [0]
    n = math.ceil((length - tile) / (tile - overlap)) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def _ramp(n: int) -> np.ndarray:
    """Raised cosine rising over ``n`` px: ``0.5 - 0.5 cos(pi (k + 1/2) / n)``; positive, and
    ``ramp[k] + ramp[n - 1 - k] == 1``."""
    k = np.arange(n, dtype=np.float64)
    return 0.5 - 0.5 * np.cos(np.pi * (k + 0.5) / n)


def axis_weights(starts: List[int], tile: int) -> List[np.ndarray]:
    """1-D blend weights of each tile along one axis (length ``tile``): 1, with a raised-cosine
    ramp over the span shared with the previous and with the next tile."""
    out = []
    for i, s in enumerate(starts):
        w = np.ones(tile, dtype=np.float64)
        if i > 0:
            shared = starts[i - 1] + tile - s
            w[:shared] *= _ramp(shared)
        if i + 1 < len(starts):
            shared = s + tile - starts[i + 1]
            w[tile - shared:] *= _ramp(shared)[::-1]
        out.append(w)
    return out


def fit_tile(kind: str, tile_values: np.ndarray, global_values: np.ndarray,
             core: Optional[np.ndarray] = None) -> Tuple[float, float]:
    """``(scale, shift)`` that maps a tile's prediction onto the global one, by kind, fitted on
    the pixels of ``core`` (default: all)."""
    from .evaluation.alignment import fit_median_scale, fit_scale_shift

    mask = np.isfinite(tile_values) & np.isfinite(global_values)
    if core is not None:
        mask &= core
    if kind == METRIC_DEPTH or not mask.any():
        return 1.0, 0.0
    if kind in (AFFINE_DEPTH, AFFINE_DISPARITY):
        return fit_scale_shift(tile_values, global_values, mask)
    if kind == RELATIVE_DEPTH:
        mask &= (tile_values > 0) & (global_values > 0)
        if not mask.any():
            return 1.0, 0.0
        return fit_median_scale(tile_values, global_values, mask), 0.0
    raise ValueError(f"unknown depth kind {kind!r}")


def _low_pass(values: np.ndarray, factor: float) -> np.ndarray:
    """``values`` [h,w] resized (antialiased) by ``factor`` and back: what a pass at that
    resolution can resolve. Identity for ``factor >= 1``."""
    if factor >= 1.0:
        return values
    import torch

    from .pipeline import resize

    h, w = values.shape
    t = torch.from_numpy(np.ascontiguousarray(values))[None, None]
    small = resize(t, (max(1, round(h * factor)), max(1, round(w * factor))))
    return resize(small, (h, w))[0, 0].numpy()


class Tiler:
    """Refines the global prediction of a :class:`~diffdepth.pipeline.DepthPipeline` with tiles."""

    def __init__(self, pipe: "DepthPipeline", tile: int, overlap: Optional[int] = None):
        model = pipe.model
        name = model.method or "this model"
        overlap = default_overlap(tile) if overlap is None else overlap
        if tile < model.min_size:
            raise InputError(f"tile size {tile} px is below what {name} needs ({model.min_size} px); use a larger --tile")
        if not 0 <= overlap < tile:
            raise InputError(f"tile overlap must be in [0, {tile}) px for --tile {tile}, got {overlap}")
        if pipe.input_size is not None:
            raise InputError(f"{name} runs at a fixed input size {pipe.input_size}; tiling needs a model that takes "
                             f"any size (drop --tile, or give --processing-res)")
        self.pipe = pipe
        self.tile = int(tile)
        self.overlap = int(overlap)

    def refine(self, item: "Prepared", global_pred: DepthMap) -> DepthMap:
        import torch

        from .pipeline import Prepared

        rgb = item.rgb
        h, w = rgb.shape[:2]
        factor = min(1.0, max(item.image.shape[-2] / h, item.image.shape[-1] / w))  # global px per native px
        ys = tile_starts(h, self.tile, self.overlap)
        xs = tile_starts(w, self.tile, self.overlap)
        th, tw = min(self.tile, h), min(self.tile, w)
        wy, wx = axis_weights(ys, th), axis_weights(xs, tw)
        kind = global_pred.kind
        ref = np.asarray(global_pred.depth, dtype=np.float64)
        num = np.zeros((h, w), dtype=np.float64)
        den = np.zeros((h, w), dtype=np.float64)
        unc_num = None
        boxes = [(iy, ix) for iy in range(len(ys)) for ix in range(len(xs))]
        bs = self.pipe.batch_size
        for b0 in range(0, len(boxes), bs):
            chunk = boxes[b0:b0 + bs]
            items = []
            for iy, ix in chunk:
                y, x = ys[iy], xs[ix]
                crop = np.ascontiguousarray(rgb[y:y + th, x:x + tw])
                items.append(Prepared(item.index, f"{item.name} tile ({y},{x})",
                                      torch.from_numpy(crop).permute(2, 0, 1), (th, tw), crop, item.meta))
            preds, _ = self.pipe.run_batch(items)
            for (iy, ix), pred in zip(chunk, preds):
                y, x = ys[iy], xs[ix]
                if pred.kind != kind:
                    raise ValueError(f"tile predicted {pred.kind}, the global pass {kind}")
                values = np.asarray(pred.depth, dtype=np.float64)
                # the global pass only resolves its own resolution: the tile is compared with it
                # after the same low-pass (down to that resolution and back), which an affine map
                # commutes with, so detail the global pass lacks does not bend the fit
                # on the tile's core (blend weight >= 1/2): its edges, where the model saw the least
                # context, neither bend the fit nor count much in the blend
                weight = wy[iy][:, None] * wx[ix][None, :]
                s, t = fit_tile(kind, _low_pass(values, factor), ref[y:y + th, x:x + tw], weight >= 0.5)
                num[y:y + th, x:x + tw] += weight * (s * values + t)
                den[y:y + th, x:x + tw] += weight
                if pred.uncertainty is not None:
                    if unc_num is None:
                        unc_num = np.zeros((h, w), dtype=np.float64)
                    unc_num[y:y + th, x:x + tw] += weight * abs(s) * np.asarray(pred.uncertainty, dtype=np.float64)
        depth = (num / den).astype(np.float32)
        uncertainty = global_pred.uncertainty if unc_num is None else (unc_num / den).astype(np.float32)
        return DepthMap(depth, kind, uncertainty, dict(global_pred.extras or {}))
