"""PrimeDepth on tiny random models: layout, preimage fusion, inference, training, save/load, ensembling."""
import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffdepth.errors import ConfigError, InputError
from diffdepth.methods.primedepth import PrimeDepth
from diffdepth.methods.primedepth.ensemble import ensemble_with, external_kind_of, find_external, read_external
from diffdepth.methods.primedepth.layout import SD21_UNET_CONFIG, make_plan, norm_groups
from diffdepth.methods.primedepth.modules import head_forward, subpixel_upsample_conv
from diffdepth.types import AFFINE_DISPARITY

# REFERENCE.md, PrimeDepth: official channel table per decoder block 0-11
OFFICIAL_CH_F = [1280, 1280, 1280, 1280, 1280, 960, 960, 640, 480, 480, 320, 320]
OFFICIAL_CH_A = [1410, 0, 0, 1410, 1410, 1410, 1410, 705, 705, 705, 352, 352]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return PrimeDepth.make_tiny(seed=0)


def test_official_channel_table_from_sd21_config():
    plan = make_plan(SD21_UNET_CONFIG, ratio=0.5)
    assert plan.table() == {"ch_f": OFFICIAL_CH_F, "ch_a": OFFICIAL_CH_A}
    # official refiner widths (640/640/320/160 per level) and its first resnet: features + attention
    assert [l.refiner_out for l in plan.layers] == [640] * 6 + [320] * 3 + [160] * 3
    assert plan.layers[0].refiner_in == 1280 + 1410
    assert plan.layers[3].refiner_in == 640 + 1280 + 1410
    # stacked attention inputs: 141 maps per head; layer 4 sees 20 heads (mirror) + 20 (previous)
    assert plan.layers[4].attn_in == 141 * 40 and plan.layers[0].attn_in == 141 * 20
    assert norm_groups(2690) == 10 and norm_groups(160) == 32


def test_plan_matches_a_real_sd21_unet_on_meta():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(SD21_UNET_CONFIG)
    plan = make_plan(unet.config)
    for lp in plan.layers:
        assert unet.get_submodule(lp.resnet).conv1.in_channels == lp.base_in
        for name, heads in ((lp.enc_attention, lp.enc_heads), (lp.prev_attention, lp.prev_heads)):
            if name is not None:
                assert unet.get_submodule(name).transformer_blocks[0].attn1.heads == heads


def test_tiny_plan_agrees_with_backbone_layout(tiny):
    layers = tiny.sd.decoder_layers()
    assert [l["resnet"] for l in layers] == [lp.resnet for lp in tiny.plan.layers]
    assert [l["in_channels"] for l in layers] == [lp.base_in for lp in tiny.plan.layers]
    assert tiny.size_multiple == tiny.sd.size_multiple


def _reference_refine(model, images, context, generator):
    """Collect the whole preimage with the backbone's public taps (self-attention pooled on the
    materialised N x N map), then fuse and refine. Official order of draws: posterior sample, noise."""
    sd, plan = model.sd, model.plan
    with torch.no_grad():
        z = sd.encode_image(images, generator, sample=model.config["latent"] == "sample")
        noise = torch.randn(z.shape, generator=generator)
        names = model._attn_names
        pre = sd.taps(z, t=1, context=context, noise=noise, inputs=[lp.resnet for lp in plan.layers],
                      self_attn=names, cross_attn=names, regions=model.config["regions"], reference=True,
                      pool=model.config["attn_pool"])
        t = torch.ones(images.shape[0], dtype=torch.long)
        temb = model._timestep_embedding(t, torch.float32)
        stream = None
        for i, lp in enumerate(plan.layers):
            feat = pre.inputs[lp.resnet]
            parts = []
            for name in (lp.prev_attention, lp.enc_attention):
                if name is None:
                    continue
                sa = pre.self_attn[name]
                b, c, h, w = sa.shape
                per = sa.reshape(b, c // 64, -1)
                sa = (per / per.amax(-1, keepdim=True)).reshape(b, c, h, w)
                parts += [sa, pre.cross_attn[name]]
            parts = [F.interpolate(p, size=feat.shape[-2:], mode="bilinear", align_corners=False)
                     if p.shape[-2:] != feat.shape[-2:] else p for p in parts]
            maps = torch.cat(parts, 1) if parts else None
            fused = model.fusions[i](feat, maps)
            stream = model.refiner.layers[i](stream, fused, temb, context)
        return model.refiner.out(stream)


def test_on_the_fly_fusion_matches_collect_then_fuse(tiny):
    x = torch.rand(2, 3, 32, 48)
    ctx = tiny.encode_prompts(["a room", ""], 2)
    assert tiny.config["attn_pool"] == "official" and tiny.config["latent"] == "sample"
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        ours = tiny.refine(x, ctx, gen)
    ref = _reference_refine(tiny, x, ctx, torch.Generator().manual_seed(5))
    assert ours.shape == (2, 16, 4, 6)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_predict_shapes_kind_segmentation_and_determinism(tiny):
    x = torch.rand(1, 3, 48, 32)
    a = tiny.predict(x, seed=3, with_segmentation=True)
    assert a.kind == AFFINE_DISPARITY and a.depth.shape == (1, 1, 48, 32)
    seg = a.extras["segmentation"]
    assert seg.shape == (1, 1, 48, 32) and seg.dtype == torch.long and int(seg.max()) < 5
    b = tiny.predict(x, seed=3)
    c = tiny.predict(x, seed=4)
    assert torch.equal(a.depth, b.depth) and "segmentation" not in b.extras
    assert not torch.allclose(a.depth, c.depth)  # the t=1 noise is seeded
    # flip: the mean, in disparity (the output space), of the prediction and the mirrored image's
    # prediction mirrored back, both with the same seed
    flipped = tiny.predict(x, seed=3, flip=True).depth
    mirrored = tiny.predict(x.flip(-1), seed=3).depth.flip(-1)
    torch.testing.assert_close(flipped, 0.5 * (a.depth + mirrored), rtol=1e-5, atol=1e-6)
    assert (mirrored - a.depth).abs().max() > 1e-2 * a.depth.abs().max()  # the two halves differ: not vacuous
    with pytest.raises(InputError, match="multiple of 16"):
        tiny.predict(torch.rand(1, 3, 40, 32))
    with pytest.raises(InputError, match="steps"):
        tiny.predict(x, steps=4)


def test_prompt_and_captioner_change_the_context(tiny):
    x = torch.rand(1, 3, 32, 32)
    empty = tiny.predict(x, seed=0).depth
    prompted = tiny.predict(x, seed=0, prompt="a red chair").depth
    assert not torch.allclose(empty, prompted)
    calls = []
    tiny.captioner = lambda imgs: calls.append(imgs.shape) or ["a red chair"] * imgs.shape[0]
    try:
        captioned = tiny.predict(x, seed=0).depth
    finally:
        tiny.captioner = None
    assert calls == [(1, 3, 32, 32)] and torch.equal(captioned, prompted)


def test_odd_input_sizes_through_the_pipeline(tiny):
    from diffdepth.pipeline import DepthPipeline

    pipe = DepthPipeline(tiny, processing_res=0)
    img = np.random.default_rng(0).random((37, 53, 3)).astype(np.float32)
    pred = pipe(img)
    assert pred.depth.shape == (37, 53) and np.isfinite(pred.depth).all()


def test_subpixel_upsample_equals_nearest_then_conv():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(5, 7, 3, padding=1)
    x = torch.randn(2, 5, 6, 9)
    ref = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    with torch.no_grad():
        torch.testing.assert_close(subpixel_upsample_conv(x, conv), ref, rtol=1e-5, atol=1e-5)


def test_fast_head_equals_diffusers_forward(tiny):
    h = torch.randn(1, 16, 4, 5)
    with torch.no_grad():
        slow = tiny.depth_head(h)
    with torch.inference_mode():
        fast = head_forward(tiny.depth_head, h)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)


def test_row_strip_head_equals_diffusers_forward(tiny, monkeypatch):
    from diffdepth.methods.primedepth import modules

    monkeypatch.setattr(modules, "STRIP_NUMEL", 0)  # every map through the strip path
    monkeypatch.setattr(modules, "_strip_rows", lambda c, w, budget=0: 3)  # strips of 3 rows: many seams
    for head in (tiny.depth_head, tiny.seg_head):  # seg head: resnets with and without a shortcut
        h = torch.randn(2, 16, 5, 4)
        with torch.no_grad():
            slow = head(h)
        with torch.inference_mode():
            fast = modules.head_forward(head, h)
        torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)


def _batch(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    depth = 1.0 + 4.0 * torch.rand(n, 1, size, size, generator=g)
    seg = torch.randint(0, 5, (n, 1, size, size), generator=g)
    seg[:, :, :4] = 255
    return {"image": torch.rand(n, 3, size, size, generator=g), "depth": depth,
            "valid": torch.ones(n, 1, size, size, dtype=torch.bool), "segmentation": seg,
            "caption": ["a room", "a street", "a hall"][:n]}


def _checksum(module):
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def test_gradients_reach_only_refiner_and_heads_and_sd_never_changes():
    torch.manual_seed(0)
    model = PrimeDepth.make_tiny(seed=1).train()
    task = model.make_training_task(target="depth")
    before = _checksum(model.sd)
    assert all(not p.requires_grad for p in model.sd.parameters())
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    for step in range(2):
        out = task(_batch(seed=step))
        assert torch.isfinite(out["loss"]) and {"ssi", "dice", "focal", "lambda"} <= set(out["logs"])
        opt.zero_grad()
        out["loss"].backward()
        if step == 0:
            assert all(p.grad is None for p in model.sd.parameters())
            for prefix in ("fusions.", "refiner.", "depth_head.", "seg_head."):
                grads = [p.grad for n, p in model.named_parameters() if n.startswith(prefix)]
                assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), prefix
        opt.step()
    assert _checksum(model.sd) == before


@pytest.mark.parametrize("opts", [
    {"use_attention": False}, {"use_features": False}, {"injection": "block"}, {"loss_space": "latent"},
    {"attn_norm": "mean", "use_segmentation_head": False}, {"use_self_attention": False},
])
def test_ablation_switches_train_and_predict(opts):
    torch.manual_seed(0)
    model = PrimeDepth.make_tiny(seed=2, **opts).train()
    out = model.make_training_task()(_batch(n=1))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    if "use_attention" in opts:
        assert all(f.attention is None for f in model.fusions)
    if "use_features" in opts:
        assert all(f.features is None for f in model.fusions)
    pred = model.eval().predict(torch.rand(1, 3, 32, 32))
    assert pred.depth.shape == (1, 1, 32, 32) and torch.isfinite(pred.depth).all()


# ------------------------------------------------------------------ what each ablation switch changes
def _record(model, x, seed=0):
    """One forward pass; returns (output, {layer: fusion arguments}, {layer: fusion output},
    {layer: refiner-layer arguments}) recorded with module hooks."""
    import inspect

    fusion_in, fused, refiner_in, handles = {}, {}, {}, []

    def keep(store, i, module):
        sig = inspect.signature(module.forward)
        return lambda m, args, kwargs: store.__setitem__(i, dict(sig.bind(*args, **kwargs).arguments))

    for i, f in enumerate(model.fusions):
        handles.append(f.register_forward_pre_hook(keep(fusion_in, i, f), with_kwargs=True))
        handles.append(f.register_forward_hook(lambda m, a, o, i=i: fused.__setitem__(i, o)))
    for i, layer in enumerate(model.refiner.layers):
        handles.append(layer.register_forward_pre_hook(keep(refiner_in, i, layer), with_kwargs=True))
    try:
        with torch.no_grad():
            out = model(x, generator=torch.Generator().manual_seed(seed))
    finally:
        for h in handles:
            h.remove()
    return out, fusion_in, fused, refiner_in


def _split_maps(lp, maps, use_self, use_cross, regions, tokens):
    """Stacked maps -> [(kind, [B,heads,k,h,w])] in the official order [prev self, prev cross, enc self,
    enc cross], for the parts the switches keep."""
    parts, c = [], 0
    b, _, h, w = maps.shape
    for name, heads in ((lp.prev_attention, lp.prev_heads), (lp.enc_attention, lp.enc_heads)):
        if name is None:
            continue
        for kind, k, on in (("self", regions ** 2, use_self), ("cross", tokens, use_cross)):
            if on:
                parts.append((kind, maps[:, c:c + heads * k].reshape(b, heads, k, h, w)))
                c += heads * k
    assert c == maps.shape[1] == lp.attn_in
    return parts


@pytest.mark.parametrize("opts", [{}, {"attn_norm": "mean", "attn_pool": "exact"}, {"use_self_attention": False},
                                  {"use_cross_attention": False}])
def test_attention_switches_decide_the_maps_entering_each_fusion(opts):
    """Cross-attention maps are softmax rows over the tokens (each head's T maps sum to 1 at every pixel);
    self-attention maps with ``attn_norm: max`` peak at exactly 1 per (sample, head); with ``attn_norm: mean``
    (exact regional means x number of keys) each head's R² maps average to 1 at every pixel (R² equal regions
    of a softmax row summing to 1). Switching a kind off removes its channels."""
    model = PrimeDepth.make_tiny(seed=2, regions=2, **opts)
    _, fusion_in, _, _ = _record(model, torch.rand(2, 3, 32, 32))  # key grids 4x4 and 2x2: equal 2x2 regions
    kinds = set()
    for i, lp in enumerate(model.plan.layers):
        maps = fusion_in[i]["attn_maps"]
        assert fusion_in[i]["features"].shape[1] == lp.base_in
        if not lp.attn_in:
            assert maps is None
            continue
        for kind, m in _split_maps(lp, maps, opts.get("use_self_attention", True),
                                   opts.get("use_cross_attention", True), regions=2, tokens=77):
            kinds.add(kind)
            if kind == "cross":
                torch.testing.assert_close(m.sum(2), torch.ones_like(m[:, :, 0]), rtol=0, atol=1e-5)
            elif opts.get("attn_norm") == "mean":
                torch.testing.assert_close(m.mean(2), torch.ones_like(m[:, :, 0]), rtol=0, atol=1e-4)
                assert m.amax() > 1.2  # not max-normalised
            else:
                torch.testing.assert_close(m.flatten(2).amax(-1), torch.ones(m.shape[:2]), rtol=0, atol=0)
    expected = {"self", "cross"} - ({"self"} if opts.get("use_self_attention") is False else set()) \
        - ({"cross"} if opts.get("use_cross_attention") is False else set())
    assert kinds == expected


@pytest.mark.parametrize("opts", [{"use_attention": False}, {"use_features": False}])
def test_feature_and_attention_switches_cut_that_input_from_every_fusion(opts):
    model = PrimeDepth.make_tiny(seed=2, **opts)
    _, fusion_in, _, refiner_in = _record(model, torch.rand(1, 3, 32, 32))
    assert len(fusion_in) == len(model.plan.layers)
    for i, lp in enumerate(model.plan.layers):
        features, maps = fusion_in[i]["features"], fusion_in[i]["attn_maps"]
        if "use_attention" in opts:
            assert maps is None and model.fusions[i].attention is None
            assert features is not None and features.shape[1] == lp.base_in
            assert refiner_in[i]["injected"].shape[1] == lp.ch_f  # the fused features alone
        else:
            assert features is None and model.fusions[i].features is None
            assert (maps is None) == (lp.attn_in == 0)


def test_injection_block_injects_the_concatenated_preimage_once():
    """per_stage (paper): refiner layer i gets fusion i's output. block (V.BlockPreIm): every fusion output
    average-pooled to layer 0's size, concatenated, projected by one 1x1 conv and injected into layer 0 only."""
    x = torch.rand(1, 3, 32, 32)
    stage = PrimeDepth.make_tiny(seed=2)
    _, _, fused, refiner_in = _record(stage, x)
    for i in range(len(stage.plan.layers)):
        assert torch.equal(refiner_in[i]["injected"], fused[i])
    block = PrimeDepth.make_tiny(seed=2, injection="block")
    _, _, fused, refiner_in = _record(block, x)
    h0, w0 = fused[0].shape[-2:]
    parts = []
    for f in fused.values():
        k = f.shape[-1] // w0
        parts.append(f.reshape(*f.shape[:2], h0, k, w0, k).mean((3, 5)))  # average over k x k cells
    assert {f.shape[-1] // w0 for f in fused.values()} == {1, 2}  # both levels are in the block
    expected = block.block_conv(torch.cat(parts, 1))
    torch.testing.assert_close(refiner_in[0]["injected"], expected, rtol=1e-5, atol=1e-6)
    assert all(refiner_in[i]["injected"] is None for i in range(1, len(block.plan.layers)))
    assert refiner_in[0]["stream"] is None and all(refiner_in[i]["stream"] is not None for i in range(1, 6))


def test_loss_space_latent_is_the_mse_to_the_vae_latent_of_the_normalised_disparity():
    """V.Latent: loss = MSE(latent head, VAE mode of the per-image min-max normalised disparity, x0.18215)
    over latent cells whose 8x8 pixels are all valid; prediction = VAE decode of the latent head, channel mean."""
    model = PrimeDepth.make_tiny(seed=2, loss_space="latent", use_segmentation_head=False).train()
    assert model.depth_head is None
    batch = _batch(n=2)
    batch["valid"][0, :, :8, :12] = False  # latent rows 0, columns 0-1 of image 0 lose cells (column 1 partly)
    torch.manual_seed(0)
    out = model.make_training_task(target="depth")(batch)
    latent = out["output"]["latent"].detach()
    disp = 1.0 / batch["depth"]
    valid = batch["valid"]
    sd = model.sd
    with torch.no_grad():
        target = []
        for i in range(2):
            v = disp[i][valid[i]]
            norm = ((disp[i] - v.min()) / (v.max() - v.min())).clamp(0, 1) * valid[i]
            z = sd.vae.encode(norm.expand(3, -1, -1)[None] * 2 - 1).latent_dist.mode()
            target.append(z[0] * sd.vae.config.scaling_factor)
        target = torch.stack(target)
    cells = valid.float().reshape(2, 1, 4, 8, 4, 8).amin((3, 5)) > 0  # [B,1,4,4]
    assert int((~cells).sum()) == 2
    cells = cells.expand_as(latent)
    expected = ((latent - target) ** 2)[cells].mean()
    torch.testing.assert_close(out["loss"].detach(), expected, rtol=1e-5, atol=1e-7)
    model.eval()
    x = batch["image"][:1]
    with torch.no_grad():
        z = model(x, generator=torch.Generator().manual_seed(3))["latent"]
        by_hand = sd.vae.decode(z / sd.vae.config.scaling_factor).sample.mean(1, keepdim=True)
    torch.testing.assert_close(model.predict(x, seed=3).depth, by_hand, rtol=1e-5, atol=1e-6)


def test_latent_loss_skips_latent_cells_with_an_invalid_pixel():
    model = PrimeDepth.make_tiny(seed=2, loss_space="latent")
    task, f = model.make_training_task(), model.sd.latent_factor
    disp = torch.rand(1, 1, 4 * f, 4 * f, generator=torch.Generator().manual_seed(0)) + 0.5
    valid = torch.ones_like(disp, dtype=torch.bool)
    latent = torch.zeros(1, 4, 4, 4)
    bad = latent.clone()
    bad[:, :, 1, 0] = 1e3  # a large error in latent cell (1, 0) ...
    assert task._latent_loss(bad, disp, valid) > task._latent_loss(latent, disp, valid) + 1e4
    valid[0, 0, f + 1, 2] = False  # ... does not count once one of its pixels is invalid
    torch.testing.assert_close(task._latent_loss(bad, disp, valid), task._latent_loss(latent, disp, valid))
    with pytest.raises(InputError, match="no latent cell"):
        task._latent_loss(latent, disp, torch.zeros_like(valid))


def test_bad_switches_are_rejected():
    with pytest.raises(ConfigError, match="loss_space"):
        PrimeDepth.make_tiny(loss_space="latnet")
    with pytest.raises(ConfigError, match="without input"):
        PrimeDepth.make_tiny(use_attention=False, use_features=False)


def test_official_switches_are_the_defaults_and_are_validated():
    model = PrimeDepth.make_tiny()
    cfg = model.get_config()
    assert (cfg["attn_pool"], cfg["head_norm_eps"], cfg["vae_norm_eps"], cfg["latent"]) == ("official", 1e-5, 1e-5,
                                                                                             "sample")
    norms = [m for m in list(model.depth_head.modules()) + list(model.seg_head.modules()) + list(model.sd.vae.modules())
             if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) > 20 and all(m.eps == 1e-5 for m in norms)
    assert model.sd.unet.conv_norm_out.eps == 1e-5  # the UNet is left as built (diffusers matches LDM there)
    with pytest.raises(ConfigError, match="attn_pool"):
        PrimeDepth.make_tiny(attn_pool="offical")
    with pytest.raises(ConfigError, match="latent"):
        PrimeDepth.make_tiny(latent="mean")


def test_attn_pool_switch_changes_the_maps_entering_the_refiner():
    x = torch.rand(1, 3, 64, 64)
    official = PrimeDepth.make_tiny(seed=2)
    exact = PrimeDepth.make_tiny(seed=2, attn_pool="exact")
    ctx = official.encode_prompts("", 1)
    with torch.no_grad():
        a = official.refine(x, ctx, torch.Generator().manual_seed(0))
        b = exact.refine(x, ctx, torch.Generator().manual_seed(0))
    assert (a - b).abs().max() > 1e-3 * a.abs().max()


def test_latent_sample_is_seeded_and_differs_from_the_mode():
    x = torch.rand(1, 3, 32, 32)
    sample = PrimeDepth.make_tiny(seed=1, noise=False)
    mode = PrimeDepth.make_tiny(seed=1, noise=False, latent="mode")
    a, b = sample.predict(x, seed=3).depth, sample.predict(x, seed=3).depth
    assert torch.equal(a, b)
    assert not torch.allclose(a, sample.predict(x, seed=4).depth)
    m1, m2 = mode.predict(x, seed=3).depth, mode.predict(x, seed=4).depth
    assert torch.equal(m1, m2) and not torch.allclose(a, m1)


def test_checkpoint_saved_before_the_official_switches_keeps_its_behaviour(tmp_path):
    """No ``attn_pool`` in diffdepth.json: the model was built with exact pooling, 1e-6 eps and the
    posterior mode, and loads that way (PrimeDepth.legacy_config)."""
    import json

    legacy = PrimeDepth.make_tiny(seed=5, attn_pool="exact", head_norm_eps=1e-6, vae_norm_eps=None, latent="mode")
    legacy.save_pretrained(tmp_path / "old")
    marker = json.loads((tmp_path / "old" / "diffdepth.json").read_text())
    for key in ("attn_pool", "head_norm_eps", "vae_norm_eps", "latent"):
        del marker["config"][key]
    (tmp_path / "old" / "diffdepth.json").write_text(json.dumps(marker))
    loaded = PrimeDepth.from_pretrained(tmp_path / "old")
    assert loaded.get_config() == legacy.get_config()
    assert loaded.sd.vae.encoder.conv_norm_out.eps == 1e-6 and loaded.depth_head.conv_norm_out.eps == 1e-6
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(legacy.predict(x, seed=1).depth, loaded.predict(x, seed=1).depth)


def test_max_normalisation_gives_unit_peak_per_head(tiny):
    maps = torch.rand(2, 3 * 64, 5, 7) * 0.01
    out = tiny._normalise_self(maps)
    peaks = out.reshape(2, 3, -1).amax(-1)
    torch.testing.assert_close(peaks, torch.ones(2, 3))


def test_save_load_round_trip(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "pd")
    assert (tmp_path / "pd" / "diffdepth.json").exists() and (tmp_path / "pd" / "unet").is_dir()
    loaded = PrimeDepth.from_pretrained(tmp_path / "pd")
    assert loaded.get_config() == tiny.get_config()
    x = torch.rand(1, 3, 32, 48)
    a = tiny.predict(x, seed=2, with_segmentation=True)
    b = loaded.predict(x, seed=2, with_segmentation=True)
    assert torch.equal(a.depth, b.depth) and torch.equal(a.extras["segmentation"], b.extras["segmentation"])


def test_ensembler_inverts_a_depth_first_model_and_zeroes_its_invalid_pixels(tmp_path):
    from diffdepth.ensemble import Ensembler
    from diffdepth.types import DepthMap

    # ours: metric depth [1, 2, 4, 0 (none)] -> disparity [1, 1/2, 1/4, NaN]; the saved disparity
    # 2·d + 1 (7 where ours has no value) aligns back exactly (s = 1/2, t = -1/2): the average is ours
    ext = np.array([[3.0, 2.0], [1.5, 7.0]], dtype=np.float32)
    np.save(tmp_path / "x.npy", ext)
    (tmp_path / "kind.txt").write_text("affine_invariant_disparity\n")
    out = Ensembler(str(tmp_path))(DepthMap(np.array([[1.0, 2.0], [4.0, 0.0]], np.float32), "metric_depth"), "x")
    assert out.kind == "affine_invariant_disparity"
    np.testing.assert_allclose(out.depth, [[1.0, 0.5], [0.25, 0.0]], rtol=1e-6, atol=1e-7)


def test_ensemble_with_aligns_then_averages(tmp_path):
    ours = np.array([[1.0, 2.0], [3.0, 5.0]])
    # an affine copy of our disparity aligns back exactly: the average is ours
    np.testing.assert_allclose(ensemble_with(ours, 4 * ours - 1, "affine_invariant_disparity"), ours, rtol=1e-6)
    # a depth map is inverted first: 1/ours is a perfect disparity
    np.testing.assert_allclose(ensemble_with(ours, 1.0 / ours, "depth"), ours, rtol=1e-6)
    # hand case: external e = [0,1,0,1] fits ours by s=1.5 (not exact); check the mean formula
    ext = np.array([[0.0, 1.0], [0.0, 1.0]])
    s, t = np.polyfit(ext.ravel(), ours.ravel(), 1)
    expect = 0.5 * (ours + s * ext + t)
    np.testing.assert_allclose(ensemble_with(ours, ext), expect, rtol=1e-6)
    # invalid external pixels keep our value; other sizes are resized
    ext2 = 2 * ours + 1
    ext2[0, 0] = np.nan
    assert ensemble_with(ours, ext2)[0, 0] == pytest.approx(1.0)
    big = np.kron(ours, np.ones((2, 2)))
    assert ensemble_with(ours, big).shape == (2, 2)
    np.save(tmp_path / "img.npy", ours.astype(np.float32))
    (tmp_path / "kind.txt").write_text("affine_invariant_depth\n")
    assert find_external(tmp_path, "img").name == "img.npy"
    assert external_kind_of(tmp_path) == "affine_invariant_depth"
    np.testing.assert_array_equal(read_external(tmp_path / "img.npy"), ours.astype(np.float32))
    with pytest.raises(InputError, match="no external prediction"):
        find_external(tmp_path, "other")
