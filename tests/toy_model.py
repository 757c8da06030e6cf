"""A test-only tiny DepthModel and dataset for the training engine.

Config use: ``model.method: "toy_model:ToyDepth"`` and a dataset entry
``{type: "toy_model:ToyDepthSet", n: 16, size: [16, 16]}`` (``tests/`` on PYTHONPATH).
The model has a frozen stem (to check frozen parameters get no gradient or optimizer
state), a BatchNorm (buffers that must survive resumption) and a trainable head; its
task injects input noise from the global torch RNG (so resumption must restore the RNG)
and flips samples in the dataloader with the position-seeded generator.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from diffdepth.model import DepthModel
from diffdepth.types import DepthPrediction


class ToyDepth(DepthModel):
    method = "toy"
    output_kind = "metric_depth"
    size_multiple = 4
    min_size = 4
    default_processing_res = 0

    def __init__(self, channels: int = 8, freeze_stem: bool = True):
        super().__init__()
        self.config = {"channels": channels, "freeze_stem": freeze_stem}
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
        self.head = nn.Conv2d(channels, 1, 1)
        if freeze_stem:
            self.stem.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # [B,3,H,W] -> [B,1,H,W]
        return F.softplus(self.head(self.body(self.stem(images)))) + 1e-3

    def predict(self, images: torch.Tensor, **options) -> DepthPrediction:
        self.check_options(options)
        return DepthPrediction(self(images), self.output_kind)

    @classmethod
    def make_tiny(cls, seed: int = 0, **overrides) -> "ToyDepth":
        gen_state = torch.get_rng_state()
        torch.manual_seed(seed)
        try:
            return cls(**overrides)
        finally:
            torch.set_rng_state(gen_state)

    @classmethod
    def build(cls, backbone: str = "", **config) -> "ToyDepth":
        return cls(**config)

    def make_training_task(self, noise: float = 0.05, flip: bool = True) -> "ToyTask":
        return ToyTask(self, noise, flip)


class ToyTask:
    def __init__(self, model: ToyDepth, noise: float, flip: bool):
        self.model = model
        self.noise = noise
        self.flip = flip

    def transform(self, sample: dict, rng: np.random.Generator) -> dict:
        if self.flip and rng.random() < 0.5:
            sample = dict(sample)
            for k in ("image", "depth", "valid"):
                sample[k] = np.ascontiguousarray(np.asarray(sample[k])[..., ::-1])
        return sample

    def __call__(self, batch: dict) -> dict:
        x = batch["image"]
        x = x + self.noise * torch.randn_like(x)  # consumes the global torch RNG
        pred = self.model(x)
        valid = batch["valid"].float()
        err = (pred - batch["depth"]).abs() * valid
        loss = err.sum() / valid.sum().clamp_min(1.0)
        return {"loss": loss, "logs": {"pred_mean": pred.detach().mean(), "note": "ignored"}}

    def visualize(self, batch: dict, output: dict) -> dict:
        with torch.no_grad():
            d = self.model(batch["image"][:1])[0, 0]
        d = (d - d.min()) / (d.max() - d.min() + 1e-8)
        img = (d.cpu().numpy()[..., None].repeat(3, axis=-1) * 255).astype(np.uint8)
        return {"depth": img}


class ToyDepthSet(Dataset):
    """``n`` random images whose depth is a smooth function of the colour (learnable)."""

    def __init__(self, root: str | None = None, n: int = 16, size=(16, 16), seed: int = 0):
        rng = np.random.default_rng(seed)
        h, w = size
        self.images = rng.random((n, 3, h, w), dtype=np.float32)
        self.depths = (1.0 + 2.0 * self.images[:, :1] + self.images[:, 1:2]).astype(np.float32)
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n:
            raise IndexError(i)
        valid = np.ones_like(self.depths[i], dtype=bool)
        valid[..., 0, 0] = False
        return {"name": f"toy{i:03d}", "image": self.images[i], "depth": self.depths[i], "valid": valid}
