"""A :class:`~diffdepth.model.DepthModel` around ``transformers``' ``AutoModelForDepthEstimation``.

Preprocessing is the model's own image processor (its resolution, normalisation and
multiple of 14 or 32) and postprocessing its ``post_process_depth_estimation`` (bicubic
back to the input size), called exactly as ``transformers.pipeline("depth-estimation")``
calls them, so the numbers equal that pipeline's. The diffdepth pipeline therefore hands
this model the images at their own size (``default_processing_res = 0``, no padding).

The output kind is read from the config (:func:`infer_output_kind`) and can be overridden
(``load_model("hf", ckpt, output_kind=...)`` or ``--opt output_kind=...``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import torch

from ...errors import CheckpointError, InputError
from ...model import CONFIG_NAME, DepthModel, read_json, register_to_config
from ...types import AFFINE_DISPARITY, METRIC_DEPTH, DepthPrediction, check_kind

#: model_type -> output kind, for families whose kind does not depend on the checkpoint
_KIND_BY_TYPE = {
    "dpt": AFFINE_DISPARITY,  # MiDaS-trained DPT (Intel/dpt-large, dpt-hybrid-midas): relative inverse depth
    "zoedepth": METRIC_DEPTH,
    "glpn": METRIC_DEPTH,
    "depth_pro": METRIC_DEPTH,
    "prompt_depth_anything": METRIC_DEPTH,
}


def infer_output_kind(config: Any) -> str:
    """What a ``transformers`` depth model's output means, from its config.

    Depth Anything (V1/V2) says it in ``depth_estimation_type``: ``"relative"`` →
    affine-invariant disparity, ``"metric"`` → metric depth (metres). DPT (MiDaS) →
    disparity; ZoeDepth, GLPN, Depth Pro, Prompt Depth Anything → metric depth.
    """
    model_type = getattr(config, "model_type", "")
    if model_type == "depth_anything":
        kind = getattr(config, "depth_estimation_type", "relative")
        return METRIC_DEPTH if kind == "metric" else AFFINE_DISPARITY
    if model_type in _KIND_BY_TYPE:
        return _KIND_BY_TYPE[model_type]
    raise CheckpointError(f"cannot tell what a {model_type!r} model predicts — pass "
                          f"output_kind=... (CLI: --opt output_kind=metric_depth or affine_invariant_disparity)")


def _load_processor(source: Union[str, Path]):
    """The slow (PIL/numpy) image processor: the same one on every machine (the fast one needs torchvision)."""
    import transformers
    from transformers import AutoImageProcessor

    major = int(transformers.__version__.split(".")[0])
    kwargs = {"backend": "pil"} if major >= 5 else {"use_fast": False}
    return AutoImageProcessor.from_pretrained(str(source), **kwargs)


class HFDepth(DepthModel):
    """``transformers`` depth model + its image processor (method id ``hf``)."""

    method = "hf"
    output_kind = ""  # per instance: this checkpoint's kind (the class cannot know it)
    predict_options = {"output_kind": {"type": str}}
    size_multiple = 1  # the image processor resizes to its own multiple
    min_size = 2
    default_processing_res = 0  # the image processor picks the resolution
    #: eval/predict: the model resizes itself, so a protocol's processing resolution does not apply
    owns_resize = True
    config_ignore = ("model", "processor", "source")

    @register_to_config
    def __init__(self, model: Any, processor: Any, output_kind: Optional[str] = None, source: str = ""):
        super().__init__()
        self.hf_model = model
        self.processor = processor
        self.output_kind = check_kind(output_kind) if output_kind else infer_output_kind(model.config)
        self.config.update(output_kind=self.output_kind, model_type=getattr(model.config, "model_type", ""))
        self.source = str(source)

    # ------------------------------------------------------------------ description
    def describe_resolution(self) -> str:
        """The processor's resolution rule in words (for reports)."""
        p = self.processor
        size = getattr(p, "size", None)
        if size is not None and not isinstance(size, dict):
            size = vars(size) if hasattr(size, "__dict__") else dict(size)  # transformers' SizeDict
        size = {k: v for k, v in (size or {}).items() if v is not None}
        if "height" in size and "width" in size:
            text = f"processor {size['height']}x{size['width']}"
        else:
            text = "processor " + " ".join(f"{k}={v}" for k, v in size.items())
        if getattr(p, "keep_aspect_ratio", False):
            text += " keep-aspect"
        multiple = getattr(p, "ensure_multiple_of", 1) or 1
        if multiple > 1:
            text += f" x{multiple}"
        return text

    # ------------------------------------------------------------------ inference
    def predict(self, images: torch.Tensor, output_kind: Optional[str] = None, **options: Any) -> DepthPrediction:
        """``images [B,3,H,W]`` in [0,1] -> ``depth [B,1,H,W]`` (the model's values, at the input size).

        The images are handed to the processor as 8-bit arrays (``round(255 x)``), which is
        exactly what an 8-bit file gives ``transformers``' pipeline.
        """
        self.check_options(options)
        kind = check_kind(output_kind) if output_kind else self.output_kind
        b, _, h, w = images.shape
        arrays = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        arrays = [a.permute(1, 2, 0).cpu().numpy() for a in arrays]  # [H,W,3] uint8 each
        inputs = self.processor(images=arrays, return_tensors="pt")
        param = next(self.hf_model.parameters())
        pixel_values = inputs["pixel_values"].to(device=param.device, dtype=param.dtype)  # [B,3,h',w']
        outputs = self.hf_model(pixel_values=pixel_values)
        post = getattr(self.processor, "post_process_depth_estimation", None)
        if post is not None:  # as the transformers pipeline calls it (positional target sizes)
            maps = [r["predicted_depth"] for r in post(outputs, [(h, w)] * b)]
        else:
            maps = list(outputs.predicted_depth)
        out = []
        for d in maps:
            d = d.float().reshape(1, 1, *d.shape[-2:])  # [1,1,h'',w'']
            if tuple(d.shape[-2:]) != (h, w):
                d = torch.nn.functional.interpolate(d, size=(h, w), mode="bilinear", align_corners=False)
            out.append(d)
        return DepthPrediction(torch.cat(out), kind)  # [B,1,H,W]

    # ------------------------------------------------------------------ serialisation
    @classmethod
    def can_load(cls, path: Union[str, Path]) -> bool:
        """Our folder or any ``transformers`` depth-estimation model folder (e.g. Depth Anything)."""
        archs = (read_json(Path(path) / "config.json") or {}).get("architectures") or []
        return super().can_load(path) or any(str(a).endswith("ForDepthEstimation") for a in archs)

    def save_pretrained(self, path: Union[str, Path]) -> Path:
        """The ``transformers`` layout (config.json, model.safetensors, preprocessor_config.json), so
        ``transformers`` loads the folder as is, plus ``diffdepth.json`` (method, output kind)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.hf_model.save_pretrained(str(path))
        self.processor.save_pretrained(str(path))
        self.write_marker(path)
        return path

    @classmethod
    def from_pretrained(cls, source: Union[str, Path], device: Optional[torch.device] = None,
                        dtype: Optional[torch.dtype] = None, output_kind: Optional[str] = None,
                        **kwargs: Any) -> "HFDepth":
        """A hub id or local folder of any ``transformers`` depth-estimation model."""
        from transformers import AutoModelForDepthEstimation

        from ...hub import resolve_checkpoint

        if kwargs:
            raise InputError(f"the hf method does not take {', '.join(sorted(kwargs))} when loading "
                             f"(it accepts output_kind)")
        path = resolve_checkpoint(source)
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{source} is not a transformers model folder (no config.json)")
        if output_kind is None:
            output_kind = (read_json(path / CONFIG_NAME) or {}).get("config", {}).get("output_kind")
        try:
            model = AutoModelForDepthEstimation.from_pretrained(str(path))
            processor = _load_processor(path)
        except (OSError, ValueError, KeyError) as err:
            raise CheckpointError(f"{source}: transformers cannot load it as a depth-estimation model "
                                  f"({str(err).splitlines()[0]})") from None
        return cls(model, processor, output_kind, str(source)).to(device=device, dtype=dtype).eval()

    @classmethod
    def make_tiny(cls, seed: int = 0, family: str = "depth_anything", **overrides: Any) -> "HFDepth":
        return make_tiny_hf(family, seed, **overrides)


def make_tiny_hf(family: str = "depth_anything", seed: int = 0, output_kind: Optional[str] = None,
                 **config: Any) -> HFDepth:
    """A tiny random ``transformers`` depth model with a real image processor.

    ``family``: ``depth_anything`` (DINOv2 backbone, patch 14, processor keeps the aspect ratio
    with sides a multiple of 14, like Depth-Anything-V2) or ``dpt`` (plain ViT, processor resizes
    to a fixed square, like Intel/dpt-large). ``config`` goes to
    the model config (e.g. ``depth_estimation_type="metric"``).
    """
    try:  # transformers >= 5: the PIL backend has its own class
        from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil
    except ImportError:  # transformers 4: the slow processor is the PIL one
        from transformers import DPTImageProcessor as DPTImageProcessorPil

    torch.manual_seed(seed)
    # transformers' default init (std 0.02) gives outputs ~1e-8 through these few layers; 0.2 gives ~1
    config.setdefault("initializer_range", 0.2)
    if family == "depth_anything":
        from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

        backbone = Dinov2Config(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
                                patch_size=14, image_size=56, out_features=["stage1", "stage2", "stage3", "stage4"],
                                reshape_hidden_states=False)
        cfg = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=16, patch_size=14,
                                  neck_hidden_sizes=[8, 16, 16, 16], fusion_hidden_size=8, head_hidden_size=8,
                                  **config)
        model = DepthAnythingForDepthEstimation(cfg)
        processor = DPTImageProcessorPil(size={"height": 70, "width": 70}, keep_aspect_ratio=True,
                                         ensure_multiple_of=14, resample=3,
                                         image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    elif family == "dpt":
        from transformers import DPTConfig, DPTForDepthEstimation

        cfg = DPTConfig(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
                        image_size=32, patch_size=8, backbone_out_indices=[0, 1, 2, 3],
                        neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=8, head_in_index=-1, **config)
        model = DPTForDepthEstimation(cfg)
        processor = DPTImageProcessorPil(size={"height": 64, "width": 64}, keep_aspect_ratio=False,
                                         ensure_multiple_of=1, resample=3,
                                         image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    else:
        raise InputError(f"unknown tiny hf family {family!r}; use depth_anything or dpt")
    return HFDepth(model.eval(), processor, output_kind, f"tiny-{family}").eval()
