"""DiffSQL networks (Zheng et al., "DiffSQL: Leveraging Diffusion Model for Zero-Shot
Self-Supervised Monocular Depth Estimation"), built on Monodepth2 (Godard et al. 2019) and
SQLdepth (Wang et al. 2024).

* :class:`ResNetFeatures` — ResNet-18/50 feature pyramid (strides 2, 4, 8, 16, 32) on
  ``transformers.ResNetModel``; also the PoseNet encoder with a 6-channel two-frame input.
* :class:`SDFeatureBranch` — DiffSQL Sec. 3.1: VAE latent -> one UNet pass -> per stage
  (encoder, mid, decoder at the chosen tap) the res-block output (local) and the transformer
  output (global), each 1x1-conv'd to a common width, concatenated, 1x1-conv'd down; all
  stages resized to the latent grid (h/8) and merged. Also the tap stage's tokens for the
  self-query layer (Sec. 3.2: SD features replace the ViT vectors as coarse-grained queries).
* :class:`DepthDecoder` — U-Net decoder (SQLdepth's DecoderBN) from stride 32 to stride 2;
  the SD features are concatenated with the CNN skip at the 4th downsampling stage (stride 16).
* :class:`SelfQueryHead` — DiffSQL Sec. 3.2, Eqs. 1-11: dynamic self-query layer, self-cost
  volume, adaptive bins, probabilistic combination of bin centres. ``queries`` switches
  between ``dynamic`` (Eq. 3), ``fixed`` (Q_base only) and ``none`` (plain sigmoid-disparity
  head as in Monodepth2) — the paper's Table 6 ablation.
* :class:`PoseNet` — Monodepth2 pose network: two frames (6 channels) -> ResNet -> 1x1/3x3
  convs -> mean -> 0.01 x (axis-angle, translation).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

#: ``transformers.ResNetConfig`` arguments of the standard ResNets (ImageNet ids when online)
RESNETS = {
    "resnet18": dict(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2], layer_type="basic"),
    "resnet34": dict(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[3, 4, 6, 3], layer_type="basic"),
    "resnet50": dict(embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3],
                     layer_type="bottleneck"),
}
IMAGENET_IDS = {"resnet18": "microsoft/resnet-18", "resnet34": "microsoft/resnet-34", "resnet50": "microsoft/resnet-50"}
#: a few-dozen-channel ResNet for tests and make-tiny
TINY_RESNET = dict(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], layer_type="basic")

SD_TAPS = ("mid0", "up1", "up0")
#: where an up-block tap reads its local map: ``auto`` (the first with at least as many tokens
#: as queries), the block's last res-block (before its upsampler) or the upsampler's output
TAP_POINTS = ("auto", "before_upsampler", "after_upsampler")
QUERY_MODES = ("none", "fixed", "dynamic")
#: which queries build the self-cost volume (Eq. 7): Q_output (Eq. 6) or Q_dynamic (Eq. 3)
COST_QUERIES = ("output", "dynamic")


def resnet_spec(spec: Union[str, dict]) -> dict:
    if isinstance(spec, dict):
        return dict(spec)
    if spec == "tiny":
        return dict(TINY_RESNET)
    try:
        return dict(RESNETS[spec])
    except KeyError:
        raise ValueError(f"unknown encoder {spec!r}; use one of {', '.join(RESNETS)}, 'tiny' "
                         f"or a ResNetConfig dict") from None


class ResNetFeatures(nn.Module):
    """ResNet feature pyramid: image(s) [B,3k,H,W] in [0,1] -> 5 maps at strides 2,4,8,16,32.

    Inputs are normalised as in Monodepth2, (x − 0.45)/0.225. ``pretrained=True`` loads the
    ImageNet weights from the Hugging Face hub (``microsoft/resnet-18``/``-50``; needs the
    network); for ``in_frames > 1`` the first convolution's weights are repeated over the
    frames and divided by their number (Monodepth2's multi-image ResNet).
    """

    def __init__(self, spec: Union[str, dict] = "resnet18", in_frames: int = 1, pretrained: bool = False):
        super().__init__()
        from transformers import ResNetConfig, ResNetModel

        cfg = resnet_spec(spec)
        self.resnet = ResNetModel(ResNetConfig(num_channels=3 * in_frames, **cfg))
        if pretrained:
            self._load_imagenet(spec, in_frames)
        self.channels = [cfg["embedding_size"]] + list(cfg["hidden_sizes"])

    def _load_imagenet(self, spec, in_frames: int) -> None:
        from transformers import ResNetModel

        from ...errors import CheckpointError

        hub_id = IMAGENET_IDS.get(spec) if isinstance(spec, str) else None
        if hub_id is None:
            raise CheckpointError(f"no ImageNet weights for encoder {spec!r}; set pretrained_encoder: false")
        try:
            ref = ResNetModel.from_pretrained(hub_id)
        except Exception as err:  # offline, missing
            raise CheckpointError(f"could not load ImageNet weights {hub_id} ({type(err).__name__}; offline?) — "
                                  f"set pretrained_encoder: false to start from random weights") from None
        state = ref.state_dict()
        key = "embedder.embedder.convolution.weight"
        state[key] = torch.cat([state[key]] * in_frames, 1) / in_frames
        self.resnet.load_state_dict(state)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = (x - 0.45) / 0.225
        f0 = self.resnet.embedder.embedder(x)  # [B,C0,H/2,W/2]
        feats = [f0]
        h = self.resnet.embedder.pooler(f0)  # [B,C0,H/4,W/4]
        for stage in self.resnet.encoder.stages:
            h = stage(h)
            feats.append(h)  # strides 4, 8, 16, 32
        return feats


class _UpBlock(nn.Module):
    """Upsample to the skip's size, concatenate, two 3x3 conv + BN + LeakyReLU (SQLdepth UpSampleBN)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.LeakyReLU(),
            nn.Conv2d(out_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.LeakyReLU())

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return self.net(torch.cat([x, skip], 1))


class DepthDecoder(nn.Module):
    """U-Net decoder from the stride-32 map to a ``out_channels`` feature map S at stride 2.

    ``extra_channels`` is the width of the SD features concatenated to the stride-16 skip
    (DiffSQL Fig. 2: "at the fourth down-sampling stage"). ``scales`` > 1 adds Monodepth2-style
    sigmoid disparity heads at strides 4, 8, 16 for multi-scale supervision.
    """

    def __init__(self, enc_channels: Sequence[int], features: int = 256, out_channels: int = 64,
                 extra_channels: int = 0, scales: int = 1):
        super().__init__()
        c0, c1, c2, c3, c4 = enc_channels
        widths = [max(features // 2 ** i, 8) for i in range(5)]
        self.bottleneck = nn.Conv2d(c4, widths[0], 1)
        self.up16 = _UpBlock(widths[0] + c3 + extra_channels, widths[1])
        self.up8 = _UpBlock(widths[1] + c2, widths[2])
        self.up4 = _UpBlock(widths[2] + c1, widths[3])
        self.up2 = _UpBlock(widths[3] + c0, widths[4])
        self.out = nn.Conv2d(widths[4], out_channels, 3, padding=1)
        self.scales = int(scales)
        # auxiliary disparity heads at strides 4, 8, 16 (scale s = 1, 2, 3)
        self.aux = nn.ModuleList([nn.Conv2d(widths[4 - s], 1, 3, padding=1) for s in range(1, self.scales)])

    def forward(self, feats: Sequence[torch.Tensor], extra: Optional[torch.Tensor] = None):
        f0, f1, f2, f3, f4 = feats
        skip16 = f3 if extra is None else torch.cat([f3, F.interpolate(extra, size=f3.shape[-2:], mode="bilinear",
                                                                       align_corners=False)], 1)
        x16 = self.up16(self.bottleneck(f4), skip16)  # [B,w1,H/16,W/16]
        x8 = self.up8(x16, f2)  # [B,w2,H/8,W/8]
        x4 = self.up4(x8, f1)  # [B,w3,H/4,W/4]
        x2 = self.up2(x4, f0)  # [B,w4,H/2,W/2]
        by_scale = {1: x4, 2: x8, 3: x16}
        aux = [torch.sigmoid(head(by_scale[s])) for s, head in zip(range(1, self.scales), self.aux)]
        return self.out(x2), aux  # S [B,E,H/2,W/2], sigmoid maps at strides 4, 8, 16


class _PairFusion(nn.Module):
    """DiffSQL Sec. 3.1: 1x1 conv on the local and on the global map to a common width, concatenate,
    1x1 conv to reduce."""

    def __init__(self, local_ch: int, global_ch: int, width: int):
        super().__init__()
        self.local = nn.Conv2d(local_ch, width, 1)
        self.glob = nn.Conv2d(global_ch, width, 1)
        self.reduce = nn.Sequential(nn.Conv2d(2 * width, width, 1), nn.GELU())

    def forward(self, local: torch.Tensor, glob: torch.Tensor) -> torch.Tensor:
        if glob.shape[-2:] != local.shape[-2:]:
            glob = F.interpolate(glob, size=local.shape[-2:], mode="bilinear", align_corners=False)
        return self.reduce(torch.cat([self.local(local), self.glob(glob)], 1))


def _has_upsampler(unet: nn.Module, tap: str) -> bool:
    if not tap.startswith("up"):
        return False
    i = int(tap[2:])
    return i < len(unet.up_blocks) and bool(getattr(unet.up_blocks[i], "upsamplers", None))


def tap_token_grid(unet: nn.Module, tap: str, latent_size: Tuple[int, int],
                   after_upsampler: bool = False) -> Tuple[int, int]:
    """Grid ``(h, w)`` of the tap stage's map (its token count is ``h·w``) for a latent of ``latent_size``.

    The mid block runs at the latent size halved once per down-sampler; up block ``i`` at the
    mid size doubled once per up-sampler of the blocks before it, and once more after its own
    up-sampler. SD 2.1 at 640×192 (latent 80×24): ``up0`` 10×3 = 30 tokens before its
    up-sampler, 20×6 = 120 after.
    """
    h, w = int(latent_size[0]), int(latent_size[1])
    for block in unet.down_blocks:
        if getattr(block, "downsamplers", None):
            h, w = (h + 1) // 2, (w + 1) // 2  # stride-2 conv with padding 1
    if tap == "mid0":
        return h, w
    i = int(tap[2:])
    ups = sum(1 for block in unet.up_blocks[:i] if getattr(block, "upsamplers", None))
    if after_upsampler:
        ups += 1
    return h * 2 ** ups, w * 2 ** ups


def resolve_tap_point(unet: nn.Module, tap: str, point: str, num_queries: int,
                      input_size: Tuple[int, int], latent_factor: int = 8) -> str:
    """``auto`` -> ``before_upsampler`` if the block's own map has at least ``num_queries`` tokens
    at ``input_size`` (else ``after_upsampler``); taps without an up-sampler are ``before_upsampler``."""
    if point not in TAP_POINTS:
        raise ValueError(f"sd_tap_point must be one of {', '.join(TAP_POINTS)}, got {point!r}")
    if not _has_upsampler(unet, tap):
        if point == "after_upsampler":
            raise ValueError(f"sd_tap {tap!r} has no up-sampler; sd_tap_point after_upsampler applies to the up "
                             f"blocks that have one")
        return "before_upsampler"
    if point != "auto":
        return point
    latent = (int(input_size[0]) // latent_factor, int(input_size[1]) // latent_factor)
    h, w = tap_token_grid(unet, tap, latent)
    return "before_upsampler" if h * w >= int(num_queries) else "after_upsampler"


def sd_stage_paths(unet: nn.Module, tap: str = "up0", after_upsampler: bool = False) -> List[Tuple[str, str, str]]:
    """UNet module paths ``(stage, local, global)`` for DiffSQL's feature fusion.

    encoder: the first down block (latent resolution h/8) — its last res-block (local) and
    transformer (global); mid: the mid block's last res-block and its transformer; decoder
    (``tap`` = up0/up1): that up block's last res-block (or, ``after_upsampler``, its
    up-sampler's output at twice the resolution) and transformer. A block without a
    transformer (SD 2.1's ``up_blocks.0`` is a plain UpBlock2D) borrows the closest transformer
    executed before it (the mid block's). ``tap = mid0`` stops after the mid block.
    Everything is read from the UNet, so SD 2.1 and the tiny UNet are the same code.
    """
    if tap not in SD_TAPS:
        raise ValueError(f"sd_tap must be one of {', '.join(SD_TAPS)}, got {tap!r}")
    if after_upsampler and not _has_upsampler(unet, tap):
        raise ValueError(f"sd_tap {tap!r} has no up-sampler to tap after")

    def last_attention(block, prefix):
        attn = getattr(block, "attentions", None)
        return f"{prefix}.attentions.{len(attn) - 1}" if attn is not None and len(attn) else None

    stages = []
    down0 = unet.down_blocks[0]
    enc_local = f"down_blocks.0.resnets.{len(down0.resnets) - 1}"
    enc_global = last_attention(down0, "down_blocks.0")
    if enc_global is None:  # first level without attention: take the first down block that has one
        for i, block in enumerate(unet.down_blocks):
            enc_global = last_attention(block, f"down_blocks.{i}")
            if enc_global:
                break
    mid = unet.mid_block
    mid_local = f"mid_block.resnets.{len(mid.resnets) - 1}"
    mid_global = last_attention(mid, "mid_block") or mid_local
    stages.append(("encoder", enc_local, enc_global or enc_local))
    stages.append(("mid", mid_local, mid_global))
    if tap.startswith("up"):
        i = int(tap[2:])
        if i >= len(unet.up_blocks):
            raise ValueError(f"sd_tap {tap!r}: the UNet has only {len(unet.up_blocks)} up blocks")
        block = unet.up_blocks[i]
        local = f"up_blocks.{i}.upsamplers.0" if after_upsampler else f"up_blocks.{i}.resnets.{len(block.resnets) - 1}"
        glob = last_attention(block, f"up_blocks.{i}")
        for j in range(i - 1, -1, -1):  # no transformer here: the closest one executed before
            if glob is not None:
                break
            glob = last_attention(unet.up_blocks[j], f"up_blocks.{j}")
        glob = glob or mid_global
        stages.append(("decoder", local, glob))
    return stages


def _module_channels(unet: nn.Module, path: str) -> int:
    module = unet.get_submodule(path)
    if hasattr(module, "conv2"):  # ResnetBlock2D
        return int(module.conv2.out_channels)
    if ".upsamplers." in path:  # Upsample2D
        return int(module.out_channels)
    cfg = getattr(module, "config", None)  # Transformer2DModel
    if cfg is not None:
        return int(getattr(cfg, "out_channels", None) or cfg.in_channels)
    raise ValueError(f"cannot tell the channels of UNet module {path}")


class SDFeatureBranch(nn.Module):
    """Diffusion-augmented features (DiffSQL Sec. 3.1, Fig. 3).

    Input: the frozen SD's one-step taps (a dict path -> [B,C,h,w]). Output: the fused map
    ``[B,width,h8,w8]`` on the latent grid and the tap stage's tokens ``[B,L,token_dim]`` for
    the self-query layer. The UNet itself is not a submodule here (the model owns ``sd``).
    """

    def __init__(self, unet: nn.Module, tap: str = "up0", width: int = 64, token_dim: int = 64,
                 after_upsampler: bool = False):
        super().__init__()
        self.tap = tap
        self.after_upsampler = bool(after_upsampler)
        self.stages = sd_stage_paths(unet, tap, after_upsampler)
        self.fusions = nn.ModuleList([_PairFusion(_module_channels(unet, loc), _module_channels(unet, glo), width)
                                      for _, loc, glo in self.stages])
        self.merge = nn.Sequential(nn.Conv2d(width * len(self.stages), width, 1), nn.GELU())
        self.to_tokens = nn.Conv2d(width, token_dim, 1)
        self.width = width

    @property
    def paths(self) -> List[str]:
        out = []
        for _, loc, glo in self.stages:
            for p in (loc, glo):
                if p not in out:
                    out.append(p)
        return out

    @property
    def stop_after(self) -> str:
        if self.tap == "mid0":
            return "mid_block"
        return f"up_blocks.{int(self.tap[2:])}"  # the up block (its up-sampler included)

    def forward(self, taps: Dict[str, torch.Tensor], latent_size: Tuple[int, int]):
        maps = []
        tap_map = None
        for (stage, loc, glo), fuse in zip(self.stages, self.fusions):
            fused = fuse(taps[loc], taps[glo])  # [B,width,h_s,w_s] at the stage's own resolution
            tap_map = fused  # the last stage is the tap (mid or up block)
            maps.append(F.interpolate(fused, size=latent_size, mode="bilinear", align_corners=False))
        merged = self.merge(torch.cat(maps, 1))  # [B,width,h/8,w/8]
        tokens = self.to_tokens(tap_map).flatten(2).transpose(1, 2)  # [B,L,token_dim]
        return merged, tokens


class PatchTokens(nn.Module):
    """SQLdepth's ViT stand-in when the SD branch is off: patch embedding of S + learned positional
    encoding (interpolated to the grid) + a small transformer encoder -> tokens [B,L,E]."""

    def __init__(self, dim: int, patch_size: int = 16, layers: int = 4, heads: int = 4, grid: int = 32):
        super().__init__()
        self.patch_size = patch_size
        self.embed = nn.Conv2d(dim, dim, patch_size, stride=patch_size)
        self.pos = nn.Parameter(torch.randn(1, dim, grid, grid) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False) if layers > 0 else nn.Identity()

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        if min(s.shape[-2:]) < self.patch_size:  # small inputs: one token per available patch
            s = F.interpolate(s, size=(max(s.shape[-2], self.patch_size), max(s.shape[-1], self.patch_size)),
                              mode="bilinear", align_corners=False)
        x = self.embed(s)  # [B,E,h/p,w/p]
        x = x + F.interpolate(self.pos, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.encoder(x.flatten(2).transpose(1, 2))  # [B,L,E]


class SelfQueryHead(nn.Module):
    """Dynamic self-query layer + self-cost volume + adaptive bins (DiffSQL Eqs. 1-11).

    Given the decoded feature map S [B,E,h,w] and tokens H [B,L,E]:

    1. g = mean_L H (Eq. 1); g' = f_adjust(g) (Eq. 2, a linear layer = 1x1 conv on a vector);
    2. Q = Q_base + g' (Eq. 3, ``dynamic``) or Q = Q_base (``fixed``); K queries;
    3. A = softmax_L(Q Hᵀ) (Eqs. 4-5); Q_out = A H (Eq. 6);
    4. V = Q_c · S, the self-cost volume [B,K,h,w] (Eq. 7). ``cost_queries="output"`` (default)
       uses Q_c = Q_out (the selected, content-dependent queries — otherwise Eq. 6 would be
       unused; as SQLdepth, whose cost volume is built from the transformer's outputs), whose
       rank is at most L (the token count); ``"dynamic"`` uses Q_c = Q as Eq. 7 is printed
       (rank up to K, the tokens enter only through g). K is fixed in both readings;
    5. b = MLP(Σ_{pixels} softmax(V_i) S) (Eq. 8), widths = (relu(b)+0.1)/Σ (SQLdepth's "linear"
       normalisation) -> positive, summing to 1; bin centres c_i = d_min + (d_max − d_min)
       (b_i/2 + Σ_{j<i} b_j) (Eq. 11);
    6. p = softmax over D planes of 1x1conv(V) (Eq. 9); depth = Σ_i c_i p_i (Eq. 10).

    ``queries="none"``: no query layer; depth from a sigmoid disparity map scaled to
    [1/d_max, 1/d_min] (Monodepth2's output), the paper's "No queries" row.
    """

    def __init__(self, dim: int = 64, num_queries: int = 64, num_bins: int = 128, queries: str = "dynamic",
                 cost_queries: str = "output", min_depth: float = 0.1, max_depth: float = 100.0):
        super().__init__()
        if queries not in QUERY_MODES:
            raise ValueError(f"queries must be one of {', '.join(QUERY_MODES)}, got {queries!r}")
        if cost_queries not in COST_QUERIES:
            raise ValueError(f"cost_queries must be one of {', '.join(COST_QUERIES)}, got {cost_queries!r}")
        if not 0 < min_depth < max_depth:
            raise ValueError(f"need 0 < min_depth < max_depth, got {min_depth}, {max_depth}")
        self.queries = queries
        self.cost_queries = cost_queries
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)
        if queries == "none":
            self.disp = nn.Conv2d(dim, 1, 3, padding=1)
            return
        self.num_queries = num_queries
        self.num_bins = num_bins
        self.q_base = nn.Parameter(torch.randn(num_queries, dim) * dim ** -0.5)
        if queries == "dynamic":
            self.adjust = nn.Linear(dim, dim)
        hidden = max(16 * num_queries // 4, num_bins)
        self.bins_mlp = nn.Sequential(nn.Linear(dim * num_queries, hidden), nn.LeakyReLU(),
                                      nn.Linear(hidden, 256), nn.LeakyReLU(), nn.Linear(256, num_bins))
        self.to_planes = nn.Conv2d(num_queries, num_bins, 1)

    def make_queries(self, tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """tokens H [B,L,E] -> (Q [B,K,E] (Eq. 3), Q_out [B,K,E] (Eq. 6))."""
        b = tokens.shape[0]
        q = self.q_base.unsqueeze(0).expand(b, -1, -1)  # [B,K,E]
        if self.queries == "dynamic":
            g = tokens.mean(1)  # Eq. 1: [B,E]
            q = q + self.adjust(g).unsqueeze(1)  # Eqs. 2-3
        attn = torch.softmax(q @ tokens.transpose(1, 2), dim=-1)  # Eqs. 4-5: [B,K,L]
        return q, attn @ tokens  # Eq. 6: [B,K,E]

    def bins(self, volume: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Eq. 8 + normalisation: bin widths [B,D], positive and summing to 1."""
        b, k, h, w = volume.shape
        weights = torch.softmax(volume.flatten(2), dim=-1)  # softmax over pixels: [B,K,hw]
        summary = weights @ s.flatten(2).transpose(1, 2)  # [B,K,E]
        y = self.bins_mlp(summary.reshape(b, -1))  # [B,D]
        y = torch.relu(y) + 0.1
        return y / y.sum(1, keepdim=True)

    def centres(self, widths: torch.Tensor) -> torch.Tensor:
        """Eq. 11: widths [B,D] (sum 1) -> bin centres [B,D] in metres-like units."""
        before = torch.cumsum(widths, 1) - widths  # Σ_{j<i} b_j
        return self.min_depth + (self.max_depth - self.min_depth) * (widths / 2 + before)

    def forward(self, s: torch.Tensor, tokens: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
        s = self.conv(s)  # [B,E,h,w]
        if self.queries == "none":
            sig = torch.sigmoid(self.disp(s))
            disp = 1.0 / self.max_depth + (1.0 / self.min_depth - 1.0 / self.max_depth) * sig
            return {"depth": 1.0 / disp}
        if tokens is None:
            raise ValueError("the self-query layer needs tokens H [B,L,E]")
        q, q_out = self.make_queries(tokens)
        qc = q_out if self.cost_queries == "output" else q
        b, e, h, w = s.shape
        volume = (qc @ s.flatten(2)).reshape(b, -1, h, w)  # Eq. 7: [B,K,h,w]
        widths = self.bins(volume, s)  # [B,D]
        centres = self.centres(widths)  # [B,D]
        prob = torch.softmax(self.to_planes(volume), dim=1)  # Eq. 9: [B,D,h,w]
        depth = (prob * centres[:, :, None, None]).sum(1, keepdim=True)  # Eq. 10: [B,1,h,w]
        return {"depth": depth, "bin_widths": widths * (self.max_depth - self.min_depth), "bin_centres": centres}


class PoseNet(nn.Module):
    """Monodepth2's separate-ResNet pose network: frames (a, b) stacked as 6 channels ->
    ResNet -> squeeze 1x1 -> two 3x3 -> 1x1 to 6 -> spatial mean -> ×0.01 -> (axis-angle [B,3],
    translation [B,3]) of the motion from a to b."""

    def __init__(self, spec: Union[str, dict] = "resnet18", pretrained: bool = False, width: int = 256):
        super().__init__()
        self.encoder = ResNetFeatures(spec, in_frames=2, pretrained=pretrained)
        c = self.encoder.channels[-1]
        self.decoder = nn.Sequential(
            nn.Conv2d(c, width, 1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 6, 1))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        f = self.encoder(torch.cat([a, b], 1))[-1]  # [B,C,H/32,W/32]
        out = 0.01 * self.decoder(f).mean((2, 3))  # [B,6]
        return out[:, :3], out[:, 3:]
