import math

import pytest
import torch

from diffdepth.backbone import (StableDiffusion, make_tiny_sd, official_region_weights, region_weights,
                                regional_attention, regional_attention_naive, token_attention)
from diffdepth.errors import CheckpointError


@pytest.mark.parametrize("h,w,r", [(8, 8, 8), (16, 12, 8), (5, 7, 4), (3, 2, 8)])
def test_regional_attention_equals_naive(h, w, r):
    g = torch.Generator().manual_seed(h * w)
    q = torch.randn(2, 3, h * w, 16, generator=g)
    k = torch.randn(2, 3, h * w, 16, generator=g) * 2
    fast = regional_attention(q, k, h, w, r)
    slow = regional_attention_naive(q, k, h, w, r)
    assert fast.shape == (2, 3, h * w, r * r)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)


def test_region_weights_are_exact_means():
    # 4x4 keys, 2x2 regions: each region holds 4 keys, weight 1/4; regions row-major
    w = region_weights(4, 4, 2)
    assert w.shape == (16, 4)
    assert torch.allclose(w.sum(0), torch.ones(4))
    assert w[0, 0] == 0.25 and w[3, 1] == 0.25 and w[12, 2] == 0.25 and w[15, 3] == 0.25
    # 2x2 keys, 4x4 regions: only 4 regions hold a key, the others are empty (zero column)
    w = region_weights(2, 2, 4)
    assert int((w.sum(0) > 0).sum()) == 4 and torch.all(w.sum(0)[w.sum(0) > 0] == 1)


OFFICIAL_SIZES = [(1, 1), (3, 3), (4, 4), (7, 7), (8, 8), (13, 13), (16, 16), (32, 32), (64, 64),
                  (8, 13), (13, 8), (5, 12), (1, 9), (24, 40), (16, 7)]


@pytest.mark.parametrize("h,w", OFFICIAL_SIZES)
def test_official_pool_equals_the_official_operations_on_the_full_map(h, w):
    """W_off (separable, one SDPA call) == the official resize -> AvgPool2d -> resize on the N x N map."""
    g = torch.Generator().manual_seed(h * 100 + w)
    n = h * w
    heads = 2 if n <= 1024 else 1
    q = torch.randn(1, heads, n, 8, generator=g, dtype=torch.float64)
    k = torch.randn(1, heads, n, 8, generator=g, dtype=torch.float64) * 2
    fast = regional_attention(q, k, h, w, 8, pool="official")
    slow = regional_attention_naive(q, k, h, w, 8, pool="official")
    assert fast.shape == (1, heads, n, 64)
    torch.testing.assert_close(fast, slow, atol=1e-12, rtol=1e-9)
    if n > 64:  # the official pooling is not the exact regional mean (at these sizes)
        assert (fast - regional_attention(q, k, h, w, 8)).abs().max() > 1e-4


def test_official_pool_weights_by_hand():
    # h = w = 8: mod = 8 (not 0) -> 16 -> pool 1 -> 8: per axis the blur [1/8, 3/4, 1/8], edges clamped to [7/8, 1/8]
    w = official_region_weights(8, 8, 8, dtype=torch.float64)
    axis = torch.zeros(8, 8, dtype=torch.float64)
    for i in range(8):
        for j, c in ((i - 1, 0.125), (i, 0.75), (i + 1, 0.125)):
            axis[min(max(j, 0), 7), i] += c
    torch.testing.assert_close(w, torch.kron(axis, axis), atol=1e-15, rtol=0)
    assert w[0, 0] == 49 / 64 and w[9, 0] == 1 / 64
    # h = w = 2 (fewer keys than regions): every one of the 64 maps receives weight (exact pooling: 60 empty)
    w = official_region_weights(2, 2, 8, dtype=torch.float64)
    assert bool((w.sum(0) > 0).all()) and torch.allclose(w.sum(0), torch.ones(64, dtype=torch.float64))
    # h = 128: 136 rows pooled by 16 -> 8 windows; the last 8 of the 136 resized rows are dropped
    rows = official_region_weights(128, 1, 8, dtype=torch.float64).reshape(128, 8, 8).sum(-1)  # [key row, region row]
    assert rows[-1].sum() < 0.6 and rows[0, 0] > 0.05


def test_token_attention_is_softmax():
    q, k = torch.randn(1, 2, 10, 8), torch.randn(1, 2, 5, 8)
    ref = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), -1)
    torch.testing.assert_close(token_attention(q, k), ref, atol=1e-6, rtol=0)


def test_taps_do_not_change_the_unet_output(tiny_sd):
    z = torch.randn(1, 4, 8, 8)
    ctx = tiny_sd.empty_prompt()
    ref = tiny_sd.unet(z, torch.tensor([1]), encoder_hidden_states=ctx).sample
    pre = tiny_sd.taps(z, t=1, self_attn=["down_blocks.0.attentions.0", "mid_block.attentions.0"],
                       cross_attn=["up_blocks.1.attentions.0"], inputs=["up_blocks.1.resnets.0"], return_output=True)
    torch.testing.assert_close(pre.output, ref, atol=1e-5, rtol=0)
    # processors are restored afterwards: plain diffusers attention again
    attn = tiny_sd.unet.get_submodule("down_blocks.0.attentions.0").transformer_blocks[0].attn1
    assert type(attn.processor).__name__ != "TapAttnProcessor"


def test_tapped_self_attention_matches_naive_reference(tiny_sd):
    """Recompute q, k from the attention module's own input and compare with the naive map."""
    name = "down_blocks.0.attentions.1"
    attn = tiny_sd.unet.get_submodule(name).transformer_blocks[0].attn1
    seen = {}
    def grab(module, args, kwargs):
        seen["x"] = args[0] if args else kwargs["hidden_states"]

    handle = attn.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        z = torch.randn(2, 4, 8, 12)
        pre = tiny_sd.taps(z, t=1, self_attn=[name], regions=4)
    finally:
        handle.remove()
    x = seen["x"]  # [B, N, C]
    b, n, _ = x.shape
    heads = attn.heads
    q = attn.to_q(x).view(b, n, heads, -1).transpose(1, 2)
    k = attn.to_k(x).view(b, n, heads, -1).transpose(1, 2)
    ref = regional_attention_naive(q, k, 8, 12, 4)  # [B,H,N,16]
    ref = ref.permute(0, 1, 3, 2).reshape(b, heads * 16, 8, 12)
    assert pre.self_attn[name].shape == (2, heads * 16, 8, 12)
    torch.testing.assert_close(pre.self_attn[name], ref, atol=1e-5, rtol=0)


def test_cross_attention_maps_follow_a_replaced_context(tiny_sd):
    z = torch.randn(1, 4, 8, 8)
    tokens = torch.randn(1, 5, tiny_sd.context_dim)  # e.g. image-semantic tokens
    name = "down_blocks.0.attentions.0"
    pre = tiny_sd.taps(z, context=tokens, cross_attn=[name], return_output=True)
    heads = tiny_sd.transformer_info(name)["heads"]
    maps = pre.cross_attn[name]
    assert maps.shape == (1, heads * 5, 8, 8)
    # per head, probabilities over the 5 tokens sum to one at every pixel
    torch.testing.assert_close(maps.view(1, heads, 5, 8, 8).sum(2), torch.ones(1, heads, 8, 8), atol=1e-5, rtol=0)
    empty = tiny_sd.taps(z, return_output=True).output
    assert not torch.allclose(pre.output, empty)


def test_taps_features_inputs_are_skip_concatenated(tiny_sd):
    layers = tiny_sd.decoder_layers()
    assert len(layers) == 3 * len(tiny_sd.unet.up_blocks)
    z = torch.randn(1, 4, 8, 8)
    pre = tiny_sd.taps(z, inputs=[l["resnet"] for l in layers], outputs=["up_blocks.0"])
    for layer in layers:
        x = pre.inputs[layer["resnet"]]
        assert x.shape[1] == layer["in_channels"]
        assert x.shape[-1] * layer["scale"] == 64  # latent 8 px = image 64 px
    assert pre.outputs["up_blocks.0"].shape[-1] == 8  # after the upsampler


def test_stop_after_skips_the_rest(tiny_sd):
    z = torch.randn(1, 4, 8, 8)
    calls = []
    h = tiny_sd.unet.up_blocks[1].register_forward_hook(lambda *a: calls.append(1))
    try:
        pre = tiny_sd.taps(z, outputs=["mid_block"], stop_after="mid_block", return_output=True)
    finally:
        h.remove()
    assert pre.output is None and not calls and "mid_block" in pre.outputs
    with pytest.raises(ValueError, match="no module"):
        tiny_sd.taps(z, inputs=["up_blocks.7"])


def test_noise_is_seeded_and_matches_add_noise(tiny_sd):
    z = torch.randn(1, 4, 8, 8)
    a = tiny_sd.taps(z, t=1, generator=torch.Generator().manual_seed(3), return_output=True).output
    b = tiny_sd.taps(z, t=1, generator=torch.Generator().manual_seed(3), return_output=True).output
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(3))
    c = tiny_sd.taps(z, t=1, noise=noise, return_output=True).output
    torch.testing.assert_close(a, c, atol=0, rtol=0)
    ab = tiny_sd.alphas_cumprod[1]
    torch.testing.assert_close(tiny_sd.add_noise(z, 1, noise), ab.sqrt() * z + (1 - ab).sqrt() * noise)


def test_encode_decode_and_prompt_cache(tiny_sd):
    x = torch.rand(2, 3, 64, 48)
    z1, z2 = tiny_sd.encode_image(x), tiny_sd.encode_image(x)
    assert z1.shape == (2, 4, 8, 6)
    torch.testing.assert_close(z1, z2, atol=0, rtol=0)  # posterior mode
    s1 = tiny_sd.encode_image(x, generator=torch.Generator().manual_seed(1))
    s2 = tiny_sd.encode_image(x, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(s1, s2, atol=0, rtol=0)
    assert not torch.allclose(s1, z1)
    # scaling factor applied: the mode is the VAE's mean times 0.18215
    mean = tiny_sd.vae.encode(x * 2 - 1).latent_dist.mean
    torch.testing.assert_close(z1, mean * 0.18215)
    assert tiny_sd.decode_latent(z1).shape == (2, 3, 64, 48)
    e1 = tiny_sd.empty_prompt()
    assert tiny_sd.empty_prompt() is e1  # computed once
    assert tiny_sd.encode_prompt(None, batch_size=3).shape == (3, 77, tiny_sd.context_dim)
    assert not torch.allclose(tiny_sd.encode_prompt(["a room"]), e1)


def test_frozen_by_default(tiny_sd):
    assert not any(p.requires_grad for p in tiny_sd.parameters())


def test_save_load_round_trip_sd21_and_sd15_layouts(tmp_path, tiny_sd, tiny_sd_dir):
    sd = StableDiffusion.from_pretrained(tiny_sd_dir)
    z = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(sd.taps(z, return_output=True).output, tiny_sd.taps(z, return_output=True).output)
    assert sd.scheduler.config.prediction_type == "v_prediction"
    # SD 1.5 family: 768-wide context in the real model, epsilon prediction
    sd15 = make_tiny_sd(seed=1, cross_attention_dim=48, prediction_type="epsilon")
    sd15.save_pretrained(tmp_path / "sd15")
    back = StableDiffusion.from_pretrained(tmp_path / "sd15", components=("vae", "unet"))
    assert back.context_dim == 48 and back.text_encoder is None
    assert back.scheduler is None
    with pytest.raises(CheckpointError, match="without a text encoder"):
        back.encode_prompt(["x"])


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(CheckpointError) as err:
        StableDiffusion.from_pretrained("stabilityai/stable-diffusion-2-1")
    msg = str(err.value)
    assert "stabilityai/stable-diffusion-2-1" in msg and "local" in msg and "\n" not in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no vae/ folder"):
        StableDiffusion.from_pretrained(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="does not exist"):
        StableDiffusion.from_pretrained(tmp_path / "missing")


def test_unpadded_empty_prompt_option(tiny_sd):
    """diffusers' MarigoldDepthPipeline encodes "" without padding: BOS + EOS, a [1,2,D] context."""
    sd = StableDiffusion(unet=tiny_sd.unet, text_encoder=tiny_sd.text_encoder, tokenizer=tiny_sd.tokenizer,
                         pad_empty_prompt=False)
    tok = tiny_sd.tokenizer
    with torch.no_grad():
        expected = tiny_sd.text_encoder(torch.tensor([[tok.bos_token_id, tok.eos_token_id]]))[0]
    torch.testing.assert_close(sd.empty_prompt(), expected, atol=0, rtol=0)
    assert sd.encode_prompt(None, batch_size=3).shape == (3, 2, sd.context_dim)
    sd.pad_empty_prompt = True  # changing the option drops the cached embedding
    torch.testing.assert_close(sd.empty_prompt(), tiny_sd.empty_prompt(), atol=0, rtol=0)
    assert sd.empty_prompt().shape == (1, 77, sd.context_dim)


def test_loads_folders_with_only_fp16_weight_files(tmp_path, tiny_sd):
    tiny_sd.save_pretrained(tmp_path / "sd", components=("vae", "unet"))
    for name, weights in (("vae", "diffusion_pytorch_model"), ("unet", "diffusion_pytorch_model")):
        f = tmp_path / "sd" / name / f"{weights}.safetensors"
        f.rename(f.with_name(f"{weights}.fp16.safetensors"))  # as some hub repos ship them
    back = StableDiffusion.from_pretrained(tmp_path / "sd", components=("vae", "unet"))
    a, b = tiny_sd.state_dict(), back.state_dict()
    assert set(b) == {k for k in a if k.startswith(("vae.", "unet."))}
    assert all(torch.equal(a[k], b[k]) for k in b)
