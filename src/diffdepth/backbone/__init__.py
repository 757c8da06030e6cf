"""Stable Diffusion backbone: loading, image/latent coding, prompts, one-step taps."""
from .sd import COMPONENTS, DEFAULT_SD, StableDiffusion
from .taps import (Preimage, official_region_weights, regional_attention, regional_attention_naive, region_weights,
                   token_attention)
from .tiny import make_tiny_sd, make_tiny_tokenizer

__all__ = ["COMPONENTS", "DEFAULT_SD", "StableDiffusion", "Preimage", "make_tiny_sd", "make_tiny_tokenizer",
           "regional_attention", "regional_attention_naive", "region_weights", "official_region_weights",
           "token_attention"]
