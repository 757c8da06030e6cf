"""The official-procedure PrimeDepth baseline of the benchmarks (diffdepth.bench.official)."""
import pytest
import torch
import torch.nn.functional as F

from diffdepth.bench.official import OfficialProcedure, exact_self_pool, materialized, official_self_pool
from diffdepth.methods.primedepth import PrimeDepth


@pytest.fixture(scope="module")
def tiny():
    return PrimeDepth.make_tiny(seed=0, use_segmentation_head=False)


def _blur8(x: torch.Tensor) -> torch.Tensor:
    """Hand-derived official pooling at h = w = 8: 8 -> 16 (bilinear) -> pool 1 -> 8 (bilinear) is the
    separable [1/8, 3/4, 1/8] filter with replicated edges, on each axis."""
    p = F.pad(x[None], (1, 1, 1, 1), mode="replicate")[0]
    rows = p[..., :-2, :] / 8 + 3 * p[..., 1:-1, :] / 4 + p[..., 2:, :] / 8
    return rows[..., :, :-2] / 8 + 3 * rows[..., :, 1:-1] / 4 + rows[..., :, 2:] / 8


def test_official_pooling_at_8x8_is_the_hand_derived_blur_then_max_normalised():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(2, 3, 64, 64, generator=g).softmax(-1)  # [B,H,N,N], h = w = 8
    got = official_self_pool(probs, 8, 8)  # [B, H*64, 8, 8]
    keys = probs.reshape(2, 3, 64, 8, 8)
    want = _blur8(keys.reshape(-1, 8, 8)).reshape(2, 3, 64, 64)
    want = want / want.amax(dim=(2, 3), keepdim=True)
    want = want.permute(0, 1, 3, 2).reshape(2, 3 * 64, 8, 8)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_official_pooling_differs_from_the_exact_regional_mean_at_16x16():
    probs = torch.rand(1, 2, 256, 256, generator=torch.Generator().manual_seed(1)).softmax(-1)
    off, ex = official_self_pool(probs, 16, 16), exact_self_pool(probs, 16, 16)
    assert off.shape == ex.shape == (1, 2 * 64, 16, 16)
    # the exact mean of a one-hot key map is 1/4 in its 2x2 region and 0 elsewhere; the official one spreads
    onehot = torch.zeros(1, 1, 256, 256)
    onehot[..., 0, 17] = 1.0  # query 0 attends to key (1, 1): region (0, 0)
    ex1 = exact_self_pool(onehot, 16, 16)[0, :, 0, 0]
    assert ex1[0] == 1.0 and ex1[1:].abs().sum() == 0
    off1 = official_self_pool(onehot, 16, 16)[0, :, 0, 0]
    assert off1.max() == 1.0 and (off1 > 0).sum() > 1
    assert (off - ex).abs().max() > 1e-3


def test_materialized_attention_equals_sdpa(tiny):
    unet = tiny.sd.unet
    z = torch.randn(1, 4, 4, 6, generator=torch.Generator().manual_seed(2))
    ctx = tiny.encode_prompts(None, 1)
    t = torch.ones(1, dtype=torch.long)
    with torch.no_grad():
        ref = unet(z, t, encoder_hidden_states=ctx, return_dict=False)[0]
        with materialized(unet):
            got = unet(z, t, encoder_hidden_states=ctx, return_dict=False)[0]
        again = unet(z, t, encoder_hidden_states=ctx, return_dict=False)[0]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(again, ref)  # processors restored


@pytest.mark.parametrize("size", [(32, 48), (64, 64)])
@pytest.mark.parametrize("pool", ["official", "exact"])
def test_procedure_equals_our_primedepth(tiny, size, pool):
    """With the same pooling the baseline computes our network: same weights, same function.
    The baseline pools materialised maps; ours uses SDPA with a value matrix (W_off for official)."""
    h, w = size
    z = torch.randn(1, 4, h // 8, w // 8, generator=torch.Generator().manual_seed(3))
    ctx = tiny.encode_prompts(None, 1)
    saved = tiny.config["attn_pool"]
    tiny.config["attn_pool"] = pool
    try:
        with torch.inference_mode():
            ours = tiny.depth_from_features(tiny.refine(None, ctx, torch.Generator().manual_seed(4), latent=z))
    finally:
        tiny.config["attn_pool"] = saved
    base = OfficialProcedure(tiny, pooling=pool).predict_latent(z, ctx, torch.Generator().manual_seed(4))
    assert base.shape == ours.shape == (1, 1, h, w)
    torch.testing.assert_close(base, ours, rtol=1e-4, atol=1e-5)
    other = OfficialProcedure(tiny, pooling={"exact": "official", "official": "exact"}[pool])
    other = other.predict_latent(z, ctx, torch.Generator().manual_seed(4))
    assert torch.isfinite(other).all() and (other - ours).abs().max() > 1e-4  # the pooling matters


def test_predict_from_images_runs_the_vae_and_is_seeded(tiny):
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    proc = OfficialProcedure(tiny)
    a, b = proc.predict(x, seed=1), proc.predict(x, seed=1)
    assert a.shape == (1, 1, 32, 32) and torch.equal(a, b)
    with pytest.raises(ValueError, match="pooling"):
        OfficialProcedure(tiny, pooling="nearest")


def test_bench_primedepth_measures_the_official_procedure_in_the_same_run(tmp_path, capsys):
    import json

    from diffdepth.cli import main

    out = tmp_path / "pd.json"
    assert main(["bench", "primedepth", "--tiny", "--sizes", "32", "--threads", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())["results"][0]
    ours, official = res["ours"], res["official"]
    for r in (ours, official):
        assert r["seconds"] > 0 and r["cpu_s"] > 0 and r["threads"] == 1
        assert r["refine_cpu_s"] > 0 and r["head_cpu_s"] >= 0
    row = [l for l in capsys.readouterr().out.splitlines() if l.startswith("| 32²")][0].split("|")
    assert row[4].strip() == f"{official['seconds'] / ours['seconds']:.2f}×"  # speed-up of this run
    assert row[7].strip() == f"{official['cpu_s'] / ours['cpu_s']:.2f}×"
