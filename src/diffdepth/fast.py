"""Inference fast paths as switches: one call turns them on for any method.

``apply_fast_paths(model, dtype=..., channels_last=..., compile=..., cuda_graphs=...,
vae_tiling_above=..., vae_slicing=...)`` changes the model in place (and returns it);
``diffdepth predict`` exposes each switch as a flag, ``diffdepth bench`` uses the same call.

* ``dtype``: the whole model (VAE included) in fp32, bf16 or fp16. In fp16 a VAE whose
  config says ``force_upcast`` (Stable Diffusion's does: its activations overflow fp16)
  stays in fp32, as diffusers does; the methods cast latents back to the UNet's dtype.
* ``channels_last``: 4-D weights and the input batch in NHWC layout (faster convolutions
  on GPUs and on CPUs with oneDNN).
* ``compile``: ``torch.compile`` of the ``forward`` of every part that carries no
  inference-time hook: the whole UNet where nothing taps it (Marigold), else its resnet,
  feed-forward and resampling blocks (PrimeDepth and the feature-tapping methods hook
  their resnets and swap attention processors per call, which compiled graphs would not
  see); the VAE encoder/decoder, PrimeDepth's fusions, refiner and heads, SeeCoder-VPD's
  decoder. Hooks run outside the compiled code, so taps keep working. ``compile_mode``
  and ``compile_backend`` go to ``torch.compile``.
* ``cuda_graphs``: ``compile`` with ``mode="reduce-overhead"`` (CUDA graphs replayed per
  fixed input shape); CUDA only, refused elsewhere. The pipeline marks each batch as a new
  graph step.
* ``vae_tiling_above=N``: the VAE encodes/decodes images whose side exceeds ``N`` pixels
  in overlapping ``N``-pixel tiles (diffusers' ``enable_tiling``; blended seams, so not
  bit-equal to the untiled pass); smaller images are untouched. ``N`` must be a multiple of
  4 latent pixels (32 px for SD).
* ``vae_slicing``: the VAE codes a batch one image at a time (diffusers'
  ``enable_slicing``): less peak memory, same result.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Union

import torch
from torch import nn

from .errors import InputError

#: diffusers block classes whose ``forward`` is compiled inside a UNet that is tapped
_UNET_BLOCKS = ("ResnetBlock2D", "FeedForward", "Downsample2D", "Upsample2D")


@dataclass
class FastPaths:
    """What :func:`apply_fast_paths` did (also stored as ``model.fast_paths``)."""

    dtype: Optional[torch.dtype] = None
    vae_dtype: Optional[torch.dtype] = None
    channels_last: bool = False
    compiled: int = 0  # number of compiled forwards
    compile_mode: Optional[str] = None
    cuda_graphs: bool = False
    vae_tiling_above: Optional[int] = None
    vae_slicing: bool = False

    def describe(self) -> str:
        parts = [str(self.dtype).replace("torch.", "") if self.dtype else "dtype as loaded"]
        if self.vae_dtype is not None and self.vae_dtype != self.dtype:
            parts.append(f"VAE {str(self.vae_dtype).replace('torch.', '')}")
        if self.channels_last:
            parts.append("channels-last")
        if self.compiled:
            parts.append(f"compiled ({self.compiled} forwards, {self.compile_mode or 'default'})")
        if self.cuda_graphs:
            parts.append("CUDA graphs")
        if self.vae_tiling_above:
            parts.append(f"VAE tiles above {self.vae_tiling_above} px")
        if self.vae_slicing:
            parts.append("VAE slicing")
        return ", ".join(parts)


def vaes_of(model: nn.Module) -> List[nn.Module]:
    """The diffusers ``AutoencoderKL`` parts of a model."""
    from diffusers import AutoencoderKL

    return [m for m in model.modules() if isinstance(m, AutoencoderKL)]


def _unets_of(model: nn.Module) -> List[nn.Module]:
    from diffusers import UNet2DConditionModel

    return [m for m in model.modules() if isinstance(m, UNet2DConditionModel)]


def _is_tapped(model: nn.Module, unet: nn.Module) -> bool:
    """Whether the method hooks into this UNet during inference (PrimeDepth, SeeCoder-VPD, DiffSQL do;
    Marigold runs its backbone's UNet whole and says so with ``taps_unet = False``)."""
    sd = getattr(model, "sd", None)
    return getattr(model, "taps_unet", True) and sd is not None and getattr(sd, "unet", None) is unet


def _compile_forward(module: nn.Module, mode: Optional[str], backend: str) -> None:
    """Replace ``module.forward`` by its compiled version (hooks and ``state_dict`` keys unchanged)."""
    module.forward = torch.compile(module.forward, mode=mode, backend=backend, dynamic=False)
    module._diffdepth_compiled = True


def compile_targets(model: nn.Module) -> List[nn.Module]:
    """The modules whose ``forward`` :func:`apply_fast_paths` compiles (see the module doc)."""
    targets: List[nn.Module] = []
    seen = set()

    def add(m: Optional[nn.Module]):
        if m is not None and id(m) not in seen:
            seen.add(id(m))
            targets.append(m)

    for unet in _unets_of(model):
        if _is_tapped(model, unet):
            for m in unet.modules():
                if type(m).__name__ in _UNET_BLOCKS:
                    add(m)
        else:
            add(unet)
    for vae in vaes_of(model):
        add(vae.encoder)
        add(vae.decoder)
    for name in ("fusions", "refiner", "depth_head", "seg_head", "latent_head", "decoder", "block_conv"):
        part = getattr(model, name, None)
        if isinstance(part, nn.ModuleList):
            for m in part:
                add(m)
        elif name == "refiner" and part is not None and hasattr(part, "layers"):
            for m in part.layers:
                add(m)
            add(getattr(part, "out", None))
        elif isinstance(part, nn.Module):
            add(part)
    return targets


def apply_fast_paths(model: nn.Module, dtype: Union[str, torch.dtype, None] = None, channels_last: bool = False,
                     compile: bool = False, compile_mode: Optional[str] = None, compile_backend: str = "inductor",
                     cuda_graphs: bool = False, vae_tiling_above: Optional[int] = None,
                     vae_slicing: bool = False) -> nn.Module:
    """Turn on inference fast paths in place; returns ``model`` (``model.fast_paths`` says what was done)."""
    from .utils import parse_dtype

    dtype = parse_dtype(dtype)
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    if cuda_graphs and device.type != "cuda":
        raise InputError(f"CUDA graphs need the model on a CUDA device (it is on {device}); drop --cuda-graphs")
    done = FastPaths()

    if dtype is not None:
        model.to(dtype=dtype)
    vaes = vaes_of(model)
    model_dtype = dtype or (params[0].dtype if params else None)
    done.dtype = model_dtype
    for vae in vaes:
        if model_dtype == torch.float16 and getattr(vae.config, "force_upcast", True):
            vae.to(dtype=torch.float32)  # SD's VAE overflows in fp16 (diffusers' force_upcast)
        done.vae_dtype = next(vae.parameters()).dtype

    if channels_last:
        model.to(memory_format=torch.channels_last)
        done.channels_last = True
    model._diffdepth_channels_last = channels_last  # the pipeline lays out input batches to match

    for vae in vaes:
        if vae_tiling_above is not None:
            factor = 2 ** (len(vae.config.block_out_channels) - 1)
            # diffusers steps tiles by 3/4 of their size: a multiple of 4 latent pixels keeps the seams
            # on latent pixels (else the tiled latent comes out a pixel larger than the image's)
            if vae_tiling_above <= 0 or vae_tiling_above % (4 * factor):
                raise InputError(f"VAE tiling threshold must be a positive multiple of {4 * factor} px for this "
                                 f"model, got {vae_tiling_above} (e.g. {max(1, round(vae_tiling_above / (4 * factor))) * 4 * factor})")
            vae.enable_tiling()
            vae.tile_sample_min_size = int(vae_tiling_above)
            vae.tile_latent_min_size = max(1, int(vae_tiling_above) // factor)
            done.vae_tiling_above = int(vae_tiling_above)
        if vae_slicing:
            vae.enable_slicing()
            done.vae_slicing = True

    if cuda_graphs:
        compile, compile_mode = True, "reduce-overhead"
    if compile:
        targets = compile_targets(model)
        # blocks of one class share a code object; each shape of each block is one more cache entry
        # of it, so dynamo's default limit (8) would silently leave most blocks uncompiled
        import torch._dynamo.config as dynamo_config

        for key in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo_config, key):
                setattr(dynamo_config, key, max(getattr(dynamo_config, key), 16 * len(targets)))
        if hasattr(dynamo_config, "accumulated_recompile_limit"):
            dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 64 * len(targets))
        for m in targets:
            _compile_forward(m, compile_mode, compile_backend)
            done.compiled += 1
        done.compile_mode = compile_mode
    done.cuda_graphs = bool(cuda_graphs)
    model._diffdepth_cuda_graphs = bool(cuda_graphs)
    model.fast_paths = done
    return model
