"""PrimeDepth's per-layer plan, computed from a diffusers UNet config alone.

For every UNet decoder layer (``up_blocks.b.resnets.j``; 12 for SD) the preimage part is
(PrimeDepth Sec. 3.2-3.3, official ``PrimeDepthLabeller``):

* the feature map entering the layer (skip-concatenated),
* the self- and cross-attention maps of the *mirrored encoder layer* and of the *previous
  decoder layer* (the mid block for layer 0); self-attention reduced to R x R key regions
  per head (heads x R² channels), cross-attention over the T tokens (heads x T channels).

The fusion (1x1 conv on features -> ``ch_f``, 1x1 conv on the stacked attention maps ->
``ch_a``, concat -> 1x1 merge conv -> ``ch_f + ch_a``) feeds the refiner layer, a mirror
of the UNet decoder at ``ratio`` of its channels. The channel arithmetic reproduces the
official code (``scale_input_features_with_model=True``, ``infusion2refiner='cat'``), so
SD 2.1 at ratio 0.5 gives the official table (REFERENCE.md)::

    ch_f 1280,1280,1280,1280,1280,960,960,640,480,480,320,320
    ch_a 1410,0,0,1410,1410,1410,1410,705,705,705,352,352

Nothing here builds a module: the numbers come from the config, so the full-size table is
checked without instantiating an 866 M parameter UNet.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from ...backbone.configs import SD21_UNET


def largest_divisor(n: int, at_most: int) -> int:
    """Largest divisor of ``n`` that is <= ``at_most`` (official ``find_denominator``)."""
    at_most = min(n, at_most)
    for d in range(at_most, 0, -1):
        if n % d == 0:
            return d
    return 1


def norm_groups(channels: int, max_groups: int = 32) -> int:
    """GroupNorm group count used by the refiner: largest divisor of C that is <= 32."""
    return largest_divisor(channels, max_groups)


@dataclass
class LayerPlan:
    index: int
    block: int  # up block index
    resnet: str  # "up_blocks.b.resnets.j" (its input is the preimage feature map)
    attention: Optional[str]  # the base layer's transformer, or None
    scale_level: int  # UNet level (0 = highest resolution)
    base_in: int  # channels of the feature map entering the base layer
    enc_attention: Optional[str]  # mirrored encoder transformer (path) or None
    enc_heads: int
    prev_attention: Optional[str]  # previous decoder layer's / mid block's transformer or None
    prev_heads: int
    ch_f: int  # feature projection width (0: no feature conv)
    attn_in: int  # stacked attention channels (0: no attention conv)
    attn_proj: int  # attention projection width
    ch_a: int  # attention share of the merge output
    merge_in: int
    merge_out: int  # channels injected into the refiner (0: no injection)
    refiner_in: int  # refiner resnet input = stream + injection
    refiner_out: int
    refiner_heads: int  # 0: no transformer in this refiner layer
    refiner_head_dim: int
    upsample: bool  # a x2 upsampler follows this layer


@dataclass
class Plan:
    layers: List[LayerPlan]
    refiner_channels: List[int]  # per UNet level (level 0 first)
    temb_dim: int
    context_dim: int
    per_head: int  # attention channels per head (T·cross + R²·self)
    block_in: int = 0  # "block" injection: channels of the concatenated preimage
    extra: Dict[str, Any] = field(default_factory=dict)

    def table(self) -> Dict[str, List[int]]:
        return {"ch_f": [l.ch_f for l in self.layers], "ch_a": [l.ch_a for l in self.layers]}


def _per_level(value, n: int) -> List[int]:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"UNet config lists {len(value)} values for {n} levels")
        return [int(v) for v in value]
    return [int(value)] * n


def unet_heads(config: Mapping[str, Any]) -> List[int]:
    """Attention heads per level as diffusers builds them (``attention_head_dim`` means heads
    when ``num_attention_heads`` is unset — diffusers' historical naming)."""
    n = len(config["block_out_channels"])
    heads = config.get("num_attention_heads") or config.get("attention_head_dim") or 8
    return _per_level(heads, n)


def make_plan(config: Mapping[str, Any], ratio: float = 0.5, use_features: bool = True,
              use_self_attention: bool = True, use_cross_attention: bool = True, n_tokens: int = 77,
              regions: int = 8, injection: str = "per_stage", refiner_head_dim: Optional[int] = None) -> Plan:
    """The per-layer plan for a diffusers ``UNet2DConditionModel`` config (dict or FrozenDict)."""
    if injection not in ("per_stage", "block"):
        raise ValueError(f"injection must be 'per_stage' or 'block', got {injection!r}")
    if not 0 < ratio <= 4:
        raise ValueError(f"refiner ratio must be in (0, 4], got {ratio}")
    boc = [int(c) for c in config["block_out_channels"]]
    n = len(boc)
    down_types = list(config["down_block_types"])
    up_types = list(config["up_block_types"])
    lpb = _per_level(config.get("layers_per_block", 2), n)
    heads = unet_heads(config)
    rev_heads = heads[::-1]
    rev_lpb = lpb[::-1]
    mid_type = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    mid_heads = heads[-1] if mid_type and "CrossAttn" in mid_type else 0
    head_dim_base = refiner_head_dim or max(1, boc[0] // heads[0])
    temb_dim = int(config.get("time_embedding_dim") or boc[0] * 4)

    # encoder items in execution order: conv_in, per down block its layers, then its downsampler
    enc: List[tuple] = [("conv_in", None, 0)]
    for b, t in enumerate(down_types):
        cross = "CrossAttn" in t
        for j in range(lpb[b]):
            enc.append(("layer", f"down_blocks.{b}.attentions.{j}" if cross else None, heads[b] if cross else 0))
        if b < n - 1:
            enc.append(("downsampler", None, 0))

    rc = [max(1, int(c * ratio)) for c in boc]  # refiner channels per level
    per_head = (n_tokens if use_cross_attention else 0) + (regions * regions if use_self_attention else 0)

    def decoder_in(chans: List[int]) -> List[tuple]:
        """(resnet in channels incl. skip, out channels) per decoder layer, diffusers' arithmetic."""
        rev = chans[::-1]
        out, output_channel = [], rev[0]
        for b in range(n):
            prev_output_channel = output_channel
            output_channel = rev[b]
            input_channel = rev[min(b + 1, n - 1)]
            for j in range(rev_lpb[b] + 1):
                skip = input_channel if j == rev_lpb[b] else output_channel
                res_in = prev_output_channel if j == 0 else output_channel
                out.append((res_in + skip, output_channel))
        return out

    base_io = decoder_in(boc)
    ref_io = decoder_in(rc)
    if len(base_io) != len(enc):
        raise ValueError(f"cannot mirror {len(base_io)} decoder layers onto {len(enc)} encoder items")

    layers: List[LayerPlan] = []
    prev_attn, prev_heads = ("mid_block.attentions.0", mid_heads) if mid_heads else (None, 0)
    stream = 0
    i = 0
    for b in range(n):
        cross = "CrossAttn" in up_types[b]
        for j in range(rev_lpb[b] + 1):
            _, enc_attn, enc_heads = enc[len(enc) - 1 - i]
            attention = f"up_blocks.{b}.attentions.{j}" if cross else None
            ch_f = ref_io[i][0] if use_features else 0
            has_attn = per_head > 0 and (prev_heads + enc_heads) > 0
            ch_a = int(max(prev_heads, enc_heads) * per_head * ratio) if has_attn else 0
            attn_in = per_head * (prev_heads + enc_heads) if has_attn else 0
            attn_proj = (ch_a if ch_a > 0 else ch_f) if has_attn else 0
            merge_in = ch_f + attn_proj
            merge_out = ch_f + ch_a if merge_in > 0 else 0
            out_ch = ref_io[i][1]
            if cross:
                hd = largest_divisor(out_ch, min(out_ch, head_dim_base))
                r_heads = out_ch // hd
            else:
                hd, r_heads = 0, 0
            if injection == "per_stage":
                r_in = stream + merge_out
            else:
                r_in = stream + (merge_out if i == 0 else 0)
            if r_in == 0:
                raise ValueError(f"decoder layer {i} gets no input (all preimage parts switched off?)")
            layers.append(LayerPlan(
                index=i, block=b, resnet=f"up_blocks.{b}.resnets.{j}", attention=attention, scale_level=n - 1 - b,
                base_in=base_io[i][0], enc_attention=enc_attn if has_attn else None, enc_heads=enc_heads,
                prev_attention=prev_attn if has_attn else None, prev_heads=prev_heads, ch_f=ch_f, attn_in=attn_in,
                attn_proj=attn_proj, ch_a=ch_a, merge_in=merge_in, merge_out=merge_out, refiner_in=r_in,
                refiner_out=out_ch, refiner_heads=r_heads, refiner_head_dim=hd,
                upsample=(j == rev_lpb[b] and b < n - 1)))
            stream = out_ch
            prev_attn, prev_heads = (attention, rev_heads[b]) if cross else (None, 0)
            i += 1
    block_in = sum(l.merge_out for l in layers) if injection == "block" else 0
    return Plan(layers=layers, refiner_channels=rc, temb_dim=temb_dim, context_dim=int(config["cross_attention_dim"]),
                per_head=per_head, block_in=block_in)


#: diffusers UNet config of Stable Diffusion 2.1, for the channel-table test (nothing is downloaded);
#: one definition in diffdepth.backbone.configs
SD21_UNET_CONFIG: Dict[str, Any] = dict(SD21_UNET)

#: the official PrimeDepth options (configs/inference.yaml of vislearn/PrimeDepth)
OFFICIAL_OPTIONS: Dict[str, Any] = {
    "refiner_ratio": 0.5, "refiner_out_channels": 512, "head_channels": [128, 256, 512, 512], "head_layers": 2,
    "head_norm_groups": 32, "seg_classes": 150, "depth_channels": 3, "regions": 8, "attn_norm": "max",
    "use_attention": True, "use_self_attention": True, "use_cross_attention": True, "use_features": True,
    "injection": "per_stage", "attn_pool": "official", "head_norm_eps": 1e-5, "vae_norm_eps": 1e-5, "latent": "sample",
}
