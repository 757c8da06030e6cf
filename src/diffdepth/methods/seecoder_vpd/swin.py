"""Swin Transformer backbone laid out like the one SeeCoder was trained with.

Swin Transformer (Liu et al., ICCV 2021, "Hierarchical Vision Transformer using Shifted
Windows"), in the dense-prediction form used by SeeCoder (Prompt-Free Diffusion, Xu et al.
2023): patch embedding (4x4 conv + LayerNorm) -> 4 stages of (shifted-)window attention
blocks with relative position bias, patch merging at the end of each stage but the last,
and a LayerNorm on every stage output that is returned. Stage ``i`` outputs a map at stride
``4 * 2**i`` with ``embed_dim * 2**i`` channels.

Parameter names follow that implementation (``patch_embed.proj``, ``layers.{i}.blocks.{j}.attn.qkv``,
``layers.{i}.downsample.reduction``, ``norm{i}``...) so the official SeeCoder checkpoint loads
by name (see :mod:`.convert`). Inputs whose sides are not multiples of the patch or window
size are zero-padded internally, exactly like the reference, and outputs keep the
``ceil`` sizes.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    # [B,H,W,C] -> [B*nW, ws*ws, C]
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def _window_merge(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    # [B*nW, ws*ws, C] -> [B,H,W,C]
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // ws) * (w // ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


class SwinMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ws x ws windows with a learned relative position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Swin stage width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.window_size = window_size
        ws = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)  # [2,ws*ws]
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)  # [N,N,2] in [0, 2ws-2]
        index = rel[..., 0] * (2 * ws - 1) + rel[..., 1]
        # recomputed from the window size, so not part of the state dict
        self.register_buffer("relative_position_index", index, persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        bw, n, c = x.shape  # [B*nW, N, C]
        qkv = self.qkv(x).view(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B*nW, heads, N, d]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)  # [1,heads,N,N]
        if mask is not None:
            nw = mask.shape[0]
            bias = (bias.unsqueeze(1) + mask[None, :, None].to(bias.dtype))  # [1,nW,heads,N,N]
            bias = bias.expand(bw // nw, -1, -1, -1, -1).reshape(bw, self.num_heads, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))  # softmax(qk^T/sqrt(d) + B) v
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window_size: int, shift: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.window_size = window_size
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = SwinMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, h: int, w: int, mask: torch.Tensor) -> torch.Tensor:
        b, length, c = x.shape  # [B, h*w, C]
        ws = self.window_size
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        pad_b, pad_r = (-h) % ws, (-w) % ws
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        x = self.attn(_window_partition(x, ws), mask if self.shift else None)
        x = _window_merge(x, ws, hp, wp)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x[:, :h, :w].reshape(b, h * w, c)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat (order x00, x10, x01, x11) -> LayerNorm -> linear 4C -> 2C."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.reshape(b, -1, 4 * c)))  # [B, ceil(h/2)*ceil(w/2), 2C]


class SwinStage(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, downsample: bool):
        super().__init__()
        self.window_size = window_size
        self.shift = window_size // 2
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else self.shift) for i in range(depth))
        self.downsample = PatchMerging(dim) if downsample else None

    def _shift_mask(self, h: int, w: int, device, dtype) -> torch.Tensor:
        """Mask (0 / -100) that stops shifted windows mixing regions that were not adjacent."""
        ws, s = self.window_size, self.shift
        hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
        img = torch.zeros(1, hp, wp, 1, device=device, dtype=dtype)
        count = 0
        for hs in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
            for wsl in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
                img[:, hs, wsl] = count
                count += 1
        win = _window_partition(img, ws).squeeze(-1)  # [nW, N]
        diff = win[:, None, :] - win[:, :, None]
        return torch.where(diff != 0, torch.full_like(diff, -100.0), torch.zeros_like(diff))  # [nW,N,N]

    def forward(self, x: torch.Tensor, h: int, w: int):
        mask = self._shift_mask(h, w, x.device, x.dtype)
        for blk in self.blocks:
            x = blk(x, h, w, mask)
        if self.downsample is None:
            return x, x, h, w
        return x, self.downsample(x, h, w), (h + 1) // 2, (w + 1) // 2


class SwinBackbone(nn.Module):
    """Swin Transformer returning normalised stage outputs ``{"res2".."res5"}`` (strides 4..32).

    Defaults are Swin-L as used by SeeCoder (embed 192, depths 2/2/18/2, heads 6/12/24/48,
    window 12). ``out_indices`` picks the stages that are returned (SeeCoder uses 1, 2, 3).
    Input: ``x [B,3,H,W]``; SeeCoder feeds the image in [0, 1] without mean/std normalisation.
    """

    def __init__(self, embed_dim: int = 192, depths: Sequence[int] = (2, 2, 18, 2),
                 num_heads: Sequence[int] = (6, 12, 24, 48), window_size: int = 12,
                 patch_size: int = 4, in_chans: int = 3, mlp_ratio: float = 4.0,
                 out_indices: Sequence[int] = (1, 2, 3)):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError("Swin depths and num_heads must have the same length")
        self.num_features = [embed_dim * 2 ** i for i in range(len(depths))]
        self.out_indices = tuple(out_indices)
        self.patch_size = patch_size
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.patch_embed.norm = nn.LayerNorm(embed_dim)
        self.layers = nn.ModuleList(
            SwinStage(self.num_features[i], depths[i], num_heads[i], window_size, i < len(depths) - 1)
            for i in range(len(depths)))
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        p = self.patch_size
        x = F.pad(x, (0, (-x.shape[-1]) % p, 0, (-x.shape[-2]) % p))
        x = self.patch_embed.proj(x)  # [B,C,H/4,W/4]
        b, c, h, w = x.shape
        x = self.patch_embed.norm(x.flatten(2).transpose(1, 2))  # [B,h*w,C]
        out = {}
        for i, stage in enumerate(self.layers):
            y, x, nh, nw = stage(x, h, w)
            if i in self.out_indices:
                y = getattr(self, f"norm{i}")(y)
                out[f"res{i + 2}"] = y.view(b, h, w, -1).permute(0, 3, 1, 2).contiguous()  # [B,C_i,h,w]
            h, w = nh, nw
        return out
