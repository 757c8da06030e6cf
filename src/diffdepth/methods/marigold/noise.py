"""Multi-resolution ("pyramid") noise for training (Marigold, Ke et al. 2024, Sec. 3.2).

Gaussian noise at full latent resolution plus upsampled Gaussian noise at successively
coarser resolutions (each level r ∈ [2, 4) times smaller than the previous), level k weighted
by strength^k, then renormalised to unit standard deviation per sample. Marigold anneals the
strength with the timestep: strength_t = strength · t / T, so almost-clean latents get
almost-white noise. Low-frequency noise makes the denoiser learn the global layout of the
scene instead of only high-frequency detail.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F


def pyramid_noise(shape, strength: Union[float, torch.Tensor] = 0.9, generator: Optional[torch.Generator] = None,
                  device=None, dtype=torch.float32, max_levels: int = 10) -> torch.Tensor:
    """Unit-variance multi-resolution noise of ``shape`` [B,C,h,w].

    ``strength``: a float or a [B] tensor (per-sample, e.g. annealed with t). Strength 0 is
    plain Gaussian noise.
    """
    B, C, h, w = shape
    noise = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    s = torch.as_tensor(strength, dtype=torch.float32, device=noise.device).reshape(-1)
    s = (s if s.numel() == B else s.expand(B)).view(B, 1, 1, 1)
    hk, wk = h, w
    for k in range(1, max_levels + 1):
        r = 2.0 + 2.0 * torch.rand((), generator=generator, device=device).item()  # r ∈ [2, 4)
        hk, wk = max(1, int(hk / r)), max(1, int(wk / r))
        coarse = torch.randn((B, C, hk, wk), generator=generator, device=device, dtype=torch.float32)
        noise = noise + F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False) * s ** k
        if hk == 1 or wk == 1:
            break
    std = noise.flatten(1).std(dim=1).clamp(min=1e-6).view(B, 1, 1, 1)
    return (noise / std).to(dtype)


def annealed_strength(t: torch.Tensor, strength: float, num_train_timesteps: int) -> torch.Tensor:
    """Marigold's annealing: strength · t / T per sample ([B])."""
    return strength * t.float() / float(num_train_timesteps)
