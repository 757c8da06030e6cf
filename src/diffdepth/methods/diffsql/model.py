"""DiffSQL: self-supervised monocular depth with Stable Diffusion features and a dynamic
self-query layer (Zheng et al.; built on Monodepth2 and SQLdepth).

Depth network = ResNet encoder-decoder + (optional) frozen-SD feature branch fused at the
stride-16 skip + self-query head with adaptive bins; a separate PoseNet is trained jointly by
view synthesis (see :mod:`.task`). The output is *relative* depth: monocular self-supervision
fixes depth only up to one unknown scale per training run (evaluation uses per-image median
scaling; ``scale`` multiplies by a known factor).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ...errors import CheckpointError, ConfigError, InputError
from ...model import DepthModel, register_to_config
from ...types import RELATIVE_DEPTH, DepthPrediction
from .networks import (SD_TAPS, TAP_POINTS, DepthDecoder, PatchTokens, PoseNet, ResNetFeatures, SDFeatureBranch,
                       SelfQueryHead, resolve_tap_point)

#: Monodepth2 / SQLdepth's KITTI input size (H, W): every image is resized to exactly this
KITTI_INPUT_SIZE = (192, 640)

#: the tiny configuration used by make_tiny (tests, ``diffdepth make-tiny``)
TINY_CONFIG = dict(encoder="tiny", pose_encoder="tiny", sd_width=16, decoder_features=32, model_dim=16,
                   num_queries=8, num_bins=16, patch_size=4, vit_layers=1, vit_heads=2, pose_width=16)

#: SD components DiffSQL keeps (the empty-prompt context is stored as a buffer instead of a text encoder)
SD_PARTS = ("vae", "unet", "scheduler")


def post_process_disparity(disp: torch.Tensor, disp_flipped: torch.Tensor) -> torch.Tensor:
    """Monodepth's flip post-processing (``batch_post_process_disparity`` of Monodepth2).

    ``disp`` [..., W]: disparity of the image; ``disp_flipped``: disparity of the mirrored
    image, mirrored back. With ``x = linspace(0, 1, W)`` over the columns,
    ``l = 1 − clip(20 (x − 0.05), 0, 1)`` (1 on the left 5 %, ramping to 0 at 10 %) and ``r``
    its mirror: ``out = r·disp + l·disp_flipped + (1 − l − r)·(disp + disp_flipped)/2`` — the
    left border from the mirrored prediction only (it saw that border with context), the right
    border from the original, the plain mean in the middle.
    """
    w = disp.shape[-1]
    x = torch.linspace(0, 1, w, dtype=torch.float64, device=disp.device)
    left = (1.0 - torch.clamp(20 * (x - 0.05), 0, 1)).to(disp.dtype)
    right = torch.flip(left, dims=[0])
    mean = 0.5 * (disp + disp_flipped)
    return right * disp + left * disp_flipped + (1.0 - left - right) * mean


class DiffSQL(DepthModel):
    """DiffSQL depth network + PoseNet.

    Constructor arguments (all saved in ``diffdepth.json``):

    * ``encoder`` / ``pose_encoder``: ``resnet18`` | ``resnet50`` | ``tiny`` | a ``ResNetConfig`` dict;
      ``pretrained_encoder``: load ImageNet weights from the hub (online only) at construction.
    * ``input_size``: ``(H, W)`` the network is trained at and always fed (default 192×640, as
      Monodepth2 / SQLdepth: the pipeline resizes to exactly this, no padding, and the training
      task resizes triplets and intrinsics to it); ``None``: any size, long side 640, padded.
    * ``use_sd``: the SD feature branch on/off (paper Table 4); ``sd_tap``: ``mid0`` | ``up1`` |
      ``up0`` (Table 5); ``sd_tap_point``: for an up-block tap, its last res-block
      (``before_upsampler``) or its up-sampler's output (``after_upsampler``, twice the
      resolution); ``auto`` (default) takes the first whose token count at ``input_size`` is at
      least ``num_queries`` (SD 2.1 ``up0`` at 640×192: 30 tokens before, 120 after -> after)
      and is stored resolved; ``sd_timestep``: UNet timestep of the one pass (no noise added);
      ``sd_width``: fusion width; ``train_sd``: fine-tune the UNet too (default frozen).
    * ``queries``: ``none`` | ``fixed`` | ``dynamic`` (Table 6); ``cost_queries``: ``output`` | ``dynamic``
      (which queries build the self-cost volume of Eq. 7: Q_output of Eq. 6, default, or Q_dynamic
      of Eq. 3 as printed; see :class:`SelfQueryHead`); ``num_queries`` (K, fixed),
      ``num_bins`` (D), ``model_dim`` (E), ``patch_size``, ``vit_layers``, ``vit_heads`` (token
      encoder used when ``use_sd`` is off); ``min_depth`` / ``max_depth``: the bin range.
    * ``decoder_features``: widest decoder width; ``scales``: number of supervised scales
      (1 = SQLdepth's single scale; 4 = Monodepth2's strides 1..8 with auxiliary heads);
      ``pose_width``: PoseNet decoder width.
    """

    method = "diffsql"
    output_kind = RELATIVE_DEPTH
    predict_options = {"scale": {"type": float, "help": "multiply relative depth by a known factor"},
                       "flip": {"type": bool, "help": "test-time horizontal flip averaging"}}
    min_size = 32
    default_processing_res = 640
    config_ignore = ("sd",)
    sd_components = SD_PARTS
    #: checkpoints written before these switches existed: padded long-side input, up0 before its upsampler
    legacy_config = {"input_size": None, "sd_tap_point": "before_upsampler"}

    @register_to_config
    def __init__(self, sd=None, encoder: Union[str, dict] = "resnet18", pose_encoder: Union[str, dict] = "resnet18",
                 pretrained_encoder: bool = False, use_sd: bool = True, sd_tap: str = "up0", sd_timestep: int = 1,
                 sd_width: int = 64, train_sd: bool = False, decoder_features: int = 256, model_dim: int = 64,
                 num_queries: int = 64, num_bins: int = 128, queries: str = "dynamic", cost_queries: str = "output",
                 patch_size: int = 16, vit_layers: int = 4, vit_heads: int = 4, min_depth: float = 0.1,
                 max_depth: float = 100.0, scales: int = 1, pose_width: int = 256, sd_source: Optional[str] = None,
                 input_size: Optional[Sequence[int]] = KITTI_INPUT_SIZE, sd_tap_point: str = "auto"):
        super().__init__()
        if sd_tap not in SD_TAPS:
            raise ConfigError(f"diffsql: sd_tap must be one of {', '.join(SD_TAPS)}, got {sd_tap!r}")
        if sd_tap_point not in TAP_POINTS:
            raise ConfigError(f"diffsql: sd_tap_point must be one of {', '.join(TAP_POINTS)}, got {sd_tap_point!r}")
        if input_size is not None:
            if not (isinstance(input_size, (list, tuple)) and len(input_size) == 2
                    and all(isinstance(v, int) and v > 0 for v in input_size)):
                raise ConfigError(f"diffsql: input_size must be [H, W] (positive integers) or null, got {input_size!r}")
            input_size = (int(input_size[0]), int(input_size[1]))
        if not 1 <= int(scales) <= 4:
            raise ConfigError(f"diffsql: scales must be 1..4, got {scales}")
        if use_sd and sd is None:
            raise ConfigError("diffsql: use_sd is on but no Stable Diffusion was given — build with "
                              "DiffSQL.build(backbone=...) / make_tiny, or set use_sd: false")
        self.fixed_input_size = input_size
        self.use_sd = bool(use_sd)
        self.encoder = ResNetFeatures(encoder, in_frames=1, pretrained=pretrained_encoder)
        self.sd = None
        self.sd_branch = None
        extra = 0
        if self.use_sd:
            self.sd = sd
            # DiffSQL keeps no text encoder: the empty-prompt context is computed once and stored
            ctx = self._initial_context(sd)
            self.register_buffer("context", ctx, persistent=True)  # [1,77,D]
            sd.text_encoder = None
            for part in (sd.vae, sd.unet):
                part.requires_grad_(False)
            if train_sd:
                sd.unet.requires_grad_(True)
            self.size_multiple = math.lcm(32, int(sd.size_multiple))
            try:  # stored resolved, so a checkpoint keeps its architecture whatever the defaults become
                point = resolve_tap_point(sd.unet, sd_tap, sd_tap_point, num_queries,
                                          input_size or KITTI_INPUT_SIZE, int(sd.latent_factor))
            except ValueError as err:
                raise ConfigError(f"diffsql: {err}") from None
            self.config["sd_tap_point"] = point
            self.sd_branch = SDFeatureBranch(sd.unet, sd_tap, width=sd_width, token_dim=model_dim,
                                             after_upsampler=point == "after_upsampler")
            extra = sd_width
        else:
            self.size_multiple = 32
        if input_size is not None and (input_size[0] % self.size_multiple or input_size[1] % self.size_multiple):
            raise ConfigError(f"diffsql: input_size {list(input_size)} must have sides that are multiples of "
                              f"{self.size_multiple} (SD branch {'on' if self.use_sd else 'off'})")
        self.decoder = DepthDecoder(self.encoder.channels, features=decoder_features, out_channels=model_dim,
                                    extra_channels=extra, scales=scales)
        self.tokens = None
        if queries != "none" and not self.use_sd:
            self.tokens = PatchTokens(model_dim, patch_size=patch_size, layers=vit_layers, heads=vit_heads)
        try:  # the head checks ``queries`` / ``cost_queries``
            self.head = SelfQueryHead(model_dim, num_queries, num_bins, queries, cost_queries, min_depth, max_depth)
        except ValueError as err:
            raise ConfigError(f"diffsql: {err}") from None
        self.pose_net = PoseNet(pose_encoder, pretrained=pretrained_encoder, width=pose_width)

    @staticmethod
    def _initial_context(sd) -> torch.Tensor:
        if getattr(sd, "text_encoder", None) is not None and getattr(sd, "tokenizer", None) is not None:
            with torch.no_grad():
                return sd.encode_prompt(None, batch_size=1).detach().float().clone()
        return torch.zeros(1, 77, int(sd.unet.config.cross_attention_dim))

    # ------------------------------------------------------------------ forward
    def sd_features(self, images: torch.Tensor):
        """images [B,3,H,W] in [0,1] -> (fused SD map [B,sd_width,H/8,W/8], tokens [B,L,E])."""
        sd = self.sd
        grad = torch.is_grad_enabled() and self.config["train_sd"]
        with torch.set_grad_enabled(grad):
            z = sd.encode_image(images)  # [B,4,H/8,W/8]
            pre = sd.taps(z, t=self.config["sd_timestep"], context=self.context.expand(z.shape[0], -1, -1),
                          outputs=self.sd_branch.paths, stop_after=self.sd_branch.stop_after)
        taps = {k: v.to(images.dtype) for k, v in pre.outputs.items()}
        return self.sd_branch(taps, tuple(z.shape[-2:]))

    def forward(self, images: torch.Tensor) -> Dict[str, Any]:
        """images [B,3,H,W] in [0,1] (sides multiples of ``size_multiple``) ->
        ``{"depth": [B,1,H/2,W/2], "aux_depth": [[B,1,H/2^(s+1),..] for s = 1..scales-1], ...}``."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise InputError(f"diffsql expects images [B,3,H,W], got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % self.size_multiple or w % self.size_multiple:
            raise InputError(f"diffsql: image sides must be multiples of {self.size_multiple}, got {h}x{w} "
                             f"(the pipeline pads; pad yourself when calling the module directly)")
        feats = self.encoder(images)  # strides 2..32
        extra = tokens = None
        if self.use_sd:
            extra, tokens = self.sd_features(images)
        s, aux = self.decoder(feats, extra)  # S [B,E,H/2,W/2]
        if self.tokens is not None:
            tokens = self.tokens(s)
        out = self.head(s, tokens)
        lo, hi = self.config["min_depth"], self.config["max_depth"]
        out["aux_depth"] = [1.0 / (1.0 / hi + (1.0 / lo - 1.0 / hi) * a) for a in aux]
        return out

    def depth_full(self, images: torch.Tensor) -> torch.Tensor:
        """Relative depth at the input resolution [B,1,H,W] (bilinear upsampling of the stride-2 output)."""
        d = self.forward(images)["depth"]
        return F.interpolate(d, size=images.shape[-2:], mode="bilinear", align_corners=False)

    @torch.inference_mode()
    def predict(self, images: torch.Tensor, **options: Any) -> DepthPrediction:
        """Relative (scale-ambiguous) depth. ``scale`` multiplies it by a known factor (e.g. the
        median ratio measured once against a range sensor); ``flip`` combines it with the
        prediction of the mirrored image in disparity with Monodepth2's edge ramps
        (:func:`post_process_disparity`)."""
        self.check_options(options)
        scale = options.get("scale", None)
        scale = 1.0 if scale is None else float(scale)
        if not (math.isfinite(scale) and scale > 0):
            raise InputError(f"--scale must be a positive number, got {options.get('scale')!r}")
        p = next(self.parameters())
        x = images.to(device=p.device, dtype=p.dtype)
        depth = self.depth_full(x)
        if options.get("flip"):
            flipped = self.depth_full(torch.flip(x, dims=[-1]))
            disp = post_process_disparity(1.0 / depth, 1.0 / torch.flip(flipped, dims=[-1]))
            depth = 1.0 / disp
        return DepthPrediction(depth=(depth * scale).float(), kind=self.output_kind)

    # ------------------------------------------------------------------ training
    def make_training_task(self, **cfg: Any):
        from .task import DiffSQLTask

        return DiffSQLTask(self, **cfg)

    # ------------------------------------------------------------------ serialisation
    @classmethod
    def construct(cls, path: Path, config: Dict[str, Any]) -> "DiffSQL":
        config["pretrained_encoder"] = False  # never fetch ImageNet weights: the checkpoint has trained ones
        if not config.get("use_sd", True):
            return cls(None, **config)
        if not ((path / "unet").is_dir() and (path / "vae").is_dir()):
            raise CheckpointError(f"{path} has no vae/ and unet/ folders but its config uses the SD branch")
        return super().construct(path, config)

    @classmethod
    def make_tiny(cls, seed: int = 0, **overrides: Any) -> "DiffSQL":
        """Random tiny DiffSQL: tiny SD (2 UNet levels), tiny ResNets, 8 queries, 16 bins."""
        from ...backbone import make_tiny_sd

        cfg = dict(TINY_CONFIG, sd_source="tiny")
        cfg.update(overrides)
        sd = make_tiny_sd(seed=seed) if cfg.get("use_sd", True) else None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(sd=sd, **cfg)

    @classmethod
    def build(cls, backbone: str = "stabilityai/stable-diffusion-2-1", **config: Any) -> "DiffSQL":
        """New DiffSQL around a pretrained SD (hub id or diffusers folder); ``use_sd: false`` skips it."""
        sd = None
        if config.get("use_sd", True):
            from ...backbone import StableDiffusion

            root = Path(backbone).expanduser()
            comps = ["vae", "unet", "text_encoder", "tokenizer"]
            if root.is_dir():
                comps = [c for c in comps + ["scheduler"] if (root / c).is_dir()]
            sd = StableDiffusion.from_pretrained(backbone, components=comps)
        config.setdefault("sd_source", str(backbone) if sd is not None else None)
        return cls(sd=sd, **config)
