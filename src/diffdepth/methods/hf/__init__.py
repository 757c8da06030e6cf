"""``hf``: any ``transformers`` depth-estimation model (Depth Anything (V2), DPT, ZoeDepth, GLPN,
Depth Pro ...) behind the diffdepth interface, with the model's own image processor."""
from .model import HFDepth, infer_output_kind, make_tiny_hf

__all__ = ["HFDepth", "infer_output_kind", "make_tiny_hf"]
