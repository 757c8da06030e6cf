"""Noise schedules and the deterministic DDIM sampler used by Marigold / MetricGold.

* :class:`NoiseSchedule` — the DDPM forward process (Ho et al. 2020): betas ("linear",
  "scaled_linear" as in Stable Diffusion, "squaredcos_cap_v2"), ``alphas_cumprod``
  ``ᾱ_t = Π (1 − β_s)``, optionally rescaled to zero terminal SNR (Lin et al. 2024,
  "Common diffusion noise schedules and sample steps are flawed", Algorithm 1).
  It reads the keys of a diffusers scheduler config, so a checkpoint's ``scheduler/``
  folder describes it.
* :func:`ddim_timesteps` — the "linspace", "leading" and "trailing" spacings of Lin et al.
  Table 2. "leading" with one step queries t = 1 (+offset): Garcia et al. 2024 showed this
  is why one-step Marigold fails; "trailing" starts at t = T − 1 = 999.
* :meth:`NoiseSchedule.ddim_step` — DDIM with η = 0 (Song et al. 2021, Eq. 12):
  ``x_prev = √ᾱ_prev · x̂0 + √(1 − ᾱ_prev) · ε̂``, with (x̂0, ε̂) from an ε-, v- or
  x0-("sample") prediction. The previous timestep is the next one in the sequence
  (for step counts dividing T this equals diffusers' ``t − T // n``); after the last
  step ᾱ_prev is 1 (``set_alpha_to_one``) or ᾱ_0.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from ...errors import ConfigError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SPACINGS = ("leading", "trailing", "linspace")


def make_betas(num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
               beta_schedule: str = "scaled_linear", rescale_betas_zero_snr: bool = False,
               trained_betas=None) -> torch.Tensor:
    """β_t for t = 0 … T−1 (float32, like the checkpoints were trained with)."""
    T = int(num_train_timesteps)
    if trained_betas is not None:
        betas = torch.tensor(trained_betas, dtype=torch.float32)
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":  # linear in √β (latent diffusion)
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=torch.float32) ** 2
    elif beta_schedule == "squaredcos_cap_v2":  # Nichol & Dhariwal 2021, Eq. 17, β capped at 0.999
        def abar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = torch.tensor([min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)], dtype=torch.float32)
    else:
        raise ConfigError(f"unknown beta_schedule {beta_schedule!r}; use linear, scaled_linear or squaredcos_cap_v2")
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    return betas


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2024, Algorithm 1: shift and scale √ᾱ so that √ᾱ_0 is kept and √ᾱ_{T−1} = 0."""
    sqrt_abar = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
    sqrt_abar = (sqrt_abar - last) * (first / (first - last))
    abar = sqrt_abar ** 2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1.0 - alphas


def ddim_timesteps(num_steps: int, num_train_timesteps: int = 1000, spacing: str = "trailing",
                   steps_offset: int = 0) -> list[int]:
    """Descending timesteps for ``num_steps`` DDIM steps (Lin et al. 2024, Table 2).

    * linspace: round(linspace(0, T−1, n)) reversed;
    * leading:  k·(T // n) + offset for k = n−1 … 0  (one step -> t = offset, i.e. 1 for SD);
    * trailing: round(T − k·T/n) − 1 for k = 0 … n−1  (one step -> t = T − 1 = 999).
    """
    T, n = int(num_train_timesteps), int(num_steps)
    if not 1 <= n <= T:
        raise ConfigError(f"number of denoising steps must be between 1 and {T}, got {num_steps}")
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, n).round()[::-1]
    elif spacing == "leading":
        ts = (np.arange(0, n) * (T // n)).round()[::-1] + int(steps_offset)
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / n)) - 1
    else:
        raise ConfigError(f"unknown timestep spacing {spacing!r}; use {', '.join(SPACINGS)}")
    return [int(t) for t in ts.astype(np.int64)]


class NoiseSchedule:
    """ᾱ_t of a DDPM schedule plus the helpers training and DDIM sampling need."""

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                 beta_schedule: str = "scaled_linear", prediction_type: str = "v_prediction",
                 rescale_betas_zero_snr: bool = False, set_alpha_to_one: bool = False, steps_offset: int = 0,
                 clip_sample: bool = False, clip_sample_range: float = 1.0, timestep_spacing: str = "leading",
                 trained_betas=None, **_ignored):
        if prediction_type not in PREDICTION_TYPES:
            raise ConfigError(f"unknown prediction_type {prediction_type!r}; use {', '.join(PREDICTION_TYPES)}")
        if timestep_spacing not in SPACINGS:
            raise ConfigError(f"unknown timestep_spacing {timestep_spacing!r}; use {', '.join(SPACINGS)}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.prediction_type = prediction_type
        self.timestep_spacing = timestep_spacing
        self.steps_offset = int(steps_offset)
        self.clip_sample = bool(clip_sample)
        self.clip_sample_range = float(clip_sample_range)
        self.betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule,
                                rescale_betas_zero_snr, trained_betas)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)  # [T] float32
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]

    @classmethod
    def from_config(cls, config: dict) -> "NoiseSchedule":
        return cls(**{k: v for k, v in dict(config).items() if not k.startswith("_")})

    # ------------------------------------------------------------------ training (forward process)
    def _abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod.to(like.device)[t.to(like.device).long()]
        return a.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)  # [B,1,1,1]

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0): √ᾱ_t x0 + √(1−ᾱ_t) ε (Ho et al. 2020, Eq. 4)."""
        a = self._abar(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Regression target of the UNet: ε, v = √ᾱ ε − √(1−ᾱ) x0 (Salimans & Ho 2022), or x0."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return x0
        a = self._abar(t, x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def predict_x0(self, model_output: torch.Tensor, sample: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x̂0 from the UNet output at timestep(s) t (differentiable; used by the end-to-end loss)."""
        a = self._abar(t, sample)
        if self.prediction_type == "epsilon":
            return (sample - (1 - a).sqrt() * model_output) / a.sqrt()
        if self.prediction_type == "sample":
            return model_output
        return a.sqrt() * sample - (1 - a).sqrt() * model_output

    # ------------------------------------------------------------------ sampling (DDIM, η = 0)
    def timesteps(self, num_steps: int, spacing: Optional[str] = None) -> list[int]:
        return ddim_timesteps(num_steps, self.num_train_timesteps, spacing or self.timestep_spacing,
                              self.steps_offset)

    def ddim_step(self, model_output: torch.Tensor, t: int, t_prev: Optional[int],
                  sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One deterministic DDIM step t -> t_prev (None: the final step). Returns (x_prev, x̂0).

        The arithmetic mirrors the usual float32-scalar formulation so results are
        reproducible across implementations.
        """
        alpha = self.alphas_cumprod[int(t)]
        alpha_prev = self.alphas_cumprod[int(t_prev)] if t_prev is not None and t_prev >= 0 \
            else self.final_alpha_cumprod
        beta = 1 - alpha
        if self.prediction_type == "epsilon":
            x0 = (sample - beta ** 0.5 * model_output) / alpha ** 0.5
            eps = model_output
        elif self.prediction_type == "sample":
            x0 = model_output
            eps = (sample - alpha ** 0.5 * x0) / beta ** 0.5
        else:  # v-prediction: x0 = √ᾱ x − √(1−ᾱ) v, ε = √ᾱ v + √(1−ᾱ) x
            x0 = (alpha ** 0.5) * sample - (beta ** 0.5) * model_output
            eps = (alpha ** 0.5) * model_output + (beta ** 0.5) * sample
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        direction = (1 - alpha_prev) ** 0.5 * eps
        prev = alpha_prev ** 0.5 * x0 + direction
        return prev, x0
