"""Marigold (affine-invariant depth) and MetricGold (metric depth): one latent depth denoiser
with two depth normalisers. See :mod:`.model` for the papers and equations."""
from __future__ import annotations

from ...types import AFFINE_DEPTH, METRIC_DEPTH
from .model import FAST, PAPER, LatentDepthModel, expand_conv_in
from .normalizers import AffineNormalizer, LogNormalizer


class MarigoldDepth(LatentDepthModel):
    """Marigold: depth normalised by its 2 %/98 % quantiles; output affine-invariant depth in [0, 1]."""

    method = "marigold"
    output_kind = AFFINE_DEPTH
    normalizer_name = "affine"
    presets = {
        "paper": ("the CVPR 2024 paper and marigold-depth-v1-0", PAPER),
        "paper-v1-1": ("marigold-depth-v1-1's setting for academic comparison",
                       {**FAST, "ensemble_size": 10}),
        "fast": ("Garcia et al. 2024's single trailing step", FAST),
    }


class MetricGoldDepth(LatentDepthModel):
    """MetricGold: log-depth normalisation between d_min and d_max; output depth in metres."""

    method = "metricgold"
    output_kind = METRIC_DEPTH
    normalizer_name = "log"
    presets = {
        "paper": ("the paper's inference (DDIM; members: median in log space)", PAPER),
        "fast": ("Garcia et al. 2024's single trailing step (e2e.yaml's default)", FAST),
    }


__all__ = ["MarigoldDepth", "MetricGoldDepth", "LatentDepthModel", "AffineNormalizer", "LogNormalizer",
           "expand_conv_in"]
