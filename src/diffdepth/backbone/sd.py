"""Stable Diffusion wrapper: loading, image/latent coding, prompts and one-step taps."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Union

import torch
from torch import nn

from ..errors import CheckpointError
from ..hub import resolve_checkpoint
from ..utils import atomic_dir
from .taps import Preimage, _Stop, tapped

DEFAULT_SD = "stabilityai/stable-diffusion-2-1"
COMPONENTS = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")
MODULES = ("vae", "unet", "text_encoder")  # the nn.Module components (safetensors weights)


def _allow_patterns(components: Iterable[str]) -> List[str]:
    pats = ["model_index.json"]
    for c in components:
        pats += [f"{c}/*.json", f"{c}/*.txt", f"{c}/diffusion_pytorch_model.safetensors", f"{c}/model.safetensors"]
    return pats


class StableDiffusion(nn.Module):
    """The frozen-by-default SD components every method stands on.

    ``vae``, ``unet`` and ``text_encoder`` are submodules (so ``.to()``, ``state_dict`` and
    ``requires_grad_`` reach them); ``tokenizer`` and ``scheduler`` are plain attributes.
    Device and dtype are those of the UNet; every entry point casts its inputs to them.
    ``pad_empty_prompt=False`` tokenises the empty prompt without padding (BOS, EOS: ``[1,2,D]``),
    as diffusers' ``MarigoldDepthPipeline`` does; ``True``: padded to 77 tokens like any prompt.
    """

    def __init__(self, vae=None, unet=None, text_encoder=None, tokenizer=None, scheduler=None,
                 source: Optional[str] = None, frozen: bool = True, pad_empty_prompt: bool = True):
        super().__init__()
        self.vae = vae
        self.unet = unet
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.source = source
        self.pad_empty_prompt = pad_empty_prompt
        if frozen:
            self.freeze()

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(cls, source: Union[str, os.PathLike] = DEFAULT_SD, components: Sequence[str] = COMPONENTS,
                        device=None, dtype=None, frozen: bool = True) -> "StableDiffusion":
        """Load from a diffusers-format folder or hub id (SD 2.x and SD 1.5-family layouts)."""
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        unknown = set(components) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"unknown SD components {sorted(unknown)}; choose from {COMPONENTS}")
        root = resolve_checkpoint(source, allow_patterns=_allow_patterns(components))
        parts = {}
        loaders = {"vae": AutoencoderKL, "unet": UNet2DConditionModel, "text_encoder": CLIPTextModel,
                   "tokenizer": CLIPTokenizer, "scheduler": DDPMScheduler}
        for name in components:
            if not (root / name).is_dir():
                raise CheckpointError(f"{source} has no {name}/ folder — is it a diffusers Stable Diffusion folder?")
            try:
                with _quiet_transformers():
                    parts[name] = loaders[name].from_pretrained(str(root), subfolder=name, **_variant(root / name))
            except (OSError, ValueError, json.JSONDecodeError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise CheckpointError(f"cannot load {name} from {root / name}: {first}") from None
        sd = cls(**parts, source=str(source), frozen=frozen)
        return sd.to(device=device, dtype=dtype)

    def save_pretrained(self, path: Union[str, os.PathLike], components: Optional[Sequence[str]] = None,
                        model_index: bool = True) -> Path:
        """Write diffusers subfolders (safetensors + configs) that :meth:`from_pretrained` reads."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        present = {n: getattr(self, n) for n in COMPONENTS if getattr(self, n) is not None}
        names = list(components) if components is not None else list(present)
        for name in names:
            part = present.get(name)
            if part is None:
                raise ValueError(f"this StableDiffusion has no {name}")
            with atomic_dir(path / name) as tmp, _quiet_transformers():  # follows the user's umask
                part.save_pretrained(tmp, **({"safe_serialization": True} if name in MODULES else {}))
        if model_index:
            index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": _diffusers_version()}
            for name in COMPONENTS:
                part = present.get(name)
                index[name] = [_library_of(part), type(part).__name__] if part is not None else [None, None]
            index.update({"safety_checker": [None, None], "feature_extractor": [None, None],
                          "requires_safety_checker": False})
            (path / "model_index.json").write_text(json.dumps(index, indent=2))
        return path

    def freeze(self) -> "StableDiffusion":
        for m in (self.vae, self.unet, self.text_encoder):
            if m is not None:
                m.requires_grad_(False)
                m.eval()
        return self

    def train(self, mode: bool = True):
        """Frozen parts stay in eval mode (no dropout) even when the owner trains."""
        super().train(mode)
        for m in (self.vae, self.unet, self.text_encoder):
            if m is not None and not any(p.requires_grad for p in m.parameters()):
                m.eval()
        return self

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device if self.unet is not None else next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype if self.unet is not None else next(self.parameters()).dtype

    @property
    def latent_factor(self) -> int:
        if self.vae is None:
            return 8
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this for one UNet pass without internal padding."""
        levels = len(self.unet.config.block_out_channels) if self.unet is not None else 4
        return self.latent_factor * 2 ** (levels - 1)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor) if self.vae is not None else 0.18215

    @property
    def context_dim(self) -> int:
        return int(self.unet.config.cross_attention_dim)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.scheduler.alphas_cumprod

    # ------------------------------------------------------------------ coding
    def encode_image(self, x: torch.Tensor, generator: Optional[torch.Generator] = None,
                     sample: Optional[bool] = None) -> torch.Tensor:
        """``x [B,3,H,W]`` in [0,1] -> scaled latent ``[B,4,H/8,W/8]``: the posterior mode, or a sample
        (``sample=True``, or a ``generator`` given: then seeded; ``sample=False`` forces the mode)."""
        x = x.to(device=self.device, dtype=self.vae.dtype) * 2.0 - 1.0
        dist = self.vae.encode(x).latent_dist
        if sample is None:
            sample = generator is not None
        z = dist.sample(generator=generator) if sample else dist.mode()
        return (z * self.scaling_factor).to(self.dtype)  # an fp32-upcast VAE under an fp16 UNet

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latent -> raw VAE decoder output ``[B,3,H,W]`` (nominally [-1, 1])."""
        z = z.to(device=self.device, dtype=self.vae.dtype) / self.scaling_factor
        return self.vae.decode(z).sample

    def encode_prompt(self, prompts: Union[str, Sequence[str], None] = None,
                      batch_size: Optional[int] = None) -> torch.Tensor:
        """Text context ``[B,77,D]``. ``None`` or all-empty prompts use the cached :meth:`empty_prompt`."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if prompts is None or all(p == "" for p in prompts):
            n = batch_size or (len(prompts) if prompts else 1)
            return self.empty_prompt().expand(n, -1, -1)
        if batch_size is not None and len(prompts) == 1:
            prompts = list(prompts) * batch_size
        return self._encode_text(list(prompts))

    @property
    def pad_empty_prompt(self) -> bool:
        return self._pad_empty

    @pad_empty_prompt.setter
    def pad_empty_prompt(self, pad: bool) -> None:
        self._pad_empty, self._empty_prompt = bool(pad), None  # a new tokenisation: drop the cache

    def empty_prompt(self) -> torch.Tensor:
        """The empty-prompt embedding ``[1,77,D]`` (``[1,2,D]`` unpadded), computed once per device/dtype."""
        cached = self._empty_prompt
        if cached is None or cached.device != self.device or cached.dtype != self.dtype:
            if cached is not None and self.text_encoder is None:  # a stored embedding, no encoder to redo it
                self._empty_prompt = cached.to(device=self.device, dtype=self.dtype)
            else:
                with torch.no_grad():
                    self._empty_prompt = self._encode_text([""], pad=self.pad_empty_prompt)
        return self._empty_prompt

    def _encode_text(self, prompts: List[str], pad: bool = True) -> torch.Tensor:
        if self.text_encoder is None or self.tokenizer is None:
            raise CheckpointError("this model was loaded without a text encoder/tokenizer; prompts are unavailable")
        tok = self.tokenizer(prompts, padding="max_length" if pad else "do_not_pad",
                             max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        ids = tok.input_ids.to(self.text_encoder.device)
        ctx = self.text_encoder(ids)[0]
        return ctx.to(device=self.device, dtype=self.dtype)

    def add_noise(self, z: torch.Tensor, t: Union[int, torch.Tensor], noise: torch.Tensor) -> torch.Tensor:
        """Forward diffusion ``sqrt(a_t) z + sqrt(1 - a_t) noise`` (a_t = cumulative alpha)."""
        ab = self.alphas_cumprod.to(device=z.device, dtype=torch.float32)
        t = torch.as_tensor(t, device=z.device).long().reshape(-1)
        a = ab[t].reshape(-1, 1, 1, 1)
        return (a.sqrt() * z.float() + (1 - a).sqrt() * noise.float()).to(z.dtype)

    # ------------------------------------------------------------------ taps
    def taps(self, z: torch.Tensor, t: Union[int, torch.Tensor] = 1, context: Optional[torch.Tensor] = None,
             noise: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
             inputs: Iterable[str] = (), outputs: Iterable[str] = (), self_attn: Iterable[str] = (),
             cross_attn: Iterable[str] = (), regions: int = 8, stop_after: Optional[str] = None,
             return_output: bool = False, reference: bool = False, pool: str = "exact") -> Preimage:
        """One UNet pass at timestep ``t`` returning the requested feature and attention maps.

        ``noise`` (a tensor) or ``generator`` (seeded Gaussian noise) noises ``z`` to level
        ``t``; with neither, ``z`` enters as is. ``context`` replaces the text context
        (``[B,T,D]`` with ``D == context_dim``); ``None`` means the empty prompt.
        ``reference=True`` computes regional maps by materialising the NxN attention
        (slow and memory-hungry; for tests and ``diffdepth bench taps`` only).
        ``pool``: self-attention key pooling, ``"exact"`` regional means or PrimeDepth's ``"official"``
        resize -> average-pool -> resize (see :mod:`diffdepth.backbone.taps`).
        """
        z = z.to(device=self.device, dtype=self.dtype)
        if noise is None and generator is not None:
            noise = torch.randn(z.shape, generator=generator, device=generator.device, dtype=torch.float32)
        if noise is not None:
            z = self.add_noise(z, t, noise.to(z.device))
        if context is None:
            context = self.empty_prompt().expand(z.shape[0], -1, -1)
        context = context.to(device=self.device, dtype=self.dtype)
        timestep = torch.as_tensor(t, device=z.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(z.shape[0])
        pre = Preimage()
        with tapped(self.unet, pre, inputs, outputs, self_attn, cross_attn, regions, stop_after, reference, pool):
            try:
                out = self.unet(z, timestep, encoder_hidden_states=context, return_dict=False)[0]
                if return_output:
                    pre.output = out
            except _Stop:
                pass
        return pre

    # ------------------------------------------------------------------ layout
    def _level_scale(self, level: int) -> int:
        return self.latent_factor * 2 ** level

    def _resnet_layers(self, prefix: str, sampler: str, level_of) -> List[Dict]:
        """One entry per resnet of ``down_blocks``/``up_blocks`` in execution order."""
        layers = []
        for i, block in enumerate(getattr(self.unet, prefix)):
            n = len(block.resnets)
            attentions = getattr(block, "attentions", None)
            samplers = getattr(block, sampler, None)
            for j, res in enumerate(block.resnets):
                layers.append({
                    "index": len(layers), "block": i,
                    "resnet": f"{prefix}.{i}.resnets.{j}",
                    "attention": f"{prefix}.{i}.attentions.{j}" if attentions is not None and len(attentions) > j else None,
                    sampler[:-1]: f"{prefix}.{i}.{sampler}.0" if (samplers and j == n - 1) else None,
                    "in_channels": res.conv1.in_channels, "out_channels": res.conv2.out_channels,
                    "scale": self._level_scale(level_of(i)),
                })
        return layers

    def encoder_layers(self) -> List[Dict]:
        """One entry per encoder resnet (``down_blocks.i.resnets.j``) in execution order."""
        return self._resnet_layers("down_blocks", "downsamplers", lambda i: i)

    def mid_layers(self) -> List[Dict]:
        block = self.unet.mid_block
        attn = getattr(block, "attentions", None)
        return [{"resnet": "mid_block", "attention": "mid_block.attentions.0" if attn else None,
                 "in_channels": block.resnets[0].conv1.in_channels, "out_channels": block.resnets[-1].conv2.out_channels,
                 "scale": self._level_scale(len(self.unet.down_blocks) - 1)}]

    def decoder_layers(self) -> List[Dict]:
        """One entry per decoder resnet (``up_blocks.i.resnets.j``) in execution order (12 for SD)."""
        levels = len(self.unet.up_blocks)
        return self._resnet_layers("up_blocks", "upsamplers", lambda i: levels - 1 - i)

    def transformer_info(self, name: str) -> Dict:
        """Heads, channels and image-relative scale of a transformer (attention) module."""
        module = self.unet.get_submodule(name)
        attn = module.transformer_blocks[0].attn1
        parts = name.split(".")
        if parts[0] == "down_blocks":
            scale = self._level_scale(int(parts[1]))
        elif parts[0] == "up_blocks":
            scale = self._level_scale(len(self.unet.up_blocks) - 1 - int(parts[1]))
        else:
            scale = self._level_scale(len(self.unet.down_blocks) - 1)
        return {"heads": attn.heads, "channels": attn.inner_dim if hasattr(attn, "inner_dim") else attn.to_q.out_features,
                "scale": scale}


class _quiet_transformers:
    """Silence transformers' per-shard progress bars while we save/load components."""

    def __enter__(self):
        from transformers.utils import logging as tlog

        self._was = tlog.is_progress_bar_enabled()
        tlog.disable_progress_bar()

    def __exit__(self, *exc):
        from transformers.utils import logging as tlog

        if self._was:
            tlog.enable_progress_bar()


def _variant(folder: Path) -> dict:
    """``variant="fp16"`` for a sub-folder with only fp16 weights (some hub repos ship both, some one)."""
    names = [f.name for f in folder.glob("*.safetensors")]
    return {"variant": "fp16"} if names and all(".fp16." in n for n in names) else {}


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def _library_of(obj) -> str:
    return type(obj).__module__.split(".")[0]
