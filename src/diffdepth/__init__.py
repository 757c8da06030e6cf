"""diffdepth: monocular depth estimation with a Stable Diffusion prior."""
__version__ = "0.1.0"

from .types import DepthMap, DepthPrediction, DEPTH_KINDS  # noqa: E402
from .registry import list_methods, load_model  # noqa: E402


def __getattr__(name):  # lazy: the pipeline pulls in PIL/diffusers helpers
    if name == "DepthPipeline":
        from .pipeline import DepthPipeline

        return DepthPipeline
    raise AttributeError(name)


__all__ = ["DepthMap", "DepthPrediction", "DEPTH_KINDS", "DepthPipeline", "list_methods", "load_model", "__version__"]
