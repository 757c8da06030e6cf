"""PrimeDepth (Zavadski, Kalšan, Rother, ACCV 2024): frozen SD preimage -> refiner -> pixel-space heads.

Pipeline (paper Fig. 3): image -> VAE latent (x0.18215) -> one noise step to t=1 -> one pass
of the frozen UNet with the prompt context. At every decoder layer the preimage part
(entering features + regional self- and cross-attention maps of the mirrored encoder layer
and of the previous decoder layer) is fused and injected into the preimage refiner, *while
the UNet runs*: each layer's maps are fused inside a forward pre-hook on the UNet resnet
and dropped at once, so the full preimage never exists in memory and the UNet stops after
its last decoder resnet. The refiner output (512 ch at H/8) feeds a depth head (3 channels,
averaged) and, for training or ``with_segmentation``, a segmentation head, both shaped like
the SD VAE decoder. Output: affine-invariant disparity.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ...backbone.sd import COMPONENTS
from ...errors import ConfigError, InputError
from ...model import CONFIG_NAME, DepthModel, register_to_config
from ...types import AFFINE_DISPARITY, DepthPrediction
from .layout import Plan, make_plan
from .modules import Fusion, Refiner, head_forward, make_head, set_group_norm_eps

class _Done(Exception):
    """Raised from the last decoder-layer hook: the rest of the UNet is not needed."""


class PrimeDepth(DepthModel):
    """PrimeDepth depth model. Constructor arguments are the config (ablation switches included).

    Args:
        sd: a :class:`diffdepth.backbone.StableDiffusion` (frozen here).
        refiner_ratio: refiner channels relative to the UNet decoder (paper: 0.5).
        refiner_out_channels: refiner output width at H/8 = head input (paper: 512).
        refiner_head_dim: attention head width in the refiner (default: the UNet's).
        head_channels / head_layers / head_norm_groups: head shape (SD VAE decoder: 128,256,512,512 / 2 / 32).
        seg_classes: segmentation classes (ADE20K: 150). depth_channels: depth head outputs, averaged (3).
        use_attention / use_self_attention / use_cross_attention / use_features: preimage parts (ablations).
        use_segmentation_head: build the segmentation head (training regulariser).
        loss_space: ``"pixel"`` (paper) or ``"latent"`` (ablation V.Latent: a 3x3 conv predicts the SD
            latent of the depth map, decoded by the frozen VAE).
        injection: ``"per_stage"`` (paper) or ``"block"`` (ablation V.BlockPreIm: every fused part resized
            to the first decoder layer's resolution, concatenated and injected once).
        attn_norm: self-attention map scaling: ``"max"`` (official: divide each (sample, head) map by its
            maximum) or ``"mean"`` (exact regional mean times the number of keys: uniform attention = 1).
        attn_pool: how self-attention keys are pooled into ``regions x regions`` maps: ``"official"``
            (the official resize -> average-pool -> resize of the key grid, as a fixed ``[N, R²]`` value
            matrix) or ``"exact"`` (ablation: exact mean over floor-partitioned key regions).
        regions: self-attention key regions per side (8 -> 64 maps per head).
        head_norm_eps: GroupNorm eps in the depth/segmentation heads (official ``Normalize``: 1e-5).
        vae_norm_eps: GroupNorm eps set on every GroupNorm of the SD VAE (official: 1e-5, as PrimeDepth's
            ``ldm`` VAE uses that ``Normalize``; diffusers builds it with 1e-6); ``None`` leaves the VAE as built.
        latent: image latent: ``"sample"`` (official: a posterior sample, seeded like the noise) or ``"mode"``.
        timestep / noise: the denoising step (t=1) and whether the latent is noised to it.
        prompt: default prompt ("" = empty). channels_last: NHWC memory format at inference.
        captioner: optional callable ``images [B,3,H,W] -> list[str]`` used when no prompt is given
            (not saved with the model).
    """

    method = "primedepth"
    output_kind = AFFINE_DISPARITY
    predict_options = {"seed": {"type": int, "help": "random seed for noise"},
                       "prompt": {"type": str, "help": "text prompt (default empty)"},
                       "flip": {"type": bool, "help": "test-time horizontal flip averaging"},
                       "with_segmentation": {"type": bool}}
    default_processing_res = 1024  # the official inference caps the long side at 1024
    processing_res_is_cap = True   # ... and keeps smaller images at their own size
    min_size = 16
    config_ignore = ("sd", "captioner")
    sd_components = COMPONENTS
    #: what a model saved before ``attn_pool`` / ``head_norm_eps`` / ``vae_norm_eps`` / ``latent`` existed (one
    #: change: no ``attn_pool`` key in its ``diffdepth.json``) was built and trained with; it keeps that behaviour
    legacy_config = {"attn_pool": "exact", "head_norm_eps": 1e-6, "vae_norm_eps": None, "latent": "mode"}
    legacy_weights = ("primedepth.safetensors",)  # the name before issue 12

    @register_to_config
    def __init__(self, sd: nn.Module, *, backbone: Optional[str] = None, refiner_ratio: float = 0.5,
                 refiner_out_channels: int = 512, refiner_head_dim: Optional[int] = None,
                 head_channels: Sequence[int] = (128, 256, 512, 512), head_layers: int = 2, head_norm_groups: int = 32,
                 seg_classes: int = 150, depth_channels: int = 3, use_attention: bool = True,
                 use_self_attention: bool = True, use_cross_attention: bool = True, use_features: bool = True,
                 use_segmentation_head: bool = True, loss_space: str = "pixel", injection: str = "per_stage",
                 attn_norm: str = "max", attn_pool: str = "official", regions: int = 8, head_norm_eps: float = 1e-5,
                 vae_norm_eps: Optional[float] = 1e-5, latent: str = "sample", timestep: int = 1,
                 noise: bool = True, prompt: str = "", channels_last: bool = False,
                 captioner: Optional[Callable] = None):
        super().__init__()
        if loss_space not in ("pixel", "latent"):
            raise ConfigError(f"loss_space must be 'pixel' or 'latent', got {loss_space!r}")
        if attn_norm not in ("max", "mean"):
            raise ConfigError(f"attn_norm must be 'max' or 'mean', got {attn_norm!r}")
        if attn_pool not in ("official", "exact"):
            raise ConfigError(f"attn_pool must be 'official' or 'exact', got {attn_pool!r}")
        if latent not in ("sample", "mode"):
            raise ConfigError(f"latent must be 'sample' or 'mode', got {latent!r}")
        if injection not in ("per_stage", "block"):
            raise ConfigError(f"injection must be 'per_stage' or 'block', got {injection!r}")
        head_channels = [int(c) for c in head_channels]
        if sd.vae is not None and 2 ** (len(head_channels) - 1) != sd.latent_factor:
            raise ConfigError(f"head_channels needs {int(sd.latent_factor).bit_length()} levels to upsample x"
                              f"{sd.latent_factor} (got {len(head_channels)})")
        if not (use_features or use_attention):
            raise ConfigError("switching off both use_features and use_attention leaves the refiner without input")
        self.config["backbone"] = backbone or getattr(sd, "source", None)
        self.sd = sd
        if vae_norm_eps is not None and sd.vae is not None:
            set_group_norm_eps(sd.vae, float(vae_norm_eps))
        sd.requires_grad_(False)
        sd.eval()
        self.captioner = captioner
        self.n_tokens = _context_tokens(sd)
        self.plan: Plan = make_plan(
            sd.unet.config, ratio=refiner_ratio, use_features=use_features,
            use_self_attention=use_attention and use_self_attention,
            use_cross_attention=use_attention and use_cross_attention, n_tokens=self.n_tokens, regions=regions,
            injection=injection, refiner_head_dim=refiner_head_dim)
        self.fusions = nn.ModuleList([Fusion(lp) for lp in self.plan.layers])
        self.block_conv = (nn.Conv2d(self.plan.block_in, self.plan.layers[0].merge_out, 1)
                           if injection == "block" else None)
        self.refiner = Refiner(self.plan, refiner_out_channels)
        if loss_space == "pixel":
            self.depth_head = make_head(refiner_out_channels, depth_channels, head_channels, head_layers,
                                        head_norm_groups, eps=head_norm_eps)
            self.latent_head = None
        else:
            self.depth_head = None
            self.latent_head = nn.Conv2d(refiner_out_channels, sd.vae.config.latent_channels, 3, padding=1)
        self.seg_head = (make_head(refiner_out_channels, seg_classes, head_channels, head_layers, head_norm_groups,
                                   eps=head_norm_eps) if use_segmentation_head else None)
        self.size_multiple = int(sd.size_multiple)
        self._attn_names = sorted({n for lp in self.plan.layers for n in (lp.enc_attention, lp.prev_attention) if n})

    # ------------------------------------------------------------------ parameters
    def trainable_parameters(self) -> List[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("sd.")]

    def train(self, mode: bool = True):
        super().train(mode)
        self.sd.eval()  # frozen: no dropout, ever
        return self

    # ------------------------------------------------------------------ prompt context
    def encode_prompts(self, prompts: Union[None, str, Sequence[str]], batch: int) -> torch.Tensor:
        """``[B,T,D]`` text context: empty prompt (cached), one prompt for all, or one per image."""
        if prompts is None:
            prompts = self.config["prompt"]
        if isinstance(prompts, str):
            prompts = [prompts] * batch
        prompts = list(prompts)
        if len(prompts) != batch:
            raise InputError(f"got {len(prompts)} prompts for {batch} images")
        if all(p == "" for p in prompts):
            return self.sd.encode_prompt(None, batch_size=batch)
        return self.sd.encode_prompt(prompts)

    def _timestep_embedding(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        unet = self.sd.unet
        return unet.time_embedding(unet.time_proj(t).to(dtype))  # [B, temb_dim]

    # ------------------------------------------------------------------ preimage -> refiner
    def _attn_maps(self, lp, self_maps: Dict[str, torch.Tensor], cross_maps: Dict[str, torch.Tensor],
                   size) -> Optional[torch.Tensor]:
        """Stack a layer's attention maps in the official channel order
        ``[prev self, prev cross, enc self, enc cross]`` at the feature map's size."""
        if not lp.attn_in:
            return None
        use_self = self.config["use_attention"] and self.config["use_self_attention"]
        use_cross = self.config["use_attention"] and self.config["use_cross_attention"]
        parts = []
        for name in (lp.prev_attention, lp.enc_attention):
            if name is None:
                continue
            sa, ca = self_maps.pop(name, None), cross_maps.pop(name, None)
            if use_self:
                parts.append(self._normalise_self(sa))
            if use_cross:
                parts.append(ca)
        parts = [p if tuple(p.shape[-2:]) == tuple(size) else
                 F.interpolate(p, size=tuple(size), mode="bilinear", align_corners=False) for p in parts]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # [B,attn_in,h,w]

    def _normalise_self(self, maps: torch.Tensor) -> torch.Tensor:
        """``[B, heads*R², h, w]`` pooled maps -> scaled maps (see ``attn_norm``). ``max`` is the official
        normalisation: each (sample, head) block of R² maps divided by its maximum over maps and pixels."""
        b, c, h, w = maps.shape
        r2 = self.config["regions"] ** 2
        if self.config["attn_norm"] == "mean":
            return maps * float(h * w)
        per_head = maps.reshape(b, c // r2, -1)  # [B,heads,R²·h·w]
        peak = per_head.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(maps.dtype).tiny)
        return (per_head / peak).reshape(b, c, h, w)

    def refine(self, images: Optional[torch.Tensor], context: torch.Tensor,
               generator: Optional[torch.Generator] = None, latent: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``images [B,3,H,W]`` in [0,1] (or an SD ``latent [B,4,H/8,W/8]``) -> refiner output ``[B,C,H/8,W/8]``.

        The frozen SD runs without autograd; fusion and refiner record gradients when the
        caller has grad enabled (training).
        """
        from ...backbone.taps import Preimage, tapped

        sd, plan = self.sd, self.plan
        want_grad = torch.is_grad_enabled()
        dtype = sd.dtype
        b = (images if latent is None else latent).shape[0]
        with torch.no_grad():
            if latent is None:  # official: a posterior sample (drawn before the noise, as there)
                z = sd.encode_image(images, generator, sample=self.config["latent"] == "sample")  # [B,4,h,w]
            else:
                z = latent.to(device=sd.device, dtype=dtype)
            t = torch.full((b,), int(self.config["timestep"]), device=z.device, dtype=torch.long)
            if self.config["noise"]:
                noise = torch.randn(z.shape, generator=generator, dtype=torch.float32,
                                    device=generator.device if generator is not None else "cpu").to(z.device)
                z = sd.add_noise(z, t, noise)
            temb = self._timestep_embedding(t, dtype)  # [B,temb]
        context = context.to(device=z.device, dtype=dtype)
        if context.shape[1] != self.n_tokens:
            raise InputError(f"prompt context has {context.shape[1]} tokens; this model was built for {self.n_tokens}")

        # spatial size per UNet level (stride-2 convs: ceil(n / 2)); refiner upsamplers go to the next
        # level's size, as the official code passes ``output_size`` (odd latent sizes: 13 -> 7 -> 13)
        level_sizes = [tuple(z.shape[-2:])]
        for _ in range(max(lp.scale_level for lp in plan.layers)):
            level_sizes.append(tuple((n + 1) // 2 for n in level_sizes[-1]))
        up_size = [level_sizes[lp.scale_level - 1] if lp.upsample else None for lp in plan.layers]
        pre = Preimage()
        state: Dict[str, Any] = {"stream": None, "fused": []}
        last = len(plan.layers) - 1
        unet = sd.unet
        sizes = {}

        def make_hook(i: int):
            lp = plan.layers[i]

            def hook(module, args, kwargs):
                feat = args[0] if args else kwargs.get("input_tensor", kwargs.get("hidden_states"))
                ctx = torch.enable_grad() if want_grad else contextlib.nullcontext()
                with ctx:
                    maps = self._attn_maps(lp, pre.self_attn, pre.cross_attn, feat.shape[-2:])
                    fused = self.fusions[i](feat if lp.ch_f else None, maps)  # [B,merge_out,h,w]
                    del maps
                    if self.block_conv is None:
                        state["stream"] = self.refiner.layers[i](state["stream"], fused, temb, context, up_size[i])
                    elif fused is not None:
                        state["fused"].append(fused)
                sizes[i] = tuple(feat.shape[-2:])
                if i == last:
                    raise _Done

            return hook

        handles = []
        try:
            for i, lp in enumerate(plan.layers):
                handles.append(unet.get_submodule(lp.resnet).register_forward_pre_hook(make_hook(i), with_kwargs=True))
            with torch.no_grad(), tapped(unet, pre, self_attn=self._attn_names, cross_attn=self._attn_names,
                                         regions=self.config["regions"], pool=self.config["attn_pool"]):
                try:
                    unet(z, t, encoder_hidden_states=context, return_dict=False)
                except _Done:
                    pass
        finally:
            for h in handles:
                h.remove()
        pre.self_attn.clear()
        pre.cross_attn.clear()

        if self.block_conv is not None:  # V.BlockPreIm: one VPD-like block, injected once
            size0 = sizes[0]
            block = torch.cat([f if tuple(f.shape[-2:]) == size0 else
                               F.adaptive_avg_pool2d(f, size0) for f in state["fused"]], dim=1)
            state["fused"].clear()
            stream = self.refiner.layers[0](None, self.block_conv(block), temb, context, up_size[0])
            del block
            for i in range(1, len(plan.layers)):
                stream = self.refiner.layers[i](stream, None, temb, context, up_size[i])
            state["stream"] = stream
        return self.refiner.out(state["stream"])  # [B,C_out,H/8,W/8]

    # ------------------------------------------------------------------ heads
    def depth_from_features(self, h: torch.Tensor) -> torch.Tensor:
        """Refiner output -> disparity ``[B,1,H,W]`` (pixel head: channel mean; latent head: VAE decode)."""
        if self.depth_head is not None:
            return head_forward(self.depth_head, h).mean(dim=1, keepdim=True)
        latent = self.latent_head(h)
        return self.sd.decode_latent(latent).mean(dim=1, keepdim=True)

    def forward(self, images: torch.Tensor, prompts=None, context: Optional[torch.Tensor] = None,
                with_segmentation: bool = False, generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
        """Training/inference forward: ``{"disparity" [B,1,H,W], "features", "latent"?, "segmentation"?}``."""
        if context is None:
            context = self.encode_prompts(prompts, images.shape[0])
        h = self.refine(images, context, generator)
        out: Dict[str, torch.Tensor] = {"features": h}
        if self.depth_head is not None:
            out["disparity"] = head_forward(self.depth_head, h).mean(dim=1, keepdim=True)
        else:
            out["latent"] = self.latent_head(h)  # [B,4,H/8,W/8]
        if with_segmentation:
            if self.seg_head is None:
                raise InputError("this PrimeDepth model has no segmentation head (use_segmentation_head=False)")
            out["segmentation"] = head_forward(self.seg_head, h)  # [B,C,H,W] logits
        return out

    # ------------------------------------------------------------------ inference
    def predict(self, images: torch.Tensor, seed: Optional[int] = 0, prompt=None, with_segmentation: bool = False,
                flip: bool = False, **options: Any) -> DepthPrediction:
        self.check_options(options)
        if images.dim() != 4 or images.shape[1] != 3:
            raise InputError(f"expected images [B,3,H,W], got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % self.size_multiple or w % self.size_multiple:
            raise InputError(f"image size {h}x{w} is not a multiple of {self.size_multiple} (the pipeline pads)")
        ref = next(self.parameters())
        images = images.to(device=ref.device, dtype=ref.dtype)
        with torch.inference_mode():
            if prompt is None and self.captioner is not None:
                prompt = list(self.captioner(images))
            context = self.encode_prompts(prompt, images.shape[0])
            disp, seg = self._predict_once(images, context, seed, with_segmentation)
            if flip:
                disp_f, _ = self._predict_once(images.flip(-1), context, seed, False)
                disp = 0.5 * (disp + disp_f.flip(-1))
            extras = {}
            if seg is not None:
                extras["segmentation"] = seg
        return DepthPrediction(depth=disp.float(), kind=self.output_kind, extras=extras)

    def _predict_once(self, images, context, seed, with_segmentation):
        gen = None
        if self.config["noise"] or self.config["latent"] == "sample":
            gen = torch.Generator("cpu").manual_seed(int(seed) if seed is not None else 0)
        if self.config["channels_last"]:
            images = images.contiguous(memory_format=torch.channels_last)
        h = self.refine(images, context, gen)
        seg = None
        if with_segmentation:
            if self.seg_head is None:
                raise InputError("--save seg needs a segmentation head; this model has none")
            seg = head_forward(self.seg_head, h).argmax(dim=1, keepdim=True)  # [B,1,H,W]
        disp = self.depth_from_features(h)
        return disp, seg

    # ------------------------------------------------------------------ training
    def make_training_task(self, **cfg: Any):
        from .task import PrimeDepthTask

        return PrimeDepthTask(self, **cfg)

    # ------------------------------------------------------------------ serialisation
    @classmethod
    def can_load(cls, path: Union[str, Path]) -> bool:
        """Our folder, or an official PrimeDepth ``.ckpt`` (a file, or a folder holding one)."""
        path = Path(path)
        official = path.suffix == ".ckpt" if path.is_file() else _official_file(path) is not None
        return official or super().can_load(path)

    @classmethod
    def resolve_source(cls, source: Union[str, Path], overrides: Dict[str, Any]) -> Path:
        """An official checkpoint (e.g. the hub default CVL-Heidelberg/PrimeDepth) is converted once
        (options ``sd_config``, ``convert_options``) and its cached folder loaded."""
        from ...hub import resolve_checkpoint

        path = resolve_checkpoint(source, allow_patterns=["*.ckpt", "*.json", "*.safetensors", "*/*"])
        sd_config = overrides.pop("sd_config", "stabilityai/stable-diffusion-2-1")
        convert_options = overrides.pop("convert_options", {})
        official = _official_file(path)
        if official is None:
            return path
        from .convert import converted_official  # loading an official file means converting it

        return converted_official(official, sd_config, **convert_options)

    @classmethod
    def make_tiny(cls, seed: int = 0, **overrides: Any) -> "PrimeDepth":
        """Random tiny PrimeDepth on a tiny SD (few dozen channels; same code paths as the full model)."""
        from ...backbone import make_tiny_sd

        sd = make_tiny_sd(seed=seed)
        opts = dict(refiner_ratio=0.5, refiner_out_channels=16, head_channels=(8, 8, 16, 16), head_layers=1,
                    head_norm_groups=4, seg_classes=5)
        opts.update(overrides)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            model = cls(sd, **opts)
            # the official output conv starts at zero; give the tiny model a random one so untrained
            # tiny predictions are not constant (tests look at their structure)
            nn.init.normal_(model.refiner.out[2].weight, std=0.02)
        return model.eval()

    @classmethod
    def build(cls, backbone: str = "stabilityai/stable-diffusion-2-1", **config: Any) -> "PrimeDepth":
        from ...backbone import StableDiffusion

        config.pop("backbone", None)
        sd = StableDiffusion.from_pretrained(backbone)
        return cls(sd, backbone=str(backbone), **config)


def _context_tokens(sd) -> int:
    tok = getattr(sd, "tokenizer", None)
    if tok is not None and getattr(tok, "model_max_length", None) and tok.model_max_length < 10 ** 6:
        return int(tok.model_max_length)
    te = getattr(sd, "text_encoder", None)
    if te is not None:
        return int(te.config.max_position_embeddings)
    return 77


def _official_file(path: Path) -> Optional[Path]:
    if path.is_file():
        return path if path.suffix in (".ckpt", ".safetensors", ".pt", ".pth") else None
    if (path / CONFIG_NAME).exists():
        return None
    found = sorted(path.glob("*.ckpt"))
    return found[0] if found else None
