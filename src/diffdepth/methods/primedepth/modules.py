"""PrimeDepth building blocks: preimage fusion, the preimage refiner and the pixel-space heads.

Sub-module names follow the official LDM-style code (``in_layers``/``emb_layers``/
``out_layers``, ``out.0``/``out.2``, transformer internals as in diffusers, which match LDM's
``SpatialTransformer`` with linear projections) so checkpoint conversion is a renaming.
All modules are tensor in / tensor out.
"""
from __future__ import annotations

from typing import Optional, Sequence

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
def set_group_norm_eps(module: nn.Module, eps: float) -> nn.Module:
    """Set ``eps`` on every GroupNorm inside ``module`` (diffusers builds VAE-style blocks with 1e-6)."""
    for m in module.modules():
        if isinstance(m, nn.GroupNorm):
            m.eps = eps
    return module


def make_head(in_channels: int, out_channels: int, block_channels: Sequence[int], layers: int, groups: int,
              eps: float = 1e-5) -> nn.Module:
    """A head shaped like the SD VAE decoder with an ``in_channels`` bottleneck (PrimeDepth Sec. 3.3):
    conv_in -> mid block (resnet, attention, resnet) -> up levels (``layers + 1`` resnets each,
    x2 upsampling between levels) -> GroupNorm -> SiLU -> conv_out. Built with diffusers' ``Decoder``;
    every GroupNorm gets ``eps`` (official ``Normalize``: 1e-5)."""
    from diffusers.models.autoencoders.vae import Decoder

    head = Decoder(in_channels=in_channels, out_channels=out_channels,
                   up_block_types=("UpDecoderBlock2D",) * len(block_channels),
                   block_out_channels=tuple(block_channels), layers_per_block=layers,
                   norm_num_groups=groups, act_fn="silu", mid_block_add_attention=True)
    return set_group_norm_eps(head, eps)


def _resnet_infer(res: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """diffusers ``ResnetBlock2D`` (no temb) with in-place activations: peak ~ input + 2 maps."""
    h = F.silu(res.norm1(x), inplace=True)
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


def _subpixel_kernels(conv: nn.Conv2d):
    """The four 2x2 phase kernels of ``conv(nearest_x2(.))`` for a 3x3, padding-1 conv: [(a, c, k)]."""
    w = conv.weight  # [O,I,3,3]
    # rows: phase 0 -> (w0, w1 + w2); phase 1 -> (w0 + w1, w2)
    rows = [torch.stack([w[:, :, 0], w[:, :, 1] + w[:, :, 2]], 2), torch.stack([w[:, :, 0] + w[:, :, 1], w[:, :, 2]], 2)]
    out = []
    for a in (0, 1):
        r = rows[a]  # [O,I,2,3]
        for c in (0, 1):
            k = (torch.stack([r[..., 0], r[..., 1] + r[..., 2]], -1) if c == 0
                 else torch.stack([r[..., 0] + r[..., 1], r[..., 2]], -1))  # [O,I,2,2]
            out.append((a, c, k))
    return out


def subpixel_upsample_conv(x: torch.Tensor, conv: nn.Conv2d, rows: Optional[int] = None) -> torch.Tensor:
    """``conv(nearest_x2(x))`` for a 3x3, padding-1 conv, computed at low resolution.

    Output pixel (2i+a, 2j+b) sees input rows {i-1, i} (a=0) or {i, i+1} (a=1), so each of
    the four phases is a 2x2 convolution of ``x`` with summed 3x3 taps: 16 instead of 36
    multiply-adds per input pixel and channel pair, and the x4 upsampled input never exists.
    ``rows``: process that many input rows at a time (bounded temporaries).
    """
    b, _, h, wd = x.shape
    kernels = _subpixel_kernels(conv)
    out = x.new_empty(b, conv.out_channels, 2 * h, 2 * wd)
    rows = rows or h
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        xs = _rows_with_halo(x, r0, r1)  # [B,I,n+2,W] (zero rows outside the image)
        xs = F.pad(xs, (1, 1, 0, 0))
        n = r1 - r0
        for a, c, k in kernels:
            out[:, :, 2 * r0 + a:2 * r1:2, c::2] = F.conv2d(xs[:, :, a:a + n + 1, c:c + wd + 1], k, conv.bias)
    return out


def _rows_with_halo(x: torch.Tensor, r0: int, r1: int, fn=None) -> torch.Tensor:
    """Rows ``r0-1 .. r1`` of ``x`` (``fn`` applied), zero rows where they fall outside the image."""
    h = x.shape[2]
    lo, hi = max(r0 - 1, 0), min(r1 + 1, h)
    xs = x[:, :, lo:hi]
    if fn is not None:
        xs = fn(xs)
    top, bottom = lo - (r0 - 1), (r1 + 1) - hi
    if top or bottom:
        xs = F.pad(xs, (0, 0, top, bottom))
    return xs


def _gn_stats(norm: nn.GroupNorm, x: torch.Tensor):
    b, c = x.shape[:2]
    var, mean = torch.var_mean(x.reshape(b, norm.num_groups, -1).float(), dim=-1, unbiased=False)  # [B,G]
    return mean, torch.rsqrt(var + norm.eps)


def _gn_silu_apply(norm: nn.GroupNorm, stats, xs: torch.Tensor) -> torch.Tensor:
    """``silu(group_norm(x))`` on a row strip ``xs`` with the whole map's group statistics."""
    mean, rstd = stats
    b, c = xs.shape[:2]
    g = norm.num_groups
    scale = (rstd[:, :, None] * norm.weight.reshape(1, g, c // g)).reshape(b, c, 1, 1)  # [B,C,1,1]
    shift = norm.bias.reshape(1, c, 1, 1) - (mean[:, :, None] * rstd[:, :, None]).expand(b, g, c // g).reshape(b, c, 1, 1) \
        * norm.weight.reshape(1, c, 1, 1)
    y = xs * scale.to(xs.dtype) + shift.to(xs.dtype)
    return F.silu(y, inplace=True)


def _strip_rows(channels: int, width: int, budget: int = 24 << 20) -> int:
    return max(4, budget // max(1, 4 * channels * width))


def _resnet_strips(res: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``ResnetBlock2D`` in row strips: exact GroupNorm statistics of the whole map, then
    norm -> SiLU -> 3x3 conv on strips with a one-row halo. Peak: the input, one output-sized
    map and strip temporaries (the second conv overwrites its own input strip by strip)."""
    b, c, h, w = x.shape
    co = res.conv1.out_channels
    rows = _strip_rows(max(c, co), w)
    s1 = _gn_stats(res.norm1, x)
    hid = x.new_empty(b, co, h, w)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        xs = _rows_with_halo(x, r0, r1, lambda t: _gn_silu_apply(res.norm1, s1, t))
        hid[:, :, r0:r1] = F.conv2d(xs, res.conv1.weight, res.conv1.bias, padding=(0, 1))
        del xs
    s2 = _gn_stats(res.norm2, hid)
    target = x if res.conv_shortcut is None else hid  # where the result is written
    saved = None  # original row r0-1 of ``hid`` once it has been overwritten
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        lo, hi = max(r0 - 1, 0), min(r1 + 1, h)
        src = hid[:, :, lo:hi]
        if target is hid and r0 > 0:
            src = torch.cat([saved, hid[:, :, r0:hi]], dim=2)
        ys = _gn_silu_apply(res.norm2, s2, src)
        top, bottom = lo - (r0 - 1), (r1 + 1) - hi
        if top or bottom:
            ys = F.pad(ys, (0, 0, top, bottom))
        out = F.conv2d(ys, res.conv2.weight, res.conv2.bias, padding=(0, 1))  # [B,co,n,W]
        del ys, src
        if res.conv_shortcut is not None:
            out += res.conv_shortcut(x[:, :, r0:r1])
        else:
            out += x[:, :, r0:r1]
        if res.output_scale_factor != 1.0:
            out /= res.output_scale_factor
        if target is hid:
            saved = hid[:, :, r1 - 1:r1].clone()
        target[:, :, r0:r1] = out
    return target


def _out_strips(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    rows = _strip_rows(c, w)
    stats = _gn_stats(head.conv_norm_out, x)
    out = x.new_empty(b, head.conv_out.out_channels, h, w)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        xs = _rows_with_halo(x, r0, r1, lambda t: _gn_silu_apply(head.conv_norm_out, stats, t))
        out[:, :, r0:r1] = F.conv2d(xs, head.conv_out.weight, head.conv_out.bias, padding=(0, 1))
    return out


#: maps at least this large (elements) go through the row-strip path at inference
STRIP_NUMEL = 8 << 20


def head_forward(head: nn.Module, x: torch.Tensor, fast: bool = True) -> torch.Tensor:
    """Run a diffusers ``Decoder`` head. ``fast`` (inference only, no autograd graph): in-place
    resnets, sub-pixel upsampling convs, and row strips for large maps, so the full-resolution
    levels need about one input plus one output map (same result up to float rounding)."""
    if not fast or torch.is_grad_enabled() or getattr(head, "_diffdepth_compiled", False):
        return head(x)  # (a head compiled by diffdepth.fast runs whole: inductor plans its memory)
    x = head.conv_in(x)
    x = head.mid_block(x)
    for block in head.up_blocks:
        for res in block.resnets:
            big = x.numel() >= STRIP_NUMEL and isinstance(res.norm1, nn.GroupNorm) and res.conv1.kernel_size == (3, 3)
            x = _resnet_strips(res, x) if big else _resnet_infer(res, x)
        if block.upsamplers is not None:
            up = block.upsamplers[0]
            rows = _strip_rows(x.shape[1] * 4, x.shape[3] * 2) if x.numel() * 4 >= STRIP_NUMEL else None
            x = subpixel_upsample_conv(x, up.conv, rows)
    if x.numel() >= STRIP_NUMEL:
        return _out_strips(head, x)
    x = head.conv_norm_out(x)
    x = F.silu(x, inplace=True)
    return head.conv_out(x)
