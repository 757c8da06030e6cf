"""VPD-style aggregation of UNet decoder features and the depth task decoder.

VPD: Zhao et al., "Unleashing Text-to-Image Diffusion Models for Visual Perception"
(ICCV 2023), depth head (``depth/models_depth/model.py`` of wl-zhao/VPD): the decoder
features at 1/8, 1/16, 1/32, 1/64 (320, 640, 1280, 1280 ch for SD) are brought to 1/32
(stride-2 convs for the finer maps, nearest x2 upsampling for the coarsest), concatenated,
fused by 1x1 conv + GroupNorm + ReLU (1536 ch); then 3 x (transposed conv x2, 32 ch, BN,
ReLU) -> 3x3 conv + BN + ReLU -> bilinear x2 up to full resolution -> 3x3 conv, ReLU, 3x3
conv -> 1 channel -> sigmoid x max_depth.

Like VPD (``VPDDepth.forward``: 480 -> 512 zero padding, the aggregated 16 x 16 map cropped
to 15 x 15), the model crops the aggregated map of the padded input to ``ceil(h/32) x
ceil(w/32)`` cells before the decoder (``SeeCoderVPD.head``), so padding-only cells never reach
the decoder or its BatchNorm statistics; the aggregation's GroupNorm sees the whole padded map,
as in VPD.

Here the tap list, their channels and scales come from the UNet config, the aggregation
scale is the second-coarsest tap scale (1/32 for SD) and the number of bilinear x2 steps
is whatever remains after the transposed convolutions, so a tiny UNet uses the same code.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _gn(channels: int, groups: int = 16) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, groups), channels)


def _log2(x: int) -> int:
    n = int(round(math.log2(x)))
    if 2 ** n != x:
        raise ValueError(f"scale {x} is not a power of two")
    return n


class FeatureAggregation(nn.Module):
    """Maps ``[B,C_i,H/s_i,W/s_i]`` -> one map ``[B,out_dim,H/S,W/S]`` at ``S`` = ``target_scale``."""

    def __init__(self, channels: Sequence[int], scales: Sequence[int], out_dim: int, target_scale: int):
        super().__init__()
        self.scales = list(scales)
        self.target_scale = target_scale
        self.adapters = nn.ModuleList()
        for c, s in zip(channels, scales):
            steps = _log2(target_scale) - _log2(s)
            if steps <= 0:  # same scale or coarser: identity here, nearest upsampling in forward
                self.adapters.append(nn.Identity())
                continue
            layers = [nn.Conv2d(c, c, 3, stride=2, padding=1)]
            for _ in range(steps - 1):
                layers += [_gn(c), nn.ReLU(), nn.Conv2d(c, c, 3, stride=2, padding=1)]
            self.adapters.append(nn.Sequential(*layers))
        self.out_layer = nn.Sequential(nn.Conv2d(sum(channels), out_dim, 1), _gn(out_dim), nn.ReLU())
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, feats: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        h, w = size[0] // self.target_scale, size[1] // self.target_scale
        maps = []
        for x, s, adapter in zip(feats, self.scales, self.adapters):
            x = adapter(x)
            if s > self.target_scale:
                x = F.interpolate(x, scale_factor=s // self.target_scale, mode="nearest")
            maps.append(x[..., :h, :w])
        return self.out_layer(torch.cat(maps, dim=1))  # [B,out_dim,H/S,W/S]


class DepthDecoder(nn.Module):
    """Task decoder: ``num_deconv`` x (ConvTranspose k2 s2 -> BN -> ReLU), 3x3 conv + BN + ReLU,
    bilinear x2 steps up to full resolution, then conv-ReLU-conv -> 1 channel -> sigmoid x max_depth.

    ``norm="group"`` swaps BatchNorm for GroupNorm: with the 0.001-std init the pre-norm
    activations are tiny, and after a short run BN's running statistics do not yet match the
    batch statistics (eval-mode predictions then lag train-mode ones); the tiny model uses it."""

    def __init__(self, in_channels: int, in_scale: int, max_depth: float, num_deconv: int = 3,
                 deconv_filters: int = 32, channels: int = 192, norm: str = "batch"):
        super().__init__()
        if norm not in ("batch", "group"):
            raise ValueError(f"head norm {norm!r} must be 'batch' (VPD) or 'group'")
        make_norm = nn.BatchNorm2d if norm == "batch" else _gn
        self.max_depth = float(max_depth)
        self.ups = _log2(in_scale) - num_deconv
        if self.ups < 0:
            raise ValueError(f"{num_deconv} transposed convolutions overshoot the 1/{in_scale} input")
        layers, cin = [], in_channels
        for _ in range(num_deconv):
            layers += [nn.ConvTranspose2d(cin, deconv_filters, 2, stride=2, bias=False),
                       make_norm(deconv_filters), nn.ReLU()]
            cin = deconv_filters
        self.deconv_layers = nn.Sequential(*layers)
        self.conv_layers = nn.Sequential(nn.Conv2d(cin, channels, 3, padding=1), make_norm(channels), nn.ReLU())
        self.last_layer_depth = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                              nn.Conv2d(channels, 1, 3, padding=1))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_layers(self.deconv_layers(x))  # [B,channels,H/2^ups,W/2^ups]
        for _ in range(self.ups):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return torch.sigmoid(self.last_layer_depth(x)) * self.max_depth  # [B,1,H,W] metres
