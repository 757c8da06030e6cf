"""Architecture configs of the published Stable Diffusion models, for random-weight builds.

Benchmarks build the real architectures with random weights (no download); the numbers
are those of the published configs (REFERENCE.md, "Stable Diffusion 2.1").
"""
from __future__ import annotations

from typing import Optional

import torch

SD21_UNET = dict(  # stabilityai/stable-diffusion-2-1 unet/config.json
    sample_size=96, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
    use_linear_projection=True, upcast_attention=True,
)
SD15_UNET = dict(SD21_UNET, sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                 use_linear_projection=False, upcast_attention=False)
SD_VAE = dict(  # vae/config.json (same for SD 1.5 and 2.1)
    in_channels=3, out_channels=3, latent_channels=4, sample_size=768, layers_per_block=2, act_fn="silu",
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), norm_num_groups=32, scaling_factor=0.18215,
)
SD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    clip_sample=False, steps_offset=1, timestep_spacing="leading")


def _random_init_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fast random weights for a module built on the meta device (benchmarks only)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        with torch.no_grad():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.normal_(0.0, fan_in ** -0.5, generator=g)
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
    return module


def random_sd(arch: str = "sd21", with_vae: bool = True, device: Optional[torch.device] = None,
              dtype: Optional[torch.dtype] = None, seed: int = 0):
    """Full-size SD UNet (+ VAE) with random weights and no text encoder.

    Built on the meta device and filled with scaled Gaussian weights, which takes
    seconds instead of the minutes of diffusers' default initialisation on a CPU.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from .sd import StableDiffusion

    unet_cfg = {"sd21": SD21_UNET, "sd15": SD15_UNET}[arch]
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_cfg)
        vae = AutoencoderKL(**SD_VAE) if with_vae else None
    unet = _random_init_(unet.to_empty(device="cpu"), seed)
    if vae is not None:
        vae = _random_init_(vae.to_empty(device="cpu"), seed + 1)
    sched = DDPMScheduler(**SD_SCHEDULER, prediction_type="v_prediction" if arch == "sd21" else "epsilon")
    sd = StableDiffusion(vae=vae, unet=unet, scheduler=sched, source=f"random-{arch}")
    # no text encoder: the empty prompt becomes a fixed random context of the right shape
    ctx = torch.randn(1, 77, unet_cfg["cross_attention_dim"], generator=torch.Generator().manual_seed(seed))
    sd._empty_prompt = ctx
    return sd.to(device=device, dtype=dtype)
