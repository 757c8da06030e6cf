"""PrimeDepth building blocks: preimage fusion, the preimage refiner and the pixel-space heads.

Sub-module names follow the official LDM-style code (``in_layers``/``emb_layers``/
``out_layers``, ``out.0``/``out.2``, transformer internals as in diffusers, which match LDM's
``SpatialTransformer`` with linear projections) so checkpoint conversion is a renaming.
All modules are tensor in / tensor out.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layout import LayerPlan, Plan, norm_groups


def conv1x1(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1)


def zero_(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class GroupNormF32(nn.GroupNorm):
    """GroupNorm computed in float32 (official ``GroupNorm_leq32``: stable in fp16/bf16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return super().forward(x)
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


def group_norm(channels: int) -> GroupNormF32:
    return GroupNormF32(norm_groups(channels), channels)


class ResBlock(nn.Module):
    """Residual block with a timestep-embedding bias (LDM ``ResBlock``, zero-initialised output conv)."""

    def __init__(self, cin: int, cout: int, temb_dim: int):
        super().__init__()
        self.in_layers = nn.Sequential(group_norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(temb_dim, cout))
        self.out_layers = nn.Sequential(group_norm(cout), nn.SiLU(), nn.Dropout(0.0),
                                        zero_(nn.Conv2d(cout, cout, 3, padding=1)))
        self.skip_connection = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)  # [B,cout,h,w]
        h = h + self.emb_layers(temb).to(h.dtype)[:, :, None, None]
        h = self.out_layers(h)
        return self.skip_connection(x) + h


class Upsample(nn.Module):
    """Nearest x2 (or to ``size``) then 3x3 conv (LDM ``Upsample``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: Optional[Sequence[int]] = None) -> torch.Tensor:
        x = F.interpolate(x, size=tuple(size), mode="nearest") if size is not None else \
            F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x)


def make_transformer(channels: int, heads: int, head_dim: int, context_dim: int) -> nn.Module:
    """A spatial transformer (self-attn, cross-attn on the prompt, GEGLU FF; linear projections).

    diffusers' ``Transformer2DModel`` is LDM's ``SpatialTransformer`` with the same parameter
    names; it uses ``scaled_dot_product_attention``. ``proj_out`` starts at zero (LDM).
    """
    from diffusers.models import Transformer2DModel

    t = Transformer2DModel(num_attention_heads=heads, attention_head_dim=head_dim, in_channels=channels,
                           cross_attention_dim=context_dim, use_linear_projection=True,
                           norm_num_groups=norm_groups(channels))
    zero_(t.proj_out)
    return t


class Fusion(nn.Module):
    """Fuse one decoder layer's preimage (PrimeDepth Fig. 2, bottom right).

    ``features [B,base_in,h,w]`` -> 1x1 conv -> ``ch_f``; stacked attention maps
    ``[B,attn_in,h,w]`` -> 1x1 conv -> ``attn_proj``; concat -> 1x1 merge -> ``ch_f + ch_a``.
    """

    def __init__(self, lp: LayerPlan):
        super().__init__()
        self.features = conv1x1(lp.base_in, lp.ch_f) if lp.ch_f else None
        self.attention = conv1x1(lp.attn_in, lp.attn_proj) if lp.attn_in else None
        self.merge = conv1x1(lp.merge_in, lp.merge_out) if lp.merge_in else None

    def forward(self, features: Optional[torch.Tensor], attn_maps: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        parts = []
        if self.features is not None:
            parts.append(self.features(features))  # [B,ch_f,h,w]
        if self.attention is not None:
            parts.append(self.attention(attn_maps))  # [B,attn_proj,h,w]
        if self.merge is None:
            return None
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        del parts
        return self.merge(x)  # [B,ch_f+ch_a,h,w]


class RefinerLayer(nn.Module):
    def __init__(self, lp: LayerPlan, temb_dim: int, context_dim: int):
        super().__init__()
        self.resnet = ResBlock(lp.refiner_in, lp.refiner_out, temb_dim)
        self.attention = (make_transformer(lp.refiner_out, lp.refiner_heads, lp.refiner_head_dim, context_dim)
                          if lp.refiner_heads else None)
        self.upsample = Upsample(lp.refiner_out) if lp.upsample else None

    def forward(self, stream: Optional[torch.Tensor], injected: Optional[torch.Tensor], temb: torch.Tensor,
                context: torch.Tensor, size: Optional[Sequence[int]] = None) -> torch.Tensor:
        if stream is None:
            x = injected
        elif injected is None:
            x = stream
        else:
            x = torch.cat([stream, injected], dim=1)  # official order: refiner stream first
        x = self.resnet(x, temb)
        if self.attention is not None:
            x = self.attention(x, encoder_hidden_states=context, return_dict=False)[0]
        if self.upsample is not None:
            x = self.upsample(x, size)
        return x


class Refiner(nn.Module):
    """Preimage refiner: a mirror of the UNet decoder at ``ratio`` channels (PrimeDepth Sec. 3.3),
    ending in GroupNorm -> SiLU -> zero-initialised 3x3 conv to ``out_channels`` at H/8."""

    def __init__(self, plan: Plan, out_channels: int):
        super().__init__()
        self.layers = nn.ModuleList([RefinerLayer(lp, plan.temb_dim, plan.context_dim) for lp in plan.layers])
        last = plan.layers[-1].refiner_out
        self.out = nn.Sequential(group_norm(last), nn.SiLU(), zero_(nn.Conv2d(last, out_channels, 3, padding=1)))


# ---------------------------------------------------------------------------------------------- heads
def make_head(in_channels: int, out_channels: int, block_channels: Sequence[int], layers: int, groups: int) -> nn.Module:
    """A head shaped like the SD VAE decoder with an ``in_channels`` bottleneck (PrimeDepth Sec. 3.3):
    conv_in -> mid block (resnet, attention, resnet) -> up levels (``layers + 1`` resnets each,
    x2 upsampling between levels) -> GroupNorm -> SiLU -> conv_out. Built with diffusers' ``Decoder``."""
    from diffusers.models.autoencoders.vae import Decoder

    return Decoder(in_channels=in_channels, out_channels=out_channels,
                   up_block_types=("UpDecoderBlock2D",) * len(block_channels),
                   block_out_channels=tuple(block_channels), layers_per_block=layers,
                   norm_num_groups=groups, act_fn="silu", mid_block_add_attention=True)


def _resnet_infer(res: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """diffusers ``ResnetBlock2D`` (no temb) with in-place activations: peak ~ input + 2 maps."""
    h = res.nonlinearity(res.norm1(x))
    h = res.conv1(h)
    h = res.norm2(h)
    h = F.silu(h, inplace=True)
    h = res.conv2(h)
    if res.conv_shortcut is not None:
        x = res.conv_shortcut(x)
    if res.output_scale_factor != 1.0:
        return (x + h) / res.output_scale_factor
    h += x
    return h


def subpixel_upsample_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(nearest_x2(x))`` for a 3x3, padding-1 conv, computed at low resolution.

    Output pixel (2i+a, 2j+b) sees input rows {i-1, i} (a=0) or {i, i+1} (a=1), so each of
    the four phases is a 2x2 convolution of ``x`` with summed 3x3 taps: 16 instead of 36
    multiply-adds per input pixel and channel pair, and the x4 upsampled input never exists.
    """
    w = conv.weight  # [O,I,3,3]
    o = w.shape[0]
    # rows: phase 0 -> (w0, w1 + w2); phase 1 -> (w0 + w1, w2)
    rows = [torch.stack([w[:, :, 0], w[:, :, 1] + w[:, :, 2]], 2), torch.stack([w[:, :, 0] + w[:, :, 1], w[:, :, 2]], 2)]
    b, _, h, wd = x.shape
    xp = F.pad(x, (1, 1, 1, 1))  # [B,I,h+2,w+2]
    out = x.new_empty(b, o, 2 * h, 2 * wd)
    for a in (0, 1):
        r = rows[a]  # [O,I,2,3]
        for c in (0, 1):
            k = (torch.stack([r[..., 0], r[..., 1] + r[..., 2]], -1) if c == 0
                 else torch.stack([r[..., 0] + r[..., 1], r[..., 2]], -1))  # [O,I,2,2]
            src = xp[:, :, a:a + h + 1, c:c + wd + 1]
            out[:, :, a::2, c::2] = F.conv2d(src, k, conv.bias)
    return out


def head_forward(head: nn.Module, x: torch.Tensor, fast: bool = True) -> torch.Tensor:
    """Run a diffusers ``Decoder`` head. ``fast``: in-place resnets and sub-pixel upsampling
    convs (same result up to float rounding; for inference — no autograd graph is kept)."""
    if not fast or torch.is_grad_enabled():
        return head(x)
    x = head.conv_in(x)
    x = head.mid_block(x)
    for block in head.up_blocks:
        for res in block.resnets:
            x = _resnet_infer(res, x)
        if block.upsamplers is not None:
            up = block.upsamplers[0]
            x = subpixel_upsample_conv(x, up.conv)
    x = head.conv_norm_out(x)
    x = F.silu(x, inplace=True)
    return head.conv_out(x)
