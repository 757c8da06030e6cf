"""A test-only method for the pipeline and CLI: depth is an exact function of the pixels.

``depth = 1 + mean(RGB)`` per pixel, so every resize/pad/crop step can be checked
against a hand computation.
"""
import torch

from diffdepth.model import DepthModel
from diffdepth.types import DepthPrediction


class MeanDepth(DepthModel):
    method = "test-mean"
    output_kind = "affine_invariant_depth"
    predict_options = frozenset({"scale", "with_segmentation"})
    size_multiple = 16
    min_size = 16
    default_processing_res = 0

    def __init__(self, offset: float = 1.0):
        super().__init__()
        self.config = {"offset": offset}
        self.offset = torch.nn.Parameter(torch.tensor(float(offset)))
        self.seen_shapes = []

    def predict(self, images, scale=1.0, with_segmentation=False):
        self.check_options({})
        assert images.shape[-2] % self.size_multiple == 0 and images.shape[-1] % self.size_multiple == 0
        self.seen_shapes.append(tuple(images.shape))
        depth = (images.mean(1, keepdim=True) + self.offset) * scale
        extras = {"segmentation": (images[:, :1] > 0.5).long()} if with_segmentation else {}
        return DepthPrediction(depth, self.output_kind, uncertainty=depth * 0.1, extras=extras)

    @classmethod
    def make_tiny(cls, seed=0, **kw):
        return cls(**kw)


def solid_image(path, w=32, h=32, value=128):
    """Write a ``w x h`` RGB PNG of one grey ``value`` at ``path`` (parents created); returns ``path``."""
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)
    return path


def register():
    from diffdepth.registry import MethodInfo, register as reg

    reg(MethodInfo("test-mean", "_toy_methods:MeanDepth", None, "affine_invariant_depth", "test only"))
