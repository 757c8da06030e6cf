"""Core value types shared by every method, the pipeline and the evaluator."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Union

import numpy as np
import torch

#: The output kinds a method may declare. The evaluator chooses the alignment from it
#: (``auto``): affine kinds get least squares (in disparity space for disparity),
#: ``relative_depth`` gets median scaling, ``metric_depth`` none.
AFFINE_DEPTH = "affine_invariant_depth"
AFFINE_DISPARITY = "affine_invariant_disparity"
METRIC_DEPTH = "metric_depth"
RELATIVE_DEPTH = "relative_depth"
DEPTH_KINDS = (AFFINE_DEPTH, AFFINE_DISPARITY, METRIC_DEPTH, RELATIVE_DEPTH)

Array = Union[np.ndarray, torch.Tensor]


def check_kind(kind: str) -> str:
    if kind not in DEPTH_KINDS:
        raise ValueError(f"unknown depth kind {kind!r}; expected one of {', '.join(DEPTH_KINDS)}")
    return kind


@dataclass
class _Depth:
    depth: Array
    kind: str
    uncertainty: Optional[Array] = None
    extras: dict[str, Any] = field(default_factory=dict)
    ndim: ClassVar[int] = 0

    def __post_init__(self) -> None:
        check_kind(self.kind)
        if np.ndim(self.depth) != self.ndim:
            raise ValueError(f"{type(self).__name__}.depth is {'[B,1,H,W]' if self.ndim == 4 else '[H,W]'}; "
                             f"got shape {tuple(np.shape(self.depth))}")


@dataclass
class DepthPrediction(_Depth):
    """What ``model.predict`` returns for a batch: ``depth`` a tensor ``[B,1,H,W]``. ``kind`` says
    what the values mean (see :data:`DEPTH_KINDS`); ``uncertainty`` has the shape of ``depth`` when
    the method provides one (e.g. ensembles); ``extras`` carries optional per-method outputs
    (e.g. a segmentation map) in the same layout."""

    ndim: ClassVar[int] = 4


@dataclass
class DepthMap(_Depth):
    """One image's prediction as the pipeline (and ensembles, tiling, the temporal stage) returns it:
    ``depth`` a float32 numpy array ``[H,W]`` at the input's size; ``uncertainty`` and map-like
    ``extras`` likewise; ``kind`` as in :class:`DepthPrediction`."""

    ndim: ClassVar[int] = 2
