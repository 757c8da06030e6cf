"""One-step UNet "taps": feature maps and attention maps from inside a diffusers UNet.

Feature maps are caught with forward (pre-)hooks on module paths. Attention maps are
computed by an attention processor (diffusers' intended extension point) that runs the
usual attention and, for the modules asked for, also returns

* self-attention averaged over an ``R x R`` grid of key regions, per head
  (PrimeDepth's reduced self-attention map). With ``W[k, r] = 1/|region r|`` if key ``k``
  lies in region ``r`` (else 0), the regional mean of the attention row ``A[q, :]`` is
  ``(A W)[q, r] = softmax(q K^T / sqrt(d)) W`` — attention whose *values* are ``W``. So it
  is one ``scaled_dot_product_attention(q, k, W)`` call and the ``N x N`` matrix is never
  materialised (memory ``O(N R^2)`` instead of ``O(N^2)``).
  ``pool="official"`` replaces the exact regional mean by the official PrimeDepth
  preprocessing (bilinear resize of the key grid to the next multiple of 8 *above* its size,
  average pooling, bilinear resize to ``R x R``; ``labeller.py: prepare_attn_map_features`` of
  vislearn/PrimeDepth). That is linear in the key axis too, so it is the same single call
  with ``W = W_off`` (the official operations applied to the one-hot keys, see
  :func:`official_region_weights`).
* cross-attention probabilities over the context tokens, per head: the same trick with
  ``W = I_T`` (identity over the T tokens).
"""
from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Preimage:
    """What one tapped UNet pass returns. Maps are ``[B, C, h, w]`` at the module's resolution."""

    inputs: Dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: Dict[str, torch.Tensor] = field(default_factory=dict)
    self_attn: Dict[str, torch.Tensor] = field(default_factory=dict)  # [B, heads*R*R, h, w]
    cross_attn: Dict[str, torch.Tensor] = field(default_factory=dict)  # [B, heads*T, h, w]
    output: Optional[torch.Tensor] = None  # UNet output when the pass ran to the end


def region_weights(height: int, width: int, regions: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """``W [h*w, R*R]``: column r holds 1/|region r| on the keys of region r (row-major grid).

    Key (i, j) belongs to region ``(i*R // h, j*R // w)``. When ``h < R`` (or ``w < R``)
    some regions hold no key; their column is all zeros, so their map is 0.
    """
    rows = torch.arange(height, device=device) * regions // height
    cols = torch.arange(width, device=device) * regions // width
    region = (rows[:, None] * regions + cols[None, :]).reshape(-1)  # [N]
    onehot = F.one_hot(region, regions * regions).to(torch.float64)  # [N, R*R]
    counts = onehot.sum(0).clamp_min(1.0)
    return (onehot / counts).to(dtype)


POOLS = ("exact", "official")


def _official_axis(n: int, patches: int) -> torch.Tensor:
    """``[n, patches]``: the official operations along one key axis, applied to the n one-hot keys.

    Official (``prepare_attn_map_features``): ``mod = 8 - n % 8`` (8, not 0, when n is a multiple
    of 8; the literal 8 does not follow ``patches``), bilinear resize n -> n + mod
    (``align_corners=False``, no antialias), ``AvgPool2d`` with kernel = stride = ``max(1, n // patches)``
    (of the *original* n; trailing cells that do not fill a window are dropped), bilinear resize to
    ``patches`` (the official code skips it only when mod == 0, which never happens).
    Bilinear resizing and average pooling are separable, so the 2-D operator is the Kronecker
    product of the row and column operators; 1-D ``linear`` uses the same source-index rule.
    """
    mod = 8 - n % 8
    kernel = max(1, n // patches)
    x = torch.eye(n, dtype=torch.float64)[:, None, :]  # [n,1,n]: one one-hot key per batch row
    x = F.interpolate(x, size=n + mod, mode="linear", align_corners=False)
    x = F.avg_pool1d(x, kernel, kernel)
    x = F.interpolate(x, size=patches, mode="linear", align_corners=False)
    return x[:, 0, :]


@functools.lru_cache(maxsize=64)
def _official_weights64(height: int, width: int, regions: int) -> torch.Tensor:
    return torch.kron(_official_axis(height, regions), _official_axis(width, regions))  # [h*w, R*R]


def official_region_weights(height: int, width: int, regions: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """``W_off [h*w, R*R]``: the official PrimeDepth pooling of self-attention keys as a matrix.

    Column r (row-major over the ``R x R`` output grid) holds the weight each key gets in map r,
    i.e. the official resize -> average-pool -> resize applied to the one-hot keys.
    """
    return _official_weights64(int(height), int(width), int(regions)).to(dtype=dtype, device=device)


def pool_weights(pool: str, height: int, width: int, regions: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Key-pooling matrix for ``pool`` in :data:`POOLS`."""
    if pool == "exact":
        return region_weights(height, width, regions, dtype=dtype, device=device)
    if pool == "official":
        return official_region_weights(height, width, regions, dtype=dtype, device=device)
    raise ValueError(f"attention pooling must be one of {POOLS}, got {pool!r}")


def official_pool_reference(attn: torch.Tensor, height: int, width: int, patches: int) -> torch.Tensor:
    """The official operations verbatim on a materialised attention map.

    ``attn [B, H, N, N]`` (queries x keys) -> ``[B, H, N, patches²]``. Tests and benchmarks only.
    """
    b, heads, n, _ = attn.shape
    h_p, w_p = max(1, height // patches), max(1, width // patches)
    h_mod, w_mod = 8 - height % 8, 8 - width % 8
    x = attn.reshape(b * heads, n, height, width)
    if h_mod != 0 or w_mod != 0:
        x = F.interpolate(x, size=(height + h_mod, width + w_mod), mode="bilinear")
    x = torch.nn.AvgPool2d(kernel_size=(h_p, w_p), stride=(h_p, w_p))(x)
    if h_mod != 0 or w_mod != 0:
        x = F.interpolate(x, size=(patches, patches), mode="bilinear")
    return x.reshape(b, heads, n, patches * patches)


def regional_attention_naive(q: torch.Tensor, k: torch.Tensor, height: int, width: int, regions: int,
                             scale: Optional[float] = None, pool: str = "exact") -> torch.Tensor:
    """Reference: materialise the ``N x N`` attention, then pool keys per region
    (``exact``: mean per region; ``official``: the official operations on the full map).

    q, k ``[B, H, N, d]`` -> ``[B, H, N, R*R]``. Used by tests and the taps benchmark only.
    """
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    attn = torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1)  # [B,H,N,N]
    if pool == "official":
        return official_pool_reference(attn, height, width, regions)
    rows = torch.arange(height, device=q.device) * regions // height
    cols = torch.arange(width, device=q.device) * regions // width
    region = (rows[:, None] * regions + cols[None, :]).reshape(-1)
    out = torch.zeros(*attn.shape[:-1], regions * regions, dtype=attn.dtype, device=attn.device)
    out.index_add_(-1, region, attn)
    counts = torch.bincount(region, minlength=regions * regions).clamp_min(1).to(attn.dtype)
    return out / counts


def regional_attention(q: torch.Tensor, k: torch.Tensor, height: int, width: int, regions: int,
                       scale: Optional[float] = None, pool: str = "exact") -> torch.Tensor:
    """Key-pooled softmax attention without the ``N x N`` matrix: ``[B, H, N, R*R]``
    (``pool``: ``exact`` regional mean or the ``official`` PrimeDepth pooling)."""
    w = pool_weights(pool, height, width, regions, dtype=q.dtype, device=q.device)  # [N, R*R]
    return over_query_chunks(_regional_rows, q, k, w, scale)


def token_attention(q: torch.Tensor, k: torch.Tensor, scale: Optional[float] = None) -> torch.Tensor:
    """Attention probabilities over the T keys, ``[B, H, N, T]``, via SDPA with identity values."""
    eye = torch.eye(k.shape[-2], dtype=q.dtype, device=q.device).expand(q.shape[0], q.shape[1], -1, -1)
    return F.scaled_dot_product_attention(q, k, eye, scale=scale)


#: bytes one attention-probability block may take; larger query sets are processed in chunks
ATTENTION_CHUNK_BYTES = 256 * 2**20


def over_query_chunks(fn, q: torch.Tensor, k: torch.Tensor, *args, budget: Optional[int] = None,
                      **kwargs) -> torch.Tensor:
    """``fn(q, k, ...)`` (softmax over keys per query: rows are independent) on query chunks whose
    ``[B, H, chunk, M]`` score block stays within ``budget`` bytes. SDPA falls back to its math
    kernel (a full ``N x M`` matrix) when the value width differs from the head width (regional
    maps with R*R != head_dim); chunking keeps native-resolution inputs from needing O(N^2) memory."""
    budget = ATTENTION_CHUNK_BYTES if budget is None else budget
    b, heads, n, _ = q.shape
    per_query = b * heads * k.shape[-2] * max(q.element_size(), 4) * 3  # scores, softmax, temporaries
    chunk = max(1, budget // per_query)
    if chunk >= n:
        return fn(q, k, *args, **kwargs)
    return torch.cat([fn(q[:, :, i:i + chunk], k, *args, **kwargs) for i in range(0, n, chunk)], dim=2)


def _regional_rows(q: torch.Tensor, k: torch.Tensor, w: torch.Tensor, scale: Optional[float]) -> torch.Tensor:
    # the expand is a view: no copy of the [N, R*R] values per batch/head
    return F.scaled_dot_product_attention(q, k, w.expand(q.shape[0], q.shape[1], *w.shape), scale=scale)


def _to_map(probs: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[B, H, N, C]`` -> ``[B, H*C, h, w]`` (head-major channels)."""
    b, heads, n, c = probs.shape
    return probs.permute(0, 1, 3, 2).reshape(b, heads * c, height, width)


def attention_inputs(attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                     temb: Optional[torch.Tensor] = None):
    """What a diffusers attention processor does before the attention itself: spatial and group
    norm, the projections and the head split.

    Returns ``q [B,H,N,d]``, ``k``/``v [B,H,M,d]``, the context ``[B,M,C]``, the residual and the
    input's ``(B, C, H, W)`` shape (``None`` for token inputs), for :func:`attention_output`.
    """
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    shape = tuple(hidden_states.shape) if hidden_states.ndim == 4 else None
    if shape is not None:
        hidden_states = hidden_states.flatten(2).transpose(1, 2)  # [B,N,C]
    batch = hidden_states.shape[0]
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
    if encoder_hidden_states is not None and attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    heads = attn.heads
    q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
    d = k.shape[-1] // heads
    q = q.view(batch, -1, heads, d).transpose(1, 2)  # [B,H,N,d]
    k = k.view(batch, -1, heads, d).transpose(1, 2)  # [B,H,M,d]
    v = v.view(batch, -1, heads, d).transpose(1, 2)
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    return q, k, v, context, residual, shape


def attention_output(attn, out: torch.Tensor, residual: torch.Tensor, shape: Optional[tuple]) -> torch.Tensor:
    """What a diffusers attention processor does after the attention: ``out [B,H,N,d]`` -> heads
    merged, output projection, back to the input's layout, residual, rescale."""
    b, heads, n, d = out.shape
    out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).reshape(b, n, heads * d)))  # [B,N,C]
    if shape is not None:
        out = out.transpose(-1, -2).reshape(shape)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


class TapAttnProcessor:
    """Standard scaled-dot-product attention that can also record attention maps.

    ``mode`` is ``"self"`` (regional maps) or ``"cross"`` (token maps); results land in
    ``sink[name]``. The spatial size of the query map is set by a pre-hook on the
    enclosing transformer (``self.hw``), since the attention itself sees tokens only.
    """

    def __init__(self, name: str, mode: str, sink: Dict[str, torch.Tensor], regions: int = 8,
                 reference: bool = False, pool: str = "exact"):
        if pool not in POOLS:
            raise ValueError(f"attention pooling must be one of {POOLS}, got {pool!r}")
        self.name, self.mode, self.sink, self.regions, self.pool = name, mode, sink, regions, pool
        self.reference = reference  # materialise NxN (benchmarks/tests only)
        self.hw: Optional[tuple] = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        q, k, v, context, residual, shape = attention_inputs(attn, hidden_states, encoder_hidden_states, temb)
        if shape is not None:
            self.hw = shape[2:]
        if attention_mask is not None:
            batch = q.shape[0]
            attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        scale = getattr(attn, "scale", None)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, scale=scale)
        out = attention_output(attn, out.to(q.dtype), residual, shape)

        if self.hw is not None:
            h, w = self.hw
            if self.mode == "self":
                fn = regional_attention_naive if self.reference else regional_attention
                probs = fn(q, k, h, w, self.regions, scale=scale, pool=self.pool)
            else:
                probs = over_query_chunks(token_attention, q, k, scale=scale)
            self.sink[self.name] = _to_map(probs, h, w)
        return out


class _Stop(Exception):
    """Raised by the ``stop_after`` hook to end the UNet pass early."""


def _first_tensor(obj):
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)) and obj:
        return _first_tensor(obj[0])
    if hasattr(obj, "sample"):
        return obj.sample
    return None


def _resolve(root: nn.Module, name: str) -> nn.Module:
    try:
        return root.get_submodule(name)
    except AttributeError:
        raise ValueError(f"the UNet has no module {name!r} (see StableDiffusion.decoder_layers())") from None


@contextlib.contextmanager
def tapped(unet: nn.Module, pre: Preimage, inputs: Iterable[str] = (), outputs: Iterable[str] = (),
           self_attn: Iterable[str] = (), cross_attn: Iterable[str] = (), regions: int = 8,
           stop_after: Optional[str] = None, reference: bool = False, pool: str = "exact") -> Iterator[None]:
    """Install hooks/processors on ``unet`` for one pass; always removes them afterwards.

    ``pool``: how self-attention keys are pooled into ``regions x regions`` maps (:data:`POOLS`)."""
    handles = []
    restore = []
    try:
        for name in inputs:
            def pre_hook(module, args, kwargs, name=name):
                x = args[0] if args else kwargs.get("hidden_states", kwargs.get("input_tensor"))
                pre.inputs[name] = x
            handles.append(_resolve(unet, name).register_forward_pre_hook(pre_hook, with_kwargs=True))
        for name in outputs:
            def hook(module, args, output, name=name):
                pre.outputs[name] = _first_tensor(output)
            handles.append(_resolve(unet, name).register_forward_hook(hook))
        for mode, names, sink in (("self", self_attn, pre.self_attn), ("cross", cross_attn, pre.cross_attn)):
            for name in names:
                transformer = _resolve(unet, name)
                if not hasattr(transformer, "transformer_blocks"):
                    raise ValueError(f"{name!r} is not a transformer (attention) module of the UNet")
                block = transformer.transformer_blocks[0]
                attn = block.attn1 if mode == "self" else block.attn2
                if attn is None:
                    raise ValueError(f"{name!r} has no {mode}-attention")
                proc = TapAttnProcessor(name, mode, sink, regions, reference, pool)

                def size_hook(module, args, kwargs, proc=proc):
                    x = args[0] if args else kwargs["hidden_states"]
                    proc.hw = tuple(x.shape[-2:])
                handles.append(transformer.register_forward_pre_hook(size_hook, with_kwargs=True))
                restore.append((attn, attn.processor))
                attn.processor = proc  # plain attribute: no diffusers logging / module churn
        if stop_after is not None:
            def stop_hook(module, args, output):
                raise _Stop
            handles.append(_resolve(unet, stop_after).register_forward_hook(stop_hook))
        yield
    finally:
        for h in handles:
            h.remove()
        for attn, proc in restore:
            attn.processor = proc
