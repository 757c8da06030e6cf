"""Training tasks for Marigold / MetricGold.

``objective: diffusion`` (Marigold, Ke et al. 2024, Sec. 3.2; MetricGold): encode image and
normalised depth with the frozen VAE, draw t ~ U{0..T−1} and (multi-resolution, annealed)
noise, noise the depth latent with the DDPM forward process, let the UNet predict the
parameterisation target (v by default: v = √ᾱ ε − √(1−ᾱ) z_d) from concat(z_x, z_d^t), and
take the MSE over latent positions whose 8×8 image patch is entirely valid.

``objective: e2e`` (Garcia et al. 2024, Sec. 4 "end-to-end fine-tuning"): a single step at
t = T − 1 from a zero depth latent; the UNet output is converted to x̂0, decoded by the
(frozen, differentiated-through) VAE decoder, averaged over the 3 channels, and compared with
the normalised ground truth in pixel space: affine-invariant L1 (least-squares scale and
shift per image, then L1) for ``marigold``; L1 in normalised log-depth space for
``metricgold`` (= |log d̂ − log d| · 2/log(d_max/d_min)). Creating an e2e task sets the
model's inference defaults to what it is trained for (zero initial latent, 1 trailing step).

Augmentation (``task.transform``): horizontal flip with probability ``flip_prob`` (0.5).
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from ...errors import ConfigError, InputError
from ...losses.latent import latent_valid_mask, masked_latent_mse
from .noise import annealed_strength, pyramid_noise

OBJECTIVES = ("diffusion", "e2e")


def affine_invariant_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per image: (s, t) = argmin Σ_mask (s·pred + t − target)² in closed form, then mean |s·pred + t − target|.

    pred, target [B,1,H,W]; mask bool [B,1,H,W]. Gradients flow through s and t. Images with
    fewer than 2 valid pixels contribute nothing.
    """
    m = mask.to(pred.dtype)
    n = m.flatten(1).sum(1).clamp(min=1.0)  # [B]
    p, g = pred.flatten(1), target.flatten(1)
    mw = m.flatten(1)
    sp, sg = (mw * p).sum(1), (mw * g).sum(1)
    spp, spg = (mw * p * p).sum(1), (mw * p * g).sum(1)
    det = n * spp - sp * sp
    ok = det.abs() > 1e-12
    det = torch.where(ok, det, torch.ones_like(det))
    s = torch.where(ok, (n * spg - sp * sg) / det, torch.ones_like(det))
    t = torch.where(ok, (spp * sg - sp * spg) / det, torch.zeros_like(det))
    err = (s[:, None] * p + t[:, None] - g).abs() * mw  # [B,HW]
    return err.sum() / mw.sum().clamp(min=1.0)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(pred.dtype)
    return ((pred - target).abs() * m).sum() / m.sum().clamp(min=1.0)


def _flip(x):
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return torch.flip(x, dims=[-1])
    return np.ascontiguousarray(np.flip(np.asarray(x), axis=-1))


class LatentDepthTask:
    """``task(batch) -> {"loss", "logs"}`` for the Marigold family (see module docstring)."""

    def __init__(self, model, objective: str = "diffusion", multi_res_noise: bool = True,
                 noise_strength: float = 0.9, annealed: bool = True, zero_terminal_snr: bool = False,
                 flip_prob: float = 0.5, e2e_timestep: Optional[int] = None, crop=None):
        if objective not in OBJECTIVES:
            raise ConfigError(f"task.objective must be one of {OBJECTIVES}, got {objective!r}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ConfigError(f"task.flip_prob must be in [0, 1], got {flip_prob}")
        if not 0.0 <= noise_strength < 1.0:
            raise ConfigError(f"task.noise_strength must be in [0, 1), got {noise_strength}")
        self.model = model
        self.objective = objective
        self.multi_res_noise = bool(multi_res_noise)
        self.noise_strength = float(noise_strength)
        self.annealed = bool(annealed)
        self.flip_prob = float(flip_prob)
        if crop is not None:
            if not (isinstance(crop, (list, tuple)) and len(crop) == 2 and all(int(c) > 0 for c in crop)):
                raise ConfigError(f"task.crop must be [H, W], got {crop!r}")
            if any(int(c) % model.latent_factor for c in crop):
                raise ConfigError(f"task.crop sides must be multiples of {model.latent_factor}, got {crop}")
            crop = (int(crop[0]), int(crop[1]))
        self.crop = crop
        sched = model.sd.scheduler
        if zero_terminal_snr:  # Lin et al. 2024, Algorithm 1
            if sched.config.prediction_type == "epsilon":
                raise ConfigError("task.zero_terminal_snr needs v- or x0-prediction (ε is undefined at SNR 0)")
            model.sd.scheduler = sched = DDIMScheduler.from_config(sched.config, rescale_betas_zero_snr=True)  # saved
        #: the DDPM forward process q(x_t | x_0) and the UNet's regression target (ε, v or x0)
        self.noise_scheduler = DDPMScheduler.from_config(sched.config)
        T = sched.config.num_train_timesteps
        self.e2e_timestep = T - 1 if e2e_timestep is None else int(e2e_timestep)
        if not 0 <= self.e2e_timestep < T:
            raise ConfigError(f"task.e2e_timestep must be in [0, {T - 1}], got {e2e_timestep}")
        # x̂0 of one DDIM step from e2e_timestep (the step's target timestep plays no part in x̂0)
        self.x0_scheduler = model.ddim(1)
        if objective == "e2e":
            # the trained model is meant to be run exactly like this at inference
            model.config.update({"init_noise": "zeros", "default_denoising_steps": 1,
                                 "timestep_spacing": "trailing", "default_ensemble_size": 1})

    # ------------------------------------------------------------------ augmentation
    def transform(self, sample: dict, rng) -> dict:
        """Random crop to ``crop`` (if set; principal point shifted), then a horizontal flip
        (image, depth, valid; principal point mirrored) with probability ``flip_prob``."""
        def uniform() -> float:
            return float(torch.rand(1, generator=rng).item()) if isinstance(rng, torch.Generator) else float(rng.random())

        if self.crop is not None:
            sample = self._crop(sample, uniform(), uniform())
        if uniform() >= self.flip_prob:
            return sample
        out = dict(sample)
        for key in ("image", "depth", "valid"):
            if key in out:
                out[key] = _flip(out[key])
        K = out.get("intrinsics")
        if K is not None and "image" in out:
            W = np.asarray(out["image"]).shape[-1]
            K = K.clone() if isinstance(K, torch.Tensor) else np.array(K, dtype=np.float64, copy=True)
            K[0, 2] = (W - 1) - K[0, 2]
            out["intrinsics"] = K
        return out

    def _crop(self, sample: dict, u: float, v: float) -> dict:
        ch, cw = self.crop
        H, W = np.asarray(sample["image"]).shape[-2:]
        if H < ch or W < cw:
            raise InputError(f"sample {sample.get('name', '?')} is {H}x{W}, smaller than task.crop {ch}x{cw}")
        top, left = int(u * (H - ch + 1)), int(v * (W - cw + 1))
        out = dict(sample)
        for key in ("image", "depth", "valid"):
            if key in out and out[key] is not None:
                out[key] = out[key][..., top:top + ch, left:left + cw]
        K = out.get("intrinsics")
        if K is not None:
            K = K.clone() if isinstance(K, torch.Tensor) else np.array(K, dtype=np.float64, copy=True)
            K[0, 2] -= left
            K[1, 2] -= top
            out["intrinsics"] = K
        return out

    # ------------------------------------------------------------------ loss
    def _inputs(self, batch: dict):
        model = self.model
        for key in ("image", "depth"):
            if key not in batch:
                raise InputError(f"{model.method} training batches need {key!r} (got {sorted(batch)})")
        image = torch.as_tensor(batch["image"]).to(model.device, torch.float32)  # [B,3,H,W]
        depth = torch.as_tensor(batch["depth"]).to(model.device, torch.float32)  # [B,1,H,W]
        if depth.dim() == 3:
            depth = depth[:, None]
        valid = batch.get("valid")
        valid = (depth > 0) if valid is None else torch.as_tensor(valid).to(model.device).bool()
        if valid.dim() == 3:
            valid = valid[:, None]
        valid = valid & torch.isfinite(depth) & (depth > 0)
        f = model.latent_factor
        if image.shape[-1] % f or image.shape[-2] % f:
            raise InputError(f"training images must have sides divisible by {f}, got {tuple(image.shape[-2:])} "
                             f"— set task.crop: [H, W]")
        return image, depth, valid

    def __call__(self, batch: dict) -> dict:
        model = self.model
        image, depth, valid = self._inputs(batch)
        B = image.shape[0]
        with torch.no_grad():
            z_img = model.sd.encode_image(image)  # [B,4,h,w]
        ctx = model.sd.encode_prompt(None, batch_size=B)
        if self.objective == "e2e":
            return self._e2e(image, depth, valid, z_img, ctx)

        with torch.no_grad():
            z_depth = model.encode_depth(depth, valid)  # [B,4,h,w]
        T = self.noise_scheduler.config.num_train_timesteps
        t = torch.randint(0, T, (B,), device=model.device)
        if self.multi_res_noise:
            strength = annealed_strength(t, self.noise_strength, T) if self.annealed else self.noise_strength
            noise = pyramid_noise(z_depth.shape, strength, device=model.device, dtype=z_depth.dtype)
        else:
            noise = torch.randn_like(z_depth)
        noisy = self.noise_scheduler.add_noise(z_depth, noise, t)  # [B,4,h,w]
        target = {"epsilon": noise, "sample": z_depth}.get(self.noise_scheduler.config.prediction_type)
        if target is None:  # v = √ᾱ ε − √(1−ᾱ) z_d (Salimans & Ho 2022)
            target = self.noise_scheduler.get_velocity(z_depth, noise, t)
        out = model.sd.unet(torch.cat([z_img, noisy], dim=1), t, encoder_hidden_states=ctx, return_dict=False)[0]
        mask = latent_valid_mask(valid, model.latent_factor)  # [B,1,h,w]
        loss = masked_latent_mse(out, target, mask)
        logs = {"latent_mse": float(loss.detach()), "t_mean": float(t.float().mean()),
                "valid_latent_frac": float(mask.float().mean())}
        return {"loss": loss, "logs": logs}

    def _e2e(self, image, depth, valid, z_img, ctx) -> dict:
        model = self.model
        B = image.shape[0]
        t = torch.full((B,), self.e2e_timestep, device=model.device, dtype=torch.long)
        zeros = torch.zeros_like(z_img)
        out = model.sd.unet(torch.cat([z_img, zeros], dim=1), t, encoder_hidden_states=ctx, return_dict=False)[0]
        x0 = self.x0_scheduler.step(out, self.e2e_timestep, zeros).pred_original_sample  # [B,4,h,w], differentiable
        pred = model.decode_normalized(x0, clip=False).float()  # [B,1,H,W] in normalised units
        target = model.normalizer.encode(depth, valid).float()
        if model.normalizer_name == "log":
            loss = masked_l1(pred, target, valid)
            name = "log_l1"
        else:
            loss = affine_invariant_l1(pred, target, valid)
            name = "affine_l1"
        return {"loss": loss, "logs": {name: float(loss.detach())}}

    # ------------------------------------------------------------------ images for TensorBoard
    def visualize(self, batch: dict, out: dict) -> dict:
        """Input image | ground truth | one-step prediction, colourised (first sample)."""
        from ...io.colormaps import COLORMAPS

        def colorize(d: np.ndarray) -> np.ndarray:  # near = red (Spectral t = 0)
            lo, hi = float(np.nanmin(d)), float(np.nanmax(d))
            t = (d - lo) / max(hi - lo, 1e-6)
            return (COLORMAPS["spectral"](t) * 255).round().astype(np.uint8)

        model = self.model
        image, depth, valid = self._inputs(batch)
        with torch.no_grad():
            pred = model.run(image[:1], steps=1, timestep_spacing="trailing", seed=0).depth[0, 0]
        gt = depth[0, 0]
        rgb = (image[0].permute(1, 2, 0).clamp(0, 1) * 255).byte().cpu().numpy()
        return {"input": rgb, "gt": colorize(gt.cpu().numpy()), "pred": colorize(pred.cpu().numpy())}


def make_task(model, **cfg: Any) -> LatentDepthTask:
    try:
        return LatentDepthTask(model, **cfg)
    except TypeError as err:
        raise ConfigError(f"{model.method} task: {err}") from None
