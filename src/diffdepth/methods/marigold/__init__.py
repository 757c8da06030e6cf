"""Marigold (affine-invariant depth) and MetricGold (metric depth): one latent depth denoiser
with two depth normalisers. See :mod:`.model` for the papers and equations."""
from __future__ import annotations

from pathlib import Path

from ...model import CONFIG_NAME, read_json
from ...types import AFFINE_DEPTH, METRIC_DEPTH
from .model import FAST, PAPER, LatentDepthModel, expand_conv_in
from .normalizers import AffineNormalizer, LogNormalizer


def _can_load(cls, path) -> bool:
    """Our folder of either normaliser (fine-tuning may switch it) or a diffusers Marigold pipeline folder."""
    marker, index = (read_json(Path(path) / name) or {} for name in (CONFIG_NAME, "model_index.json"))
    return (marker.get("method") in ("marigold", "metricgold")
            or str(index.get("_class_name", "")).startswith("Marigold"))


class MarigoldDepth(LatentDepthModel):
    """Marigold: depth normalised by its 2 %/98 % quantiles; output affine-invariant depth in [0, 1]."""

    method = "marigold"
    output_kind = AFFINE_DEPTH
    normalizer_name = "affine"
    can_load = classmethod(_can_load)
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
    can_load = classmethod(_can_load)
    presets = {
        "paper": ("the paper's inference (DDIM; members: median in log space)", PAPER),
        "fast": ("Garcia et al. 2024's single trailing step (e2e.yaml's default)", FAST),
    }


__all__ = ["MarigoldDepth", "MetricGoldDepth", "LatentDepthModel", "AffineNormalizer", "LogNormalizer",
           "expand_conv_in"]
