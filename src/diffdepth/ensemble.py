"""``--ensemble-with``: average a prediction with a second model's, run in the same job or saved.

PrimeDepth's paper (Tab. 2, "Pixel-wise-Average") averages PrimeDepth's affine-invariant
disparity with Depth Anything's, pixel by pixel. :class:`Ensembler` does that for any pair:
both maps are brought to disparity (depth known up to scale is inverted; the first model
may not give affine-invariant depth, whose inverse is no affine disparity), the second is resized to
the first and aligned to it by a least-squares scale and shift
(:func:`diffdepth.methods.primedepth.ensemble.ensemble_with`), and the two are averaged. The
result is an affine-invariant disparity in the scale of the first model's.

The second model is given as

* a folder of saved predictions (``DIR/<relative path>.npy``/``.npz``/16-bit ``.png``, kind from
  ``DIR/kind.txt``), or
* a method spec ``METHOD:CHECKPOINT`` (``hf:depth-anything/Depth-Anything-V2-Large-hf``,
  ``primedepth:/ckpts/pd``) or a bare ``METHOD`` (its published checkpoint): the model is loaded
  once and run on each image, at its own default processing resolution.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np

from .errors import InputError
from .types import AFFINE_DEPTH, AFFINE_DISPARITY, DepthMap


def parse_spec(text: str):
    """``("folder", Path)`` or ``("model", method, checkpoint or None)``; a one-line error otherwise."""
    from .registry import list_methods

    path = Path(text).expanduser()
    if path.is_dir():
        return ("folder", path)
    ids = [m.id for m in list_methods()]
    method, sep, checkpoint = text.partition(":")
    if method in ids:
        return ("model", method, checkpoint or None if sep else None)
    raise InputError(f"--ensemble-with {text}: neither a folder of predictions nor METHOD:CHECKPOINT "
                     f"(methods: {', '.join(ids)}; e.g. hf:depth-anything/Depth-Anything-V2-Large-hf)")


def to_disparity(depth: np.ndarray, kind: str) -> np.ndarray:
    """Disparity of a map of ``kind``: disparities as they are, depths inverted (values <= 0 → NaN)."""
    depth = np.asarray(depth, dtype=np.float64)
    if kind == AFFINE_DISPARITY:
        return depth
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(depth > 0, 1.0 / np.where(depth > 0, depth, 1.0), np.nan)


class Ensembler:
    """Average predictions with a second model's (see the module docstring).

    ``weight``: the second model's share (paper: 0.5). ``device``/``dtype``: where a second
    model runs (as the first).
    """

    def __init__(self, spec: str, device="auto", dtype=None, weight: float = 0.5):
        self.spec = spec
        self.weight = weight
        parsed = parse_spec(spec)
        self.folder: Optional[Path] = None
        self.pipe = None
        if parsed[0] == "folder":
            from .methods.primedepth.ensemble import external_kind_of

            self.folder = parsed[1]
            self.kind = external_kind_of(self.folder)
        else:
            from .pipeline import DepthPipeline
            from .registry import load_model

            model = load_model(parsed[1], parsed[2], device=device, dtype=dtype)
            self.pipe = DepthPipeline(model)
            self.kind = None  # from each prediction

    def second(self, rel: Union[str, Path], image: Optional[np.ndarray]):
        """The second model's map for this input and its kind."""
        if self.pipe is None:
            from .methods.primedepth.ensemble import find_external, read_external

            return read_external(find_external(self.folder, str(rel))), self.kind
        if image is None:
            raise InputError(f"--ensemble-with {self.spec}: the image of {rel} is needed to run the second model")
        pred = self.pipe([image])[0]
        return pred.depth, pred.kind

    def __call__(self, pred: DepthMap, rel: Union[str, Path] = "", image: Optional[np.ndarray] = None
                 ) -> DepthMap:
        """``pred`` (``depth [H,W]`` at the input size) averaged with the second model's map.

        ``rel``: the input's relative path (finds saved predictions); ``image``: ``[H,W,3]`` in
        [0,1] at the input size (runs the second model).
        """
        from .methods.primedepth.ensemble import ensemble_with

        if pred.kind == AFFINE_DEPTH:
            raise InputError(f"--ensemble-with averages affine-invariant disparities (depth known up to scale is "
                             f"inverted); this method gives {pred.kind}, whose unknown shift makes 1/depth no "
                             f"disparity — put a disparity or metric model first")
        other, other_kind = self.second(rel, image)
        ours = to_disparity(np.squeeze(np.asarray(pred.depth)), pred.kind)
        valid = np.isfinite(ours)
        out = ensemble_with(np.where(valid, ours, np.nan), other, other_kind, weight=self.weight)
        out = np.where(np.isfinite(out), out, 0.0).astype(np.float32)
        keep = pred.uncertainty if pred.kind == AFFINE_DISPARITY else None
        return DepthMap(out, AFFINE_DISPARITY, keep, pred.extras)
