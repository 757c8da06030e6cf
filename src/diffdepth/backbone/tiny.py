"""A tiny, randomly initialised Stable Diffusion in the real component classes.

It has SD's structure at a few dozen channels: a VAE with the real x8 downsampling,
a two-level UNet (attention on the first level and in the mid block, none on the last,
like SD's deepest level), a two-layer CLIP text model and a CLIP tokenizer whose
vocabulary files are created here (byte-level characters only, no merges). Saved with
:meth:`StableDiffusion.save_pretrained`, it is read back by the same loading code as a
real checkpoint, so tests and ``diffdepth make-tiny`` exercise the real paths offline.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from .sd import StableDiffusion


def _byte_alphabet() -> list:
    """The 256 printable stand-ins for bytes used by byte-level BPE tokenizers (GPT-2/CLIP).

    Printable Latin-1 bytes map to themselves; the others are shifted to code points 256+.
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def make_tiny_tokenizer(max_length: int = 77):
    """A CLIP tokenizer over single characters (vocab 514), built from files written here."""
    from transformers import CLIPTokenizer

    alphabet = _byte_alphabet()
    vocab = {}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    for ch in alphabet:
        vocab[ch + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        tok = CLIPTokenizer(vocab=str(Path(tmp) / "vocab.json"), merges=str(Path(tmp) / "merges.txt"),
                            model_max_length=max_length)
    tok.model_max_length = max_length
    return tok


def make_tiny_sd(seed: int = 0, cross_attention_dim: int = 32, prediction_type: str = "v_prediction",
                 block_out_channels=(32, 64), frozen: bool = True, arch: str = "sd21") -> StableDiffusion:
    """Random tiny SD (~1 M parameters) with SD 2.1's layout conventions (linear projections).

    ``arch="sd15"``: SD 1.5's conventions instead — 1x1-conv projections in the transformers,
    a fixed head count (2) on every level and epsilon prediction (``prediction_type`` ignored).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if arch not in ("sd21", "sd15"):
        raise ValueError(f"arch={arch!r} must be 'sd21' or 'sd15'")
    sd15 = arch == "sd15"
    if sd15:
        prediction_type = "epsilon"
    levels = len(block_out_channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=tuple(block_out_channels),
            down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
            cross_attention_dim=cross_attention_dim,
            # heads (diffusers naming): SD 2.1 fixes the head dim (16 here), SD 1.5 the head count
            attention_head_dim=2 if sd15 else tuple(max(1, c // 16) for c in block_out_channels),
            use_linear_projection=not sd15, norm_num_groups=8,
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, sample_size=64, layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 16, 16, 16), norm_num_groups=8, scaling_factor=0.18215,
        )
        tokenizer = make_tiny_tokenizer()
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer.get_vocab()), hidden_size=cross_attention_dim, intermediate_size=2 * cross_attention_dim,
            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", prediction_type=prediction_type,
                              clip_sample=False, steps_offset=1, timestep_spacing="leading")
    return StableDiffusion(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer,
                           scheduler=scheduler, source="tiny", frozen=frozen)
