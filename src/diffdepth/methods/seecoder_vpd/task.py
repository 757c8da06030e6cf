"""Training task of SeeCoder-VPD: SiLog on metric depth + VPD/BTS-style augmentation.

``task(batch) -> {"loss", "logs"}`` with ``batch = {"image" [B,3,H,W] in [0,1], "depth"
[B,1,H,W] metres, "valid" [B,1,H,W] bool}``. ``task.transform(sample, rng)`` is the
per-sample augmentation the trainer runs in its data workers (``rng`` a numpy Generator):

* optional KB crop (KITTI benchmark crop: bottom ``kb_crop[0]`` rows, centred ``kb_crop[1]`` columns);
* random crop to ``crop`` = (h, w) (padding with invalid depth when the image is smaller);
* horizontal flip with probability ``flip_prob``;
* colour augmentation with probability ``color_prob`` (BTS/VPD): gamma in ``gamma``,
  brightness in ``brightness``, per-channel colour in ``color``, clipped to [0, 1].

The loss is SiLog (Eigen et al. 2014) with ``silog_lambda`` (ECoDepth 0.85, VPD 0.5) on
pixels with ``min_depth < d <= max_depth`` (``max_depth`` defaults to the model's).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ...errors import ConfigError
from ...losses.silog import silog_loss


class SeeCoderVPDTask:
    def __init__(self, model, silog_lambda: float = 0.85, min_depth: float = 1e-3, max_depth: Optional[float] = None,
                 per_image: bool = False, crop: Optional[Sequence[int]] = None,
                 kb_crop: Optional[Sequence[int]] = None, flip_prob: float = 0.5, color_prob: float = 0.5,
                 gamma: Sequence[float] = (0.9, 1.1), brightness: Sequence[float] = (0.9, 1.1),
                 color: Sequence[float] = (0.9, 1.1)):
        if not 0.0 <= silog_lambda <= 1.0:
            raise ConfigError(f"task.silog_lambda={silog_lambda} must lie in [0, 1]")
        for name, v in (("crop", crop), ("kb_crop", kb_crop)):
            if v is not None and (len(v) != 2 or min(v) <= 0):
                raise ConfigError(f"task.{name} must be [height, width] with positive sides, got {v!r}")
        self.model = model
        self.silog_lambda = float(silog_lambda)
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth if max_depth is not None else model.config["max_depth"])
        self.per_image = bool(per_image)
        self.crop = tuple(int(c) for c in crop) if crop else None
        self.kb_crop = tuple(int(c) for c in kb_crop) if kb_crop else None
        self.flip_prob = float(flip_prob)
        self.color_prob = float(color_prob)
        self.gamma, self.brightness, self.color = tuple(gamma), tuple(brightness), tuple(color)

    # ------------------------------------------------------------------ augmentation
    def transform(self, sample: dict, rng: np.random.Generator) -> dict:
        s = dict(sample)
        image = torch.as_tensor(s["image"])  # [3,H,W]
        depth = torch.as_tensor(s["depth"])  # [1,H,W]
        valid = torch.as_tensor(s.get("valid", depth > 0)).bool()
        if self.kb_crop is not None:
            kh, kw = self.kb_crop
            h, w = image.shape[-2:]
            if h >= kh and w >= kw:
                top, left = h - kh, (w - kw) // 2
                image, depth, valid = (t[..., top:top + kh, left:left + kw] for t in (image, depth, valid))
        if self.crop is not None:
            ch, cw = self.crop
            h, w = image.shape[-2:]
            if h < ch or w < cw:  # pad (image grey, depth invalid) so every sample reaches the crop size
                ph, pw = max(ch - h, 0), max(cw - w, 0)
                image = torch.nn.functional.pad(image, (0, pw, 0, ph), value=0.5)
                depth = torch.nn.functional.pad(depth, (0, pw, 0, ph))
                valid = torch.nn.functional.pad(valid, (0, pw, 0, ph))
                h, w = image.shape[-2:]
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            image, depth, valid = (t[..., top:top + ch, left:left + cw] for t in (image, depth, valid))
        if rng.random() < self.flip_prob:
            image, depth, valid = image.flip(-1), depth.flip(-1), valid.flip(-1)
        if rng.random() < self.color_prob:
            g = rng.uniform(*self.gamma)
            b = rng.uniform(*self.brightness)
            c = torch.as_tensor(rng.uniform(self.color[0], self.color[1], size=3), dtype=image.dtype)
            image = (image.clamp(0, 1) ** g * b * c.view(3, 1, 1)).clamp(0, 1)
        s.update(image=image.contiguous(), depth=depth.contiguous(), valid=valid.contiguous())
        if "intrinsics" in s and (self.kb_crop is not None or self.crop is not None):
            s.pop("intrinsics")  # crops/flips change the principal point; this task does not need it
        return s

    # ------------------------------------------------------------------ loss
    def __call__(self, batch: dict) -> dict:
        param = next(self.model.parameters())
        image = batch["image"].to(device=param.device, dtype=param.dtype)
        depth = batch["depth"].to(device=param.device, dtype=torch.float32)
        valid = batch.get("valid")
        valid = (depth > 0) if valid is None else valid.to(param.device).bool()
        valid = valid & (depth > self.min_depth) & (depth <= self.max_depth)
        pred = self.model(image, batch.get("scene")).float()  # [B,1,H,W] metres (scene: VPD conditioning)
        if not bool(valid.any()):  # nothing to learn from: zero loss that still touches the graph
            return {"loss": pred.sum() * 0.0, "logs": {"valid_fraction": 0.0}}
        loss = silog_loss(pred, depth, valid, self.silog_lambda, self.per_image)
        with torch.no_grad():
            p, t = pred[valid], depth[valid]
            absrel = ((p - t).abs() / t).mean()
            rmse = ((p - t) ** 2).mean().sqrt()
        return {"loss": loss, "logs": {"silog": float(loss.detach()), "abs_rel": float(absrel),
                                       "rmse": float(rmse), "valid_fraction": float(valid.float().mean())}}
