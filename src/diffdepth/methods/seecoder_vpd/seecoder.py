"""SeeCoder (semantic context encoder) with the spatial enhancement of SeeCoder-VPD.

SeeCoder: Xu et al. 2023, "Prompt-Free Diffusion: Taking 'Text' out of Text-to-Image
Diffusion Models" (Sec. 3.2): a Swin backbone, a transformer "decoder" over the multi-level
maps, and a query transformer whose 4 global + 144 local learned queries become the
148 x 768 context that replaces CLIP text embeddings.

Spatial enhancement: "Leveraging Stable Diffusion for Monocular Depth Estimation via Image
Semantic Encoding" (arXiv 2502.01666, Sec. III, Table I) adds dilated convolutions (DC) and
a spatial attention (SA) module "to each SeeCoder transformer layer". The paper gives no
placement beyond that; both modules need a 2-D map, and the only SeeCoder transformer
layers that carry one are the 6 layers of the feature transformer (``imdecoder``), whose
tokens are the flattened 1/8, 1/16, 1/32 maps (the query transformer's tokens are learned
queries with no spatial layout). So we apply, after every feature-transformer layer and
to every level's map separately (shared weights per layer)::

    y = x + W_f * GELU([DWConv3x3_r(x) for r in rates])          (DC, residual)
    z = y * 2 sigmoid(Conv_k([mean_c(y); max_c(y)]))              (SA, CBAM-style gate)

``W_f`` (1x1 fuse) and the SA convolution are zero-initialised, so at initialisation the
enhanced SeeCoder computes exactly the pretrained SeeCoder (the gate is 2*sigmoid(0) = 1)
and training with a frozen SeeCoder starts from the published behaviour.

Module and parameter names follow the reference implementation (``imencoder``,
``imdecoder.inproj_layers.res3.0``, ``qtransformer.transformer_crossatt_layers.{i}`` ...)
so the official checkpoint loads by name; the new enhancement modules live under
``imdecoder.enhance``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from .swin import SwinBackbone

ENHANCEMENTS = ("none", "dc", "sa", "dc+sa")
LEVELS = ("res3", "res4", "res5")  # strides 8, 16, 32


def parse_enhancement(value: str) -> tuple[bool, bool]:
    v = str(value).lower().replace(" ", "").replace("sa+dc", "dc+sa")
    if v not in ENHANCEMENTS:
        raise ConfigError(f"enhancement={value!r} is not one of {', '.join(ENHANCEMENTS)}")
    return "dc" in v, "sa" in v


def _groups(channels: int, wanted: int) -> int:
    return math.gcd(channels, wanted)


# ----------------------------------------------------------------------------- enhancement
class DilatedConv(nn.Module):
    """DC: parallel depthwise 3x3 convolutions at dilation ``rates``, fused by a zero-init 1x1 conv."""

    def __init__(self, channels: int, rates: Sequence[int] = (1, 2, 3)):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=r, dilation=r, groups=channels) for r in rates)
        self.fuse = nn.Conv2d(channels * len(rates), channels, 1)
        nn.init.zeros_(self.fuse.weight)
        nn.init.zeros_(self.fuse.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B,C,h,w] -> [B,C,h,w]
        y = torch.cat([b(x) for b in self.branches], dim=1)  # [B, C*len(rates), h, w]
        return x + self.fuse(F.gelu(y))


class SpatialAttention(nn.Module):
    """SA: gate 2*sigmoid(conv_k([channel mean; channel max])) (CBAM spatial attention, Woo et al. 2018)."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B,C,h,w] -> [B,C,h,w]
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)  # [B,2,h,w]
        return x * (2.0 * torch.sigmoid(self.conv(pooled)))


class SpatialEnhancement(nn.Module):
    def __init__(self, channels: int, dc: bool, sa: bool, rates: Sequence[int], sa_kernel: int):
        super().__init__()
        self.dc = DilatedConv(channels, rates) if dc else None
        self.sa = SpatialAttention(sa_kernel) if sa else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dc is not None:
            x = self.dc(x)
        if self.sa is not None:
            x = self.sa(x)
        return x


# ----------------------------------------------------------------------------- feature transformer
class EncoderLayer(nn.Module):
    """Post-norm transformer layer of the SeeCoder feature transformer (self-attn -> FFN, ReLU).

    ``attention="pointwise"`` reproduces the reference exactly at batch size 1, which is how
    SeeCoder is run in Prompt-Free Diffusion: the reference calls a sequence-first
    ``nn.MultiheadAttention`` with batch-first tensors, so each token attends only to itself
    and the layer reduces to ``out_proj(v_proj(x))``. ``attention="global"`` is true
    self-attention over all tokens of all levels (the evident intent; O(N^2) in the tokens).
    """

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float, attention: str):
        super().__init__()
        if attention not in ("pointwise", "global"):
            raise ConfigError(f"encoder_attention={attention!r} must be 'pointwise' or 'global'")
        self.attention = attention
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ff_dim)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ff_dim, dim)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B,N,C]
        if self.attention == "global":
            a = self.self_attn(x, x, x, need_weights=False)[0]
        else:
            d = x.shape[-1]
            w, b = self.self_attn.in_proj_weight[2 * d:], self.self_attn.in_proj_bias[2 * d:]
            a = self.self_attn.out_proj(F.linear(x, w, b))  # softmax over one key = 1
        x = self.norm1(x + self.dropout1(a))
        return self.norm2(x + self.dropout3(self.linear2(self.dropout2(F.relu(self.linear1(x))))))


class LateralConv(nn.Module):
    """1x1 conv (no bias) + GroupNorm; parameter names as the reference ``Conv2d_Convenience``."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cout, cin, 1, 1))
        nn.init.kaiming_uniform_(self.weight, a=1)
        self.norm = nn.GroupNorm(groups, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(F.conv2d(x, self.weight))


class FeatureTransformer(nn.Module):
    """SeeCoder "decoder": per level 1x1 conv + GN to ``dim``, + level embedding, joint transformer
    over the concatenated tokens (coarsest level first), + lateral 1x1 conv + GN of the input."""

    def __init__(self, in_channels: dict, dim: int, heads: int, ff_dim: int, layers: int, dropout: float,
                 attention: str, gn_groups: int, enhancement: str, dc_rates: Sequence[int], sa_kernel: int):
        super().__init__()
        self.tags = sorted(in_channels)
        g = _groups(dim, gn_groups)
        self.inproj_layers = nn.ModuleDict()
        for t in self.tags:
            conv = nn.Conv2d(in_channels[t], dim, 1)
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
            self.inproj_layers[t] = nn.Sequential(conv, nn.GroupNorm(g, dim))
        self.transformer = nn.Module()
        self.transformer.layers = nn.ModuleList(
            EncoderLayer(dim, heads, ff_dim, dropout, attention) for _ in range(layers))
        for p in self.transformer.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.level_embed = nn.Parameter(torch.randn(len(self.tags), dim))
        self.lateral_layers = nn.ModuleDict({t: LateralConv(in_channels[t], dim, g) for t in self.tags})
        dc, sa = parse_enhancement(enhancement)
        self.enhance = nn.ModuleList(
            SpatialEnhancement(dim, dc, sa, dc_rates, sa_kernel) for _ in range(layers)) if (dc or sa) else None

    def forward(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        order = self.tags[::-1]  # res5, res4, res3 (level_embed[0] is the coarsest, as in the reference)
        tokens, shapes = [], []
        for i, t in enumerate(order):
            x = self.inproj_layers[t](feats[t])  # [B,dim,h,w]
            shapes.append(x.shape[-2:])
            tokens.append(x.flatten(2).transpose(1, 2) + self.level_embed[i].view(1, 1, -1))  # [B,h*w,dim]
        lengths = [s[0] * s[1] for s in shapes]
        x = torch.cat(tokens, dim=1)  # [B,N,dim]
        for j, layer in enumerate(self.transformer.layers):
            x = layer(x)
            if self.enhance is not None:
                parts = []
                for part, (h, w) in zip(x.split(lengths, dim=1), shapes):
                    m = part.transpose(1, 2).reshape(part.shape[0], -1, h, w)  # [B,dim,h,w]
                    parts.append(self.enhance[j](m).flatten(2).transpose(1, 2))
                x = torch.cat(parts, dim=1)
        out = {}
        for part, (h, w), t in zip(x.split(lengths, dim=1), shapes, order):
            out[t] = part.transpose(1, 2).reshape(part.shape[0], -1, h, w) + self.lateral_layers[t](feats[t])
        return out


# ----------------------------------------------------------------------------- query transformer
class SelfAttentionLayer(nn.Module):
    """Post-norm self-attention; positions added to queries and keys, not values."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        qk = x + pos
        return self.norm(x + self.self_attn(qk, qk, x, need_weights=False)[0])


class CrossAttentionLayer(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, q, kv, q_pos, k_pos):
        k = kv if k_pos is None else kv + k_pos
        return self.norm(q + self.multihead_attn(q + q_pos, k, kv, need_weights=False)[0])


class FeedForwardLayer(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, x):
        return self.norm(x + self.linear2(F.relu(self.linear1(x))))


class PositionEncoding2D(nn.Module):
    """SeeCoder-PA's 2-D positional encoding: Fourier features of centred, min-side-normalised
    coordinates (``freq_num`` log-spaced frequencies up to min(h,w)/2) -> 3-layer SiLU MLP
    (last layer zero-initialised). A random sub-pixel jitter is added while training."""

    def __init__(self, dim: int, freq_num: int = 20, layers: int = 3):
        super().__init__()
        self.freq_num = freq_num
        mods, cin = [], 4 * freq_num
        for i in range(layers):
            lin = nn.Linear(cin, dim)
            nn.init.xavier_normal_(lin.weight)
            nn.init.zeros_(lin.bias)
            mods.append(lin)
            if i < layers - 1:
                mods.append(nn.SiLU())
            cin = dim
        self.mlp = nn.Sequential(*mods)
        nn.init.zeros_(self.mlp[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B,C,h,w] -> pos [1, h*w, dim]
        h, w = x.shape[-2:]
        m = min(h, w)
        dev, dt = x.device, x.dtype
        jh, jw = (torch.rand(2).tolist() if self.training else (0.5, 0.5))
        yy, xx = torch.meshgrid(torch.arange(h, device=dev, dtype=dt), torch.arange(w, device=dev, dtype=dt),
                                indexing="ij")
        yy = (yy + 0.5 - h / 2 + (jh - 0.5)) / m * (2 * math.pi)
        xx = (xx + 0.5 - w / 2 + (jw - 0.5)) / m * (2 * math.pi)
        freqs = (m / 2) ** torch.linspace(0, 1, self.freq_num, device=dev, dtype=dt)
        ph, pw = yy[..., None] * freqs, xx[..., None] * freqs  # [h,w,F]
        pos = torch.cat([ph.sin(), ph.cos(), pw.sin(), pw.cos()], dim=-1)  # [h,w,4F]
        return self.mlp(pos).reshape(1, h * w, -1)


class QueryTransformer(nn.Module):
    """Global + local learned queries; layer i: local queries cross-attend to level i mod L,
    then self-attention over all queries, then FFN (all post-norm). Output [B, G+L, dim]."""

    def __init__(self, dim: int, num_queries: Sequence[int], heads: int, layers: int, ff_dim: int,
                 num_levels: int, fea2d_pos: bool):
        super().__init__()
        self.num_queries = tuple(num_queries)
        self.num_levels = num_levels
        self.pe_layer = PositionEncoding2D(dim) if fea2d_pos else None
        self.transformer_selfatt_layers = nn.ModuleList(SelfAttentionLayer(dim, heads) for _ in range(layers))
        self.transformer_crossatt_layers = nn.ModuleList(CrossAttentionLayer(dim, heads) for _ in range(layers))
        self.transformer_feedforward_layers = nn.ModuleList(FeedForwardLayer(dim, ff_dim) for _ in range(layers))
        n = sum(self.num_queries)
        self.init_query = nn.Embedding(n, dim)
        self.query_pos_embedding = nn.Embedding(n, dim)
        self.level_embed = nn.Embedding(num_levels, dim)

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        fea, pos = [], []
        for i, x in enumerate(levels):  # finest first: x[0] is 1/8
            pos.append(self.pe_layer(x) if self.pe_layer is not None else None)
            fea.append(x.flatten(2).transpose(1, 2) + self.level_embed.weight[i].view(1, 1, -1))  # [B,h*w,dim]
        b = fea[0].shape[0]
        g = self.num_queries[0]
        query = self.init_query.weight.unsqueeze(0).expand(b, -1, -1)
        qpos = self.query_pos_embedding.weight.unsqueeze(0).expand(b, -1, -1)
        gq, lq = query[:, :g], query[:, g:]
        for i in range(len(self.transformer_selfatt_layers)):
            li = i % self.num_levels
            lq = self.transformer_crossatt_layers[i](lq, fea[li], qpos[:, g:], pos[li])
            q = self.transformer_selfatt_layers[i](torch.cat([gq, lq], dim=1), qpos)
            q = self.transformer_feedforward_layers[i](q)
            gq, lq = q[:, :g], q[:, g:]
        return torch.cat([gq, lq], dim=1)  # [B, G+L, dim]


# ----------------------------------------------------------------------------- SeeCoder
class SeeCoder(nn.Module):
    """Image [B,3,H,W] in [0,1] -> semantic tokens [B, sum(num_queries), dim] (148 x 768 by default).

    Defaults are the published SeeCoder (``configs/model/seecoder.yaml`` of Prompt-Free Diffusion):
    Swin-L, feature transformer 6 layers / 8 heads / FFN 1024, query transformer 9 layers /
    8 heads / FFN 2048, queries (4, 144), no 2-D positions (``fea2d_pos=True`` is SeeCoder-PA).
    """

    def __init__(self, swin_embed_dim: int = 192, swin_depths: Sequence[int] = (2, 2, 18, 2),
                 swin_heads: Sequence[int] = (6, 12, 24, 48), swin_window: int = 12,
                 dim: int = 768, encoder_layers: int = 6, encoder_heads: int = 8, encoder_ff: int = 1024,
                 encoder_dropout: float = 0.0, encoder_attention: str = "pointwise",
                 query_layers: int = 9, query_heads: int = 8, query_ff: int = 2048,
                 num_queries: Sequence[int] = (4, 144), fea2d_pos: bool = False, gn_groups: int = 32,
                 enhancement: str = "dc+sa", dc_rates: Sequence[int] = (1, 2, 3), sa_kernel: int = 7):
        super().__init__()
        if dim % encoder_heads or dim % query_heads:
            raise ConfigError(f"SeeCoder dim {dim} must be divisible by the head counts")
        self.imencoder = SwinBackbone(swin_embed_dim, swin_depths, swin_heads, swin_window, out_indices=(1, 2, 3))
        chans = {f"res{i + 2}": self.imencoder.num_features[i] for i in (1, 2, 3)}
        self.imdecoder = FeatureTransformer(chans, dim, encoder_heads, encoder_ff, encoder_layers, encoder_dropout,
                                            encoder_attention, gn_groups, enhancement, dc_rates, sa_kernel)
        self.qtransformer = QueryTransformer(dim, num_queries, query_heads, query_layers, query_ff, len(LEVELS),
                                             fea2d_pos)
        self.dim = dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # a frozen Swin needs no activation graph (the paper trains only DC+SA)
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.imencoder.parameters())
        with torch.set_grad_enabled(grad):
            feats = self.imencoder(images)  # res3/res4/res5 at 1/8, 1/16, 1/32
        maps = self.imdecoder({t: feats[t] for t in LEVELS})
        return self.qtransformer([maps[t] for t in LEVELS])  # [B, 148, 768]

    def enhancement_parameters(self):
        return [] if self.imdecoder.enhance is None else list(self.imdecoder.enhance.parameters())
