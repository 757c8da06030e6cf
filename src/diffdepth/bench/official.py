"""The official PrimeDepth inference procedure, re-implemented as a benchmark baseline.

Benchmarks only: this module is the *baseline* our PrimeDepth is measured against in the same
run (``bench primedepth``, ``bench gpu``). It runs the weights of a :class:`PrimeDepth` model
the way the official code (vislearn/PrimeDepth, ``PrimeDepthLabeller.forward`` and
``get_label_from_image``) does, written from its algorithm:

* every attention of the SD UNet, the refiner, the VAE encoder and the head materialises its
  ``N x N`` (or ``N x T``) softmax matrix, in float32 for ``q k^T`` and the softmax (the
  official ``CrossAttention`` with ``ATTN_PRECISION=fp32``, no xformers) — the attention
  output is that matrix times the values;
* the UNet runs to its end (``base_model.out``), and the maps of all 16 transformers are
  computed, the last decoder layer's included;
* self-attention maps are pooled as ``prepare_attn_map_features`` does: per query, the key map
  ``[h, w]`` is bilinearly resized to ``(h + h_mod, w + w_mod)`` with ``h_mod = 8 - h % 8``
  (8 when h is a multiple of 8), average-pooled with kernel and stride ``max(1, h // R)``,
  bilinearly resized to ``R x R``, then divided by its maximum per (sample, head);
  cross-attention maps are the ``N x T`` probabilities as channels;
* per decoder layer, the previous layer's maps (resized to the encoder maps' size) and the
  mirrored encoder layer's maps are stacked ``[prev self, prev cross, enc self, enc cross]``,
  fused with the features entering the layer, and fed to the refiner layer before the UNet
  layer runs;
* the head is the VAE-decoder-shaped network run as one ``forward`` (full-resolution maps,
  nearest x2 upsampling then 3x3 convolutions, its mid-block attention materialised).

``pooling="exact"`` replaces the official pooling by the exact regional mean (keys averaged
over an R x R grid, then the same division by the maximum): with it the procedure computes
what our PrimeDepth computes (``attn_norm="max"``), so tests can check that the baseline runs
the very same network. Nothing here is used by inference.
"""
from __future__ import annotations

import contextlib
import math
from typing import Dict, Iterator, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone.taps import attention_inputs, attention_output


# ----------------------------------------------------------------------------------------- pooling
def official_self_pool(probs: torch.Tensor, height: int, width: int, regions: int = 8) -> torch.Tensor:
    """``probs [B,H,N,N]`` (N = h*w) -> ``[B, H*R*R, h, w]``: the official pooling + max normalisation."""
    b, heads, n, _ = probs.shape
    a = probs.reshape(b * heads, n, height, width)  # keys as a [h,w] image per query
    h_mod, w_mod = 8 - height % 8, 8 - width % 8  # always 1..8 (official constant 8)
    a = F.interpolate(a, size=(height + h_mod, width + w_mod), mode="bilinear", align_corners=False)
    kh, kw = max(1, height // regions), max(1, width // regions)
    a = F.avg_pool2d(a, kernel_size=(kh, kw), stride=(kh, kw))
    a = F.interpolate(a, size=(regions, regions), mode="bilinear", align_corners=False)  # [BH,N,R,R]
    a = a / a.amax(dim=(1, 2, 3), keepdim=True)  # per (sample, head)
    return _queries_to_map(a.reshape(b, heads, n, regions * regions), height, width)


def exact_self_pool(probs: torch.Tensor, height: int, width: int, regions: int = 8) -> torch.Tensor:
    """Exact regional mean of the keys (region of key (i, j) = (i*R // h, j*R // w)), then the same
    per (sample, head) max normalisation."""
    b, heads, n, _ = probs.shape
    rows = torch.arange(height, device=probs.device) * regions // height
    cols = torch.arange(width, device=probs.device) * regions // width
    region = (rows[:, None] * regions + cols[None, :]).reshape(-1)  # [N]
    out = probs.new_zeros(b, heads, n, regions * regions)
    out.index_add_(-1, region, probs)
    out /= torch.bincount(region, minlength=regions * regions).clamp_min(1).to(out.dtype)
    out /= out.amax(dim=(2, 3), keepdim=True).clamp_min(torch.finfo(out.dtype).tiny)
    return _queries_to_map(out, height, width)


def _queries_to_map(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[B, heads, N, C]`` -> ``[B, heads*C, h, w]`` (head-major channels)."""
    b, heads, n, c = x.shape
    return x.permute(0, 1, 3, 2).reshape(b, heads * c, height, width)


POOLINGS = {"official": official_self_pool, "exact": exact_self_pool}


# --------------------------------------------------------------------------------------- attention
class MaterializedAttention:
    """diffusers attention processor that materialises the attention matrix (float32 scores and
    softmax, as the official code), optionally recording the pooled maps of a UNet transformer."""

    def __init__(self, name: Optional[str] = None, sink: Optional[Dict[str, torch.Tensor]] = None,
                 mode: str = "self", pool=official_self_pool, regions: int = 8):
        self.name, self.sink, self.mode, self.pool, self.regions = name, sink, mode, pool, regions
        self.hw: Optional[tuple] = None  # query map size, set by a pre-hook on the transformer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        q, k, v, context, residual, shape = attention_inputs(attn, hidden_states, encoder_hidden_states, temb)
        batch, heads, _, d = q.shape
        scale = getattr(attn, "scale", None) or 1.0 / math.sqrt(d)
        sim = (q.float() @ k.float().transpose(-1, -2)) * scale  # [B,H,N,M] float32
        del q, k
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
            sim = sim + mask.view(batch, heads, -1, mask.shape[-1]).float()
        sim = sim.softmax(dim=-1)
        out = sim.to(v.dtype) @ v  # [B,H,N,d]
        if self.sink is not None and self.hw is not None:
            hh, ww = self.hw
            if self.mode == "self":
                self.sink[self.name] = self.pool(sim, hh, ww, self.regions)
            else:
                self.sink[self.name] = _queries_to_map(sim, hh, ww)
        del sim
        return attention_output(attn, out, residual, shape)


def _attention_modules(root: nn.Module):
    from diffusers.models.attention_processor import Attention

    return [m for m in root.modules() if isinstance(m, Attention)]


@contextlib.contextmanager
def materialized(*roots: Optional[nn.Module]) -> Iterator[None]:
    """Every diffusers ``Attention`` under ``roots`` materialises its matrix while inside."""
    saved = []
    try:
        for root in roots:
            if root is None:
                continue
            for m in _attention_modules(root):
                saved.append((m, m.processor))
                m.processor = MaterializedAttention()
        yield
    finally:
        for m, p in saved:
            m.processor = p


# --------------------------------------------------------------------------------------- procedure
class OfficialProcedure:
    """The official inference procedure on the weights of ``model`` (a :class:`PrimeDepth`).

    ``predict_latent(z, context, generator)`` -> disparity ``[B,1,H,W]`` from the SD latent (what
    ``bench primedepth`` times); ``predict(images)`` adds the VAE encode (``bench gpu``).
    """

    def __init__(self, model: nn.Module, pooling: str = "official"):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {sorted(POOLINGS)}, got {pooling!r}")
        cfg = model.get_config()
        if cfg.get("injection", "per_stage") != "per_stage" or model.depth_head is None:
            raise ValueError("the official procedure needs per-stage injection and a pixel-space depth head")
        self.model, self.pool = model, POOLINGS[pooling]
        self.regions = int(cfg.get("regions", 8))
        self.use_self = bool(cfg.get("use_attention", True) and cfg.get("use_self_attention", True))
        self.use_cross = bool(cfg.get("use_attention", True) and cfg.get("use_cross_attention", True))

    def _stack(self, lp, maps: Dict[str, torch.Tensor], size) -> Optional[torch.Tensor]:
        """``[prev self, prev cross]`` (resized to the encoder maps' size), then ``[enc self, enc cross]``."""
        if not lp.attn_in:
            return None
        groups: List[torch.Tensor] = []
        for name in (lp.prev_attention, lp.enc_attention):
            if name is None:
                continue
            sa, ca = maps.pop(name + "/self"), maps.pop(name + "/cross")
            parts = ([sa] if self.use_self else []) + ([ca] if self.use_cross else [])
            groups.append(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])
        if len(groups) == 2 and groups[0].shape[-2:] != groups[1].shape[-2:]:
            groups[0] = F.interpolate(groups[0], size=groups[1].shape[-2:], mode="bilinear", align_corners=False)
        x = torch.cat(groups, dim=1) if len(groups) > 1 else groups[0]
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        return x

    @torch.no_grad()
    def refine_latent(self, z: torch.Tensor, context: torch.Tensor,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
        model = self.model
        sd, plan, cfg = model.sd, model.plan, model.get_config()
        unet = sd.unet
        dtype = next(unet.parameters()).dtype
        z = z.to(device=next(unet.parameters()).device, dtype=dtype)
        b = z.shape[0]
        t = torch.full((b,), int(cfg.get("timestep", 1)), device=z.device, dtype=torch.long)
        if cfg.get("noise", True):
            noise = torch.randn(z.shape, generator=generator, dtype=torch.float32,
                                device=generator.device if generator is not None else "cpu").to(z.device)
            z = sd.add_noise(z, t, noise)
        temb = unet.time_embedding(unet.time_proj(t).to(dtype))  # [B,temb]
        context = context.to(device=z.device, dtype=dtype)

        maps: Dict[str, torch.Tensor] = {}
        state: Dict[str, Optional[torch.Tensor]] = {"stream": None}
        names = sorted({n for n in _transformer_names(unet)})
        handles, saved = [], []

        def layer_hook(i: int):
            lp = plan.layers[i]

            def hook(module, args, kwargs):
                feat = args[0] if args else kwargs.get("input_tensor", kwargs.get("hidden_states"))
                attn_maps = self._stack(lp, maps, feat.shape[-2:])
                fused = model.fusions[i](feat if lp.ch_f else None,
                                         None if attn_maps is None else attn_maps.to(feat.dtype))
                del attn_maps
                state["stream"] = model.refiner.layers[i](state["stream"], fused, temb, context)

            return hook

        try:
            for name in names:
                transformer = unet.get_submodule(name)
                block = transformer.transformer_blocks[0]
                procs = []
                for attn, mode in ((block.attn1, "self"), (block.attn2, "cross")):
                    proc = MaterializedAttention(f"{name}/{mode}", maps, mode, self.pool, self.regions)
                    saved.append((attn, attn.processor))
                    attn.processor = proc
                    procs.append(proc)

                def size_hook(module, args, kwargs, procs=procs):
                    x = args[0] if args else kwargs["hidden_states"]
                    for p in procs:
                        p.hw = tuple(x.shape[-2:])

                handles.append(transformer.register_forward_pre_hook(size_hook, with_kwargs=True))
            for i, lp in enumerate(plan.layers):
                handles.append(unet.get_submodule(lp.resnet).register_forward_pre_hook(layer_hook(i), with_kwargs=True))
            with materialized(model.refiner):
                unet(z, t, encoder_hidden_states=context, return_dict=False)  # to the end, as the official code
                out = model.refiner.out(state["stream"])  # [B,C,H/8,W/8]
        finally:
            for h in handles:
                h.remove()
            for attn, p in saved:
                attn.processor = p
            maps.clear()
        return out

    @torch.no_grad()
    def depth_from_features(self, h: torch.Tensor) -> torch.Tensor:
        head = self.model.depth_head
        with materialized(head):
            return head(h).mean(dim=1, keepdim=True)  # one plain forward: full-resolution maps

    def predict_latent(self, z: torch.Tensor, context: torch.Tensor,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return self.depth_from_features(self.refine_latent(z, context, generator))

    @torch.no_grad()
    def predict(self, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """``images [B,3,H,W]`` in [0,1] -> disparity ``[B,1,H,W]`` (VAE encode included)."""
        sd = self.model.sd
        with materialized(sd.vae):
            z = sd.encode_image(images)
        context = self.model.encode_prompts(None, images.shape[0])
        return self.predict_latent(z, context, torch.Generator("cpu").manual_seed(int(seed)))


def _transformer_names(unet: nn.Module) -> List[str]:
    """All UNet transformers (down, mid, up): their maps are computed, used or not, as officially."""
    return [name for name, m in unet.named_modules() if hasattr(m, "transformer_blocks")]
