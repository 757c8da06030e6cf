"""SeeCoder-VPD: metric depth from a Stable Diffusion UNet conditioned on image-semantic tokens.

"Leveraging Stable Diffusion for Monocular Depth Estimation via Image Semantic Encoding"
(arXiv 2502.01666): the VPD pipeline (Zhao et al. 2023) with CLIP text replaced by the
148 semantic tokens of SeeCoder (Xu et al. 2023), whose feature transformer is given
dilated convolutions and spatial attention. Pipeline::

    image [B,3,H,W] in [0,1] --frozen VAE--> z [B,4,H/8,W/8]    (posterior mode, t = 1, no noise)
    image --SeeCoder(+DC+SA)--> s [B,148,768] --linear--> context [B,148,D_unet]
    UNet(z, t=1, context) decoder taps at 1/64, 1/32, 1/16, 1/8 (VPD's output blocks 1, 4, 7, 11)
      --aggregation at 1/32--> task decoder --> sigmoid x max_depth --> depth [B,1,H,W] metres

Switches (constructor arguments, saved in ``diffdepth.json``):
``conditioning`` seecoder | text (CLIP text of ``prompt``) | learned (``num_learned_tokens``
tokens) | scene (VPD's depth model: one token per image, the stored CLIP embedding of the
image's scene class among ``scene_classes`` refined by VPD's text adapter, ``e + gamma * MLP(e)``;
the class is given per call, ``scene=NAME``); ``seecoder.enhancement`` none | dc | sa | dc+sa; ``train_seecoder`` enhancement
(paper: Swin and SeeCoder frozen, DC+SA trainable) | decoder | all | none; ``train_unet``
(paper: yes, at a small learning-rate multiplier set by the recipe on ``sd.unet.``);
``unet_init`` pretrained (VPD: fine-tune the backbone's UNet) | scratch (same architecture,
random init: the paper's "trained from scratch"); ``context_projection`` null (auto: a learned
linear map only when SeeCoder's 768 differs from the UNet's context, e.g. 1024 for SD 2.x) |
true | false. The default backbone is SD 1.5 (``runwayml/stable-diffusion-v1-5`` family), as
VPD: context 768 = SeeCoder's width, so no projection. ``scale_latents`` false (VPD feeds the
UNet the VAE posterior mode unscaled, ``encoder_vq.encode(x).mode()``) | true (x 0.18215, the
diffusers convention; what checkpoints saved before this switch used, and still use on load).
The VAE and text encoder are always frozen. Padded inputs: the aggregated 1/32 map is cropped
to ceil(h/32) x ceil(w/32) cells before the decoder, as VPD does (see :meth:`SeeCoderVPD.head`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ...backbone.sd import COMPONENTS
from ...errors import ConfigError, InputError
from ...model import DepthModel, register_to_config
from ...types import METRIC_DEPTH, DepthPrediction
from .head import DepthDecoder, FeatureAggregation
from .seecoder import SeeCoder, parse_enhancement

#: SeeCoder as published (Swin-L, dim 768, 6 + 9 layers, 4 + 144 queries) with DC+SA.
SEECODER_LARGE: dict = dict(
    swin_embed_dim=192, swin_depths=[2, 2, 18, 2], swin_heads=[6, 12, 24, 48], swin_window=12,
    dim=768, encoder_layers=6, encoder_heads=8, encoder_ff=1024, encoder_dropout=0.0,
    encoder_attention="pointwise", query_layers=9, query_heads=8, query_ff=2048, num_queries=[4, 144],
    fea2d_pos=False, gn_groups=32, enhancement="dc+sa", dc_rates=[1, 2, 3], sa_kernel=7)

#: a few-dozen-channel SeeCoder with the same structure (tests, make-tiny).
SEECODER_TINY: dict = dict(
    SEECODER_LARGE, swin_embed_dim=8, swin_depths=[2, 2, 2, 2], swin_heads=[1, 1, 2, 2], swin_window=4,
    dim=32, encoder_layers=2, encoder_heads=4, encoder_ff=32, query_layers=3, query_heads=4, query_ff=32,
    gn_groups=8)

CONDITIONINGS = ("seecoder", "text", "learned", "scene")
TRAIN_SEECODER = ("enhancement", "decoder", "all", "none")
UNET_INITS = ("pretrained", "scratch")
#: VPD (and so SeeCoder-VPD) runs on SD 1.5, whose 768-wide context is SeeCoder's own width.
DEFAULT_BACKBONE = "runwayml/stable-diffusion-v1-5"


class SeeCoderVPD(DepthModel):
    method = "seecoder-vpd"
    output_kind = METRIC_DEPTH
    predict_options = {"flip": {"type": bool, "help": "test-time horizontal flip averaging"},
                       "sliding_windows": {"type": int}, "scene": {"type": str}}
    min_size = 32
    default_processing_res = 0  # metric model: keep the input resolution (KITTI 352x1216)
    config_ignore = ("sd",)
    sd_components = COMPONENTS  # the UNet included: it is fine-tuned
    legacy_config = {"scale_latents": True}  # saved before the switch existed: latents were scaled

    @register_to_config
    def __init__(self, sd, conditioning: str = "seecoder", seecoder: Optional[dict] = None,
                 prompt: str = "a photo of a street scene", num_learned_tokens: int = 148,
                 max_depth: float = 80.0, agg_dim: int = 1536, num_deconv: int = 3, deconv_filters: int = 32,
                 head_channels: int = 192, head_norm: str = "batch", train_seecoder: str = "enhancement",
                 train_unet: bool = True, timestep: int = 1, context_projection: Optional[bool] = None,
                 unet_init: str = "pretrained", scale_latents: bool = False,
                 scene_classes: Optional[list] = None):
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ConfigError(f"conditioning={conditioning!r} is not one of {', '.join(CONDITIONINGS)}")
        if train_seecoder not in TRAIN_SEECODER:
            raise ConfigError(f"train_seecoder={train_seecoder!r} is not one of {', '.join(TRAIN_SEECODER)}")
        if not max_depth > 0:
            raise ConfigError(f"max_depth={max_depth} must be > 0")
        if unet_init not in UNET_INITS:
            raise ConfigError(f"unet_init={unet_init!r} is not one of {', '.join(UNET_INITS)}")
        if context_projection not in (None, True, False):
            raise ConfigError(f"context_projection={context_projection!r} must be true, false or null (auto)")
        sc_cfg = dict(SEECODER_LARGE, **(seecoder or {}))
        unknown = set(sc_cfg) - set(SEECODER_LARGE)
        if unknown:
            raise ConfigError(f"unknown seecoder option(s) {sorted(unknown)}; known: {sorted(SEECODER_LARGE)}")
        parse_enhancement(sc_cfg["enhancement"])
        self.config.update(seecoder=sc_cfg, max_depth=float(max_depth),
                           scene_classes=[str(c) for c in scene_classes] if scene_classes else None)
        self.sd = sd
        self.size_multiple = int(sd.size_multiple)
        ctx_dim = int(sd.unet.config.cross_attention_dim)

        # ---- conditioning
        self.seecoder = None
        self.context_proj: nn.Module = nn.Identity()
        self.learned_tokens = None
        if conditioning == "seecoder":
            self.seecoder = SeeCoder(**sc_cfg)
            if context_projection is False and sc_cfg["dim"] != ctx_dim:
                raise ConfigError(
                    f"context_projection=false but SeeCoder gives {sc_cfg['dim']}-wide tokens and the UNet's context "
                    f"is {ctx_dim} wide (SD 2.x: 1024) — use an SD 1.5-family backbone (context 768) or set "
                    "context_projection: true")
            if context_projection or (context_projection is None and sc_cfg["dim"] != ctx_dim):
                self.context_proj = nn.Linear(sc_cfg["dim"], ctx_dim)  # random init: trained with the head
        elif conditioning == "learned":
            self.learned_tokens = nn.Parameter(torch.randn(int(num_learned_tokens), ctx_dim) * 0.02)
        elif conditioning == "scene":
            if not scene_classes:
                raise ConfigError("conditioning='scene' needs scene_classes (the scene names, e.g. VPD's 27 NYUv2 ones)")
            # VPD: CLIP text embeddings of the classes (a buffer: set by `diffdepth convert vpd` or by the user)
            self.register_buffer("scene_embeddings", torch.zeros(len(scene_classes), ctx_dim))
            self.text_adapter = nn.Sequential(nn.Linear(ctx_dim, ctx_dim), nn.GELU(), nn.Linear(ctx_dim, ctx_dim))
            self.text_gamma = nn.Parameter(torch.full((ctx_dim,), 1e-4))
        elif sd.text_encoder is None or sd.tokenizer is None:
            raise ConfigError("conditioning='text' needs a Stable Diffusion with text_encoder and tokenizer")

        # ---- UNet taps (VPD: the layer before the last of each up block but the last, and the last block)
        self.taps, channels, scales = self.vpd_taps(sd)
        self.tap_scales = scales
        target = sorted(scales, reverse=True)[1] if len(scales) > 1 else scales[0]
        self.aggregation = FeatureAggregation(channels, scales, agg_dim, target)
        if head_norm not in ("batch", "group"):
            raise ConfigError(f"head_norm={head_norm!r} must be 'batch' (VPD) or 'group'")
        self.decoder = DepthDecoder(agg_dim, target, max_depth, num_deconv, deconv_filters, head_channels, head_norm)

        # ---- what trains
        sd.freeze()
        sd.unet.requires_grad_(bool(train_unet))
        for name in ("conv_norm_out", "conv_out"):  # after the last tap: never used (VPD deletes them)
            part = getattr(sd.unet, name, None)
            if part is not None:
                part.requires_grad_(False)
        if self.seecoder is not None:
            self.seecoder.requires_grad_(train_seecoder == "all")
            if train_seecoder == "decoder":
                self.seecoder.imdecoder.requires_grad_(True)
                self.seecoder.qtransformer.requires_grad_(True)
            if train_seecoder in ("enhancement", "decoder"):
                for p in self.seecoder.enhancement_parameters():
                    p.requires_grad_(True)

    # ------------------------------------------------------------------ structure
    @staticmethod
    def vpd_taps(sd) -> tuple[list[str], list[int], list[int]]:
        """UNet module paths VPD reads, with their channels and image-relative scales.

        For every up block but the last: its second-to-last layer (attention if it has one,
        else the resnet) — ldm ``output_blocks`` 1, 4, 7 for SD, i.e. before the upsampler;
        for the last up block: its output. Derived from the UNet config, never hard-coded.
        """
        layers = sd.decoder_layers()
        blocks = sorted({l["block"] for l in layers})
        names, chans, scales = [], [], []
        for b in blocks:
            mine = [l for l in layers if l["block"] == b]
            if b == blocks[-1]:
                names.append(f"up_blocks.{b}")
                chans.append(mine[-1]["out_channels"])
                scales.append(mine[-1]["scale"])
            else:
                l = mine[-2] if len(mine) > 1 else mine[-1]
                names.append(l["attention"] or l["resnet"])
                chans.append(l["out_channels"])
                scales.append(l["scale"])
        return names, chans, scales

    def train(self, mode: bool = True):
        """Frozen parts stay in eval mode (no dropout / positional jitter) while the rest trains."""
        super().train(mode)
        self.sd.train(mode)
        if self.seecoder is not None:
            for m in (self.seecoder.imencoder, self.seecoder.imdecoder, self.seecoder.qtransformer):
                if not any(p.requires_grad for p in m.parameters()):
                    m.eval()
        return self

    # ------------------------------------------------------------------ forward
    def scene_ids(self, scene, batch: int) -> torch.Tensor:
        """``scene`` (a name, an index, or one per image) -> class indices [batch] (conditioning 'scene')."""
        names = self.config["scene_classes"] or []
        if scene is None:
            raise InputError("conditioning 'scene' (VPD) needs each image's scene class: pass scene=NAME "
                             f"(--opt scene=NAME), one of {', '.join(names)}")
        if isinstance(scene, torch.Tensor):
            ids = scene.long().reshape(-1).tolist()
        else:
            items = [scene] if isinstance(scene, (str, int)) else list(scene)
            ids = []
            for item in items:
                if isinstance(item, str) and not item.isdigit():
                    if item not in names:
                        raise InputError(f"scene={item!r} is not one of {', '.join(names)}")
                    ids.append(names.index(item))
                else:
                    ids.append(int(item))
        if any(not 0 <= i < len(names) for i in ids):
            raise InputError(f"scene index out of range 0..{len(names) - 1}: {ids}")
        if len(ids) == 1:
            ids = ids * batch
        if len(ids) != batch:
            raise InputError(f"{len(ids)} scene classes for {batch} images")
        return torch.tensor(ids, dtype=torch.long, device=self.scene_embeddings.device)

    def context(self, images: torch.Tensor, scene=None) -> torch.Tensor:
        """Cross-attention context [B,T,D_unet] for images [B,3,H,W] in [0,1]."""
        b = images.shape[0]
        cond = self.config["conditioning"]
        if cond == "scene":  # VPD TextAdapterDepth: e + gamma * fc(e), one token per image
            e = self.scene_embeddings[self.scene_ids(scene, b)]  # [B,D]
            return (e + self.text_gamma * self.text_adapter(e)).unsqueeze(1)  # [B,1,D]
        if cond == "seecoder":
            tokens = self.seecoder(images)  # [B,148,dim]
            return self.context_proj(tokens)  # [B,148,D_unet]
        if cond == "learned":
            return self.learned_tokens.unsqueeze(0).expand(b, -1, -1)
        with torch.no_grad():
            return self.sd.encode_prompt([self.config["prompt"]], batch_size=b)  # [B,77,D_unet]

    def forward(self, images: torch.Tensor, scene=None) -> torch.Tensor:
        """images [B,3,H,W] in [0,1] (any size) -> metric depth [B,1,H,W] in (0, max_depth).
        ``scene``: the scene class(es) for conditioning 'scene' (ignored otherwise)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(f"expected images [B,3,H,W], got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        m = self.size_multiple
        ph, pw = (-h) % m, (-w) % m
        # pad like VPD (zeros in [-1,1], i.e. 0.5 here) so the UNet levels divide evenly
        padded = F.pad(images, (0, pw, 0, ph), value=0.5) if (ph or pw) else images
        with torch.no_grad():
            z = self.sd.encode_image(padded)  # [B,4,H'/8,W'/8] x the VAE scaling factor
            if not self.config["scale_latents"]:
                z = z / self.sd.scaling_factor  # VPD: encoder_vq.encode(x).mode(), unscaled
        ctx = self.context(images, scene)
        t = self.config["timestep"]
        pre = self.sd.taps(z, t=t, context=ctx, outputs=self.taps, stop_after=self.taps[-1])
        feats = [pre.outputs[n] for n in self.taps]  # [B,C_i,H'/s_i,W'/s_i]
        return self.head(feats, (h, w))

    def head(self, feats: list, size: tuple[int, int]) -> torch.Tensor:
        """UNet taps of the padded input -> depth [B,1,h,w] for the unpadded ``size`` = (h, w).

        As VPD: the aggregated 1/S map of the padded input (its GroupNorm over the whole map) is
        cropped to ceil(h/S) x ceil(w/S) cells before the decoder, so cells made of padding never
        reach the decoder or its BatchNorm statistics."""
        h, w = size
        s = self.aggregation.target_scale
        m = self.size_multiple
        dtype = next(self.decoder.parameters()).dtype
        x = self.aggregation([f.to(dtype) for f in feats], (-(-h // m) * m, -(-w // m) * m))  # [B,agg,H'/S,W'/S]
        x = x[..., :-(-h // s), :-(-w // s)]  # [B,agg,ceil(h/S),ceil(w/S)]
        depth = self.decoder(x)  # [B,1,ceil(h/S)*S,ceil(w/S)*S]
        return depth[..., :h, :w]

    # ------------------------------------------------------------------ inference
    def predict(self, images: torch.Tensor, flip: bool = False, sliding_windows: int = 0, scene=None,
                **options: Any) -> DepthPrediction:
        """Metric depth in metres. ``flip``: average with the prediction of the mirrored image.
        ``sliding_windows=n`` (n >= 2, wide images): n square H x H windows at equal steps
        across the width, each predicted separately and averaged where they overlap
        (VPD/ECoDepth "shift window" test)."""
        self.check_options(options)
        param = next(self.parameters())
        images = images.to(device=param.device, dtype=param.dtype)
        n = int(sliding_windows or 0)
        if n < 0:
            raise InputError(f"sliding_windows={sliding_windows} must be >= 0")
        with torch.inference_mode():
            b, _, h, w = images.shape
            if n >= 2 and w > h:
                step = (w - h) // (n - 1)
                starts = [i * step for i in range(n)]
                acc = images.new_zeros(b, 1, h, w)
                count = images.new_zeros(1, 1, 1, w)
                crops = torch.cat([images[..., s:s + h] for s in starts], dim=0)  # [n*B,3,h,h]
                ids = self.scene_ids(scene, b).repeat(n) if self.config["conditioning"] == "scene" else None
                pred = self._predict_flip(crops, flip, ids)
                for i, s in enumerate(starts):
                    acc[..., s:s + h] += pred[i * b:(i + 1) * b]
                    count[..., s:s + h] += 1
                depth = acc / count.clamp_min(1)
            else:
                ids = self.scene_ids(scene, b) if self.config["conditioning"] == "scene" else None
                depth = self._predict_flip(images, flip, ids)
        return DepthPrediction(depth=depth.float(), kind=self.output_kind)

    def _predict_flip(self, images: torch.Tensor, flip: bool, scene=None) -> torch.Tensor:
        if not flip:
            return self(images, scene)
        both = self(torch.cat([images, images.flip(-1)], dim=0), None if scene is None else scene.repeat(2))
        b = images.shape[0]
        return 0.5 * (both[:b] + both[b:].flip(-1))

    # ------------------------------------------------------------------ training
    def make_training_task(self, **cfg: Any):
        from .task import SeeCoderVPDTask

        return SeeCoderVPDTask(self, **cfg)

    # ------------------------------------------------------------------ serialisation
    @classmethod
    def from_pretrained(cls, source: Union[str, Path], device: Optional[torch.device] = None,
                        dtype: Optional[torch.dtype] = None, seecoder_weights: Optional[str] = None,
                        **overrides: Any) -> "SeeCoderVPD":
        """:meth:`DepthModel.from_pretrained`; ``seecoder_weights`` then replaces SeeCoder's weights."""
        model = super().from_pretrained(source, **overrides)
        if seecoder_weights:
            model._load_seecoder(seecoder_weights)
        return model.to(device=device, dtype=dtype)

    def _load_seecoder(self, weights) -> None:
        if self.seecoder is None:
            raise ConfigError("seecoder_weights given but conditioning is not 'seecoder'")
        from .convert import load_seecoder_weights

        load_seecoder_weights(self.seecoder, weights)

    @classmethod
    def build(cls, backbone: str = DEFAULT_BACKBONE, seecoder_weights: Optional[str] = None,
              **config: Any) -> "SeeCoderVPD":
        """New model around a pretrained SD (hub id or diffusers folder; default SD 1.5 as VPD).

        ``seecoder_weights``: the output of ``diffdepth convert seecoder`` (a safetensors file
        or a folder holding ``seecoder.safetensors``) or the official
        ``seecoder-v1-0.safetensors`` itself; omitted, SeeCoder starts random.
        ``unet_init="scratch"``: the UNet keeps the backbone's architecture but starts from
        diffusers' random initialisation (the paper's "trained from scratch"); the default
        ``pretrained`` fine-tunes the backbone's UNet as VPD does.
        """
        from ...backbone import StableDiffusion

        comps = ["vae", "unet"] + (["text_encoder", "tokenizer"] if config.get("conditioning") == "text" else [])
        sd = StableDiffusion.from_pretrained(backbone, components=comps)
        if config.get("unet_init", "pretrained") == "scratch":
            sd.unet = cls.fresh_unet(sd.unet)
        model = cls(sd, **config)
        if seecoder_weights:
            model._load_seecoder(seecoder_weights)
        return model

    @staticmethod
    def fresh_unet(unet):
        """A UNet of ``unet``'s architecture with diffusers' random initialisation (same dtype/device)."""
        from diffusers import UNet2DConditionModel

        p = next(unet.parameters())
        return UNet2DConditionModel.from_config(unet.config).to(device=p.device, dtype=p.dtype)

    @classmethod
    def make_tiny(cls, seed: int = 0, **overrides: Any) -> "SeeCoderVPD":
        """Tiny random model shaped like the default: a 4-level tiny SD 1.5 (conv projections,
        epsilon, context 32 = the tiny SeeCoder's width, so no projection; taps at 1/64..1/8 and
        aggregation at 1/32 as VPD) + tiny SeeCoder + small head. ``arch="sd21"``: the SD 2.x
        shape instead (linear projections, context 48, so SeeCoder's tokens are projected)."""
        from ...backbone import make_tiny_sd

        seecoder_weights = overrides.pop("seecoder_weights", None)
        arch = overrides.pop("arch", "sd15")
        if arch not in ("sd15", "sd21"):
            raise ConfigError(f"arch={arch!r} must be 'sd15' (default) or 'sd21'")
        sd = make_tiny_sd(seed=seed, arch=arch, cross_attention_dim=32 if arch == "sd15" else 48,
                          block_out_channels=(16, 16, 32, 32))
        if overrides.get("unet_init") == "scratch":  # tiny UNets are random anyway; keep the code path
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + 1)
                sd.unet = cls.fresh_unet(sd.unet)
        cfg = dict(seecoder=dict(SEECODER_TINY), agg_dim=32, head_channels=16, deconv_filters=8,
                   num_learned_tokens=8, max_depth=10.0, head_norm="group")
        sc = overrides.pop("seecoder", None)
        if sc:
            cfg["seecoder"] = dict(SEECODER_TINY, **sc)
        cfg.update(overrides)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(sd, **cfg)
        if seecoder_weights:
            model._load_seecoder(seecoder_weights)
        return model
