"""DiffSQL: self-query layer and bins, SD stage selection, model variants, task, save/load."""
import math

import numpy as np
import pytest
import torch

from diffdepth.errors import ConfigError, InputError
from diffdepth.methods.diffsql import DiffSQL
from diffdepth.methods.diffsql.networks import SelfQueryHead, sd_stage_paths
from diffdepth.methods.diffsql.task import DiffSQLTask, color_jitter, median_scaled_abs_rel


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return DiffSQL.make_tiny(seed=0).eval()


# ------------------------------------------------------------------ self-query layer and bins
def test_bins_are_positive_sum_to_range_and_centres_follow_eq11():
    torch.manual_seed(0)
    head = SelfQueryHead(dim=8, num_queries=4, num_bins=6, queries="dynamic", min_depth=0.5, max_depth=20.0)
    s = torch.randn(2, 8, 6, 7)
    tokens = torch.randn(2, 5, 8)
    out = head(s, tokens)
    widths = out["bin_widths"]
    assert (widths > 0).all()
    assert torch.allclose(widths.sum(1), torch.full((2,), 19.5), atol=1e-4)
    # Eq. 11 by hand: c_i = d_min + (d_max - d_min)(b_i/2 + sum_{j<i} b_j)
    b = (widths / 19.5)[0].tolist()
    expected = [0.5 + 19.5 * (b[i] / 2 + sum(b[:i])) for i in range(6)]
    assert torch.allclose(out["bin_centres"][0], torch.tensor(expected), atol=1e-4)
    # centres increase and stay inside the range; depth is a convex combination of them
    c = out["bin_centres"]
    assert (c[:, 1:] > c[:, :-1]).all() and (c > 0.5).all() and (c < 20.0).all()
    d = out["depth"]
    assert d.shape == (2, 1, 6, 7)
    assert (d >= c.min(1)[0][:, None, None, None] - 1e-5).all() and (d <= c.max(1)[0][:, None, None, None] + 1e-5).all()


def test_dynamic_queries_follow_the_global_context_fixed_queries_do_not():
    torch.manual_seed(0)
    dyn = SelfQueryHead(dim=8, num_queries=4, num_bins=6, queries="dynamic")
    fix = SelfQueryHead(dim=8, num_queries=4, num_bins=6, queries="fixed")
    tokens = torch.randn(1, 5, 8)
    shifted = tokens + 1.0  # changes the global context g (Eq. 1)
    q1, _ = dyn.make_queries(tokens)
    q2, _ = dyn.make_queries(shifted)
    # Eq. 3: Q = Q_base + f_adjust(g)
    g = tokens.mean(1)
    assert torch.allclose(q1[0], dyn.q_base + dyn.adjust(g)[0], atol=1e-6)
    assert not torch.allclose(q1, q2)
    f1, _ = fix.make_queries(tokens)
    f2, _ = fix.make_queries(shifted)
    assert torch.allclose(f1, f2) and torch.allclose(f1[0], fix.q_base)


def test_query_output_is_attention_weighted_token_average():
    torch.manual_seed(0)
    head = SelfQueryHead(dim=8, num_queries=4, num_bins=6, queries="dynamic")
    v = torch.randn(8)
    same = v.expand(1, 7, 8).clone()  # all tokens equal -> every query selects v (Eq. 6)
    _, q_out = head.make_queries(same)
    assert torch.allclose(q_out[0], v.expand(4, 8), atol=1e-6)
    tokens = torch.randn(1, 7, 8)
    q, q_out = head.make_queries(tokens)
    attn = torch.softmax(q @ tokens.transpose(1, 2), -1)
    assert torch.allclose(q_out, attn @ tokens, atol=1e-6)


def test_no_query_head_gives_depth_in_range():
    head = SelfQueryHead(dim=8, queries="none", min_depth=0.1, max_depth=100.0)
    d = head(torch.randn(2, 8, 5, 5) * 10, None)["depth"]
    assert (d >= 0.1 - 1e-6).all() and (d <= 100.0 + 1e-4).all()


def test_bad_switches_raise():
    with pytest.raises(ValueError):
        SelfQueryHead(dim=8, queries="sometimes")
    with pytest.raises(ConfigError):
        DiffSQL(sd=None, use_sd=True)
    with pytest.raises(ConfigError):
        DiffSQL(sd=None, use_sd=False, sd_tap="down3")


# ------------------------------------------------------------------ SD stages from the UNet config
def test_sd_stages_for_sd21_layout_are_read_from_the_config():
    from diffusers import UNet2DConditionModel

    from diffdepth.bench.diffsql import SD21_UNET

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD21_UNET)
    up0 = sd_stage_paths(unet, "up0")
    assert up0 == [("encoder", "down_blocks.0.resnets.1", "down_blocks.0.attentions.1"),
                   ("mid", "mid_block.resnets.1", "mid_block.attentions.0"),
                   # SD 2.1's up_blocks.0 has no transformer: the mid block's is the closest before it
                   ("decoder", "up_blocks.0.resnets.2", "mid_block.attentions.0")]
    assert sd_stage_paths(unet, "up1")[-1] == ("decoder", "up_blocks.1.resnets.2", "up_blocks.1.attentions.2")
    assert [s[0] for s in sd_stage_paths(unet, "mid0")] == ["encoder", "mid"]


def test_tiny_model_shapes_taps_and_frozen_sd(tiny):
    assert tiny.size_multiple == 32 and tiny.output_kind == "relative_depth"
    assert tiny.sd.text_encoder is None and tiny.context.shape[:2] == (1, 77)
    assert not any(p.requires_grad for p in tiny.sd.parameters())
    assert all(p.requires_grad for p in tiny.pose_net.parameters())
    assert tiny.sd_branch.stop_after == "up_blocks.0"
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        extra, tokens = tiny.sd_features(x)
        out = tiny(x)
    assert extra.shape == (2, 16, 8, 12)  # on the latent grid
    assert tokens.shape[0] == 2 and tokens.shape[2] == 16
    assert out["depth"].shape == (2, 1, 32, 48)
    with pytest.raises(InputError):
        tiny(torch.rand(1, 3, 60, 96))


@pytest.mark.parametrize("args", [dict(use_sd=False), dict(queries="none"), dict(queries="fixed", sd_tap="mid0"),
                                  dict(sd_tap="up1", scales=3)])
def test_variants_run(args):
    m = DiffSQL.make_tiny(seed=1, **args)
    out = m(torch.rand(1, 3, 64, 64))
    assert out["depth"].shape == (1, 1, 32, 32) and torch.isfinite(out["depth"]).all()
    assert len(out["aux_depth"]) == args.get("scales", 1) - 1
    assert (m.sd is None) == (not args.get("use_sd", True))


def test_predict_scale_flip_and_options(tiny):
    x = torch.rand(1, 3, 64, 64)
    a = tiny.predict(x)
    b = tiny.predict(x, scale=2.5)
    assert a.kind == "relative_depth" and a.depth.shape == (1, 1, 64, 64)
    assert torch.allclose(b.depth, 2.5 * a.depth, rtol=1e-5)
    # flip: Monodepth2's ramps, checked column by column in test_diffsql_protocol.py
    # (test_predict_flip_uses_the_ramps_in_disparity, test_post_process_*_by_hand)
    with pytest.raises(InputError):
        tiny.predict(x, steps=3)
    with pytest.raises(InputError):
        tiny.predict(x, scale=-1)


# ------------------------------------------------------------------ save / load
def test_save_load_round_trip(tiny, tmp_path):
    from diffdepth import load_model

    tiny.save_pretrained(tmp_path / "ck")
    names = {p.name for p in (tmp_path / "ck").iterdir()}
    assert {"diffdepth.json", "model.safetensors", "vae", "unet"} <= names and "text_encoder" not in names
    back = DiffSQL.from_pretrained(tmp_path / "ck")
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(back.predict(x).depth, tiny.predict(x).depth, atol=1e-5)
    assert torch.equal(back.context, tiny.context)
    via = load_model(checkpoint=str(tmp_path / "ck"), device="cpu")
    assert isinstance(via, DiffSQL) and via.get_config() == tiny.get_config()
    from diffdepth.errors import CheckpointError

    with pytest.raises(CheckpointError):
        DiffSQL.from_pretrained(tmp_path / "ck", queries="none")  # architecture override -> clear error
    # a checkpoint from before input_size / sd_tap_point keeps its padded input and its tap
    import json

    marker = json.loads((tmp_path / "ck" / "diffdepth.json").read_text())
    assert marker["config"]["input_size"] == [192, 640] and marker["config"]["sd_tap_point"] == "before_upsampler"
    for key in ("input_size", "sd_tap_point"):
        del marker["config"][key]
    (tmp_path / "ck" / "diffdepth.json").write_text(json.dumps(marker))
    old = DiffSQL.from_pretrained(tmp_path / "ck")
    assert old.fixed_input_size is None and old.get_config()["sd_tap_point"] == "before_upsampler"
    # ... even where `auto` would now choose the upsampler's output (16 tokens < 32 queries)
    m = DiffSQL.make_tiny(seed=0, input_size=[64, 64], num_queries=32, sd_tap_point="before_upsampler")
    m.save_pretrained(tmp_path / "ck2")
    marker = json.loads((tmp_path / "ck2" / "diffdepth.json").read_text())
    del marker["config"]["sd_tap_point"]
    (tmp_path / "ck2" / "diffdepth.json").write_text(json.dumps(marker))
    back2 = DiffSQL.from_pretrained(tmp_path / "ck2")
    assert back2.get_config()["sd_tap_point"] == "before_upsampler" and back2.fixed_input_size == (64, 64)


# ------------------------------------------------------------------ training task
def test_pose_convention_negative_frames_use_the_inverse(tiny):
    task = DiffSQLTask(tiny)

    class FixedPose(torch.nn.Module):
        def forward(self, a, b):
            n = a.shape[0]
            return torch.tensor([[0.0, 0.1, 0.0]]).expand(n, 3), torch.tensor([[0.0, 0.0, 0.5]]).expand(n, 3)

    real = tiny.pose_net
    try:
        tiny.pose_net = FixedPose()
        T = task.poses(torch.rand(2, 3, 3, 32, 32), [0, -1, 1])
    finally:
        tiny.pose_net = real
    assert torch.allclose(T[1] @ T[2], torch.eye(4).expand(2, 4, 4), atol=1e-6)
    assert torch.allclose(T[2][:, :3, 3], torch.tensor([0.0, 0.0, 0.5]).expand(2, 3))


def test_task_loss_and_gradients(tiny):
    torch.manual_seed(0)
    tiny.train()
    try:
        task = tiny.make_training_task()
        frames = torch.rand(2, 3, 3, 64, 64)
        K = torch.tensor([[40.0, 0, 32], [0, 40.0, 32], [0, 0, 1]]).expand(2, 3, 3).clone()
        depth = torch.rand(2, 1, 64, 64) * 10 + 1
        out = task({"frames": frames, "intrinsics": K, "frame_ids": [torch.tensor([0, 0]), torch.tensor([-1, -1]),
                                                                      torch.tensor([1, 1])], "depth": depth})
        assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
        assert 0 <= out["logs"]["automask_kept"] <= 1 and math.isfinite(out["logs"]["abs_rel_median"])
        tiny.zero_grad()
        out["loss"].backward()
        assert tiny.pose_net.decoder[-1].weight.grad.abs().sum() > 0
        assert tiny.head.to_planes.weight.grad.abs().sum() > 0
        assert tiny.sd_branch.merge[0].weight.grad.abs().sum() > 0
        assert all(p.grad is None for p in tiny.sd.parameters())
        vis = task.visualize({"frames": frames}, out)
        assert all(v.dtype == np.uint8 and v.shape == (64, 64, 3) for v in vis.values())
    finally:
        tiny.zero_grad()
        tiny.eval()


def test_transform_shares_flip_and_jitter_across_the_triplet():
    from types import SimpleNamespace

    task = DiffSQLTask(SimpleNamespace(fixed_input_size=None), jitter=1.0, flip=1.0)  # 8x8 kept as is
    base = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    frames = np.stack([base, base, base])  # identical frames must stay identical after jitter
    frames[1, :, :, :4] = 0.3  # ... except a region of frame -1
    K = np.array([[10.0, 0, 2.0], [0, 10.0, 4.0], [0, 0, 1]], dtype=np.float32)
    out = task.transform({"frames": frames, "intrinsics": K, "depth": np.arange(64, dtype=np.float32).reshape(1, 8, 8)},
                         np.random.default_rng(3))
    clean, aug = out["frames"].numpy(), out["frames_aug"].numpy()
    np.testing.assert_array_equal(clean, frames[..., ::-1])  # losses see the un-jittered (flipped) frames
    assert not np.allclose(aug, clean)
    np.testing.assert_allclose(aug[0], aug[2])  # the same jitter on every frame
    assert out["intrinsics"][0, 2] == pytest.approx(7 - 2.0)
    assert out["depth"][0, 0, 0] == 7  # depth flipped with the frames
    same = color_jitter(frames, np.random.default_rng(5))
    np.testing.assert_allclose(same[0], same[2])


def test_median_scaled_abs_rel_is_scale_invariant():
    gt = torch.rand(2, 1, 8, 8) * 10 + 1
    valid = torch.ones_like(gt, dtype=torch.bool)
    assert median_scaled_abs_rel(gt * 7.0, gt, valid) < 1e-6
    noisy = gt * (1 + 0.1 * torch.randn_like(gt).clamp(-2, 2))
    expected = median_scaled_abs_rel(noisy, gt, valid)
    assert median_scaled_abs_rel(noisy * 3, gt, valid) == pytest.approx(expected, rel=1e-4)


def test_median_scaled_abs_rel_hand_values_use_numpys_median():
    # valid: gt in (1e-3, 80) and the valid flag -> pred [1,2,3,4] vs gt [1,2,4,8]; numpy's medians
    # 2.5 and 3 give the ratio 1.2 (torch's lower medians would give 1) ->
    # AbsRel = (0.2/1 + 0.4/2 + 0.4/4 + 3.2/8) / 4 = 0.225
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0, 50.0, 7.0, 1000.0]).view(1, 1, 1, 7)
    gt = torch.tensor([1.0, 2.0, 4.0, 8.0, 0.0, 100.0, 5.0]).view(1, 1, 1, 7)
    valid = torch.tensor([True] * 6 + [False]).view(1, 1, 1, 7)
    assert median_scaled_abs_rel(pred, gt, valid) == pytest.approx(0.225, rel=1e-12)


def test_median_scaled_abs_rel_log_equals_eval_on_the_same_sample(tiny):
    """The training log's ``abs_rel_median`` is what ``eval`` (median alignment, range clip) reports."""
    from dataclasses import replace

    from diffdepth.evaluation import evaluate_sample, get_protocol

    torch.manual_seed(1)
    task = tiny.make_training_task()
    frames = torch.rand(2, 3, 3, 64, 64)
    K = torch.tensor([[40.0, 0, 32], [0, 40.0, 32], [0, 0, 1]]).expand(2, 3, 3).clone()
    depth = torch.rand(2, 1, 64, 64) * 10 + 1
    valid = torch.rand(2, 1, 64, 64) > 0.25
    with torch.no_grad():
        out = task({"frames": frames, "intrinsics": K, "depth": depth, "valid": valid})
    hi = float(depth.max()) + 1  # the task clips to the batch's depth range
    protocol = replace(get_protocol("kitti_mono2"), crop=None, max_depth=hi)
    records = [evaluate_sample({"name": str(i), "depth": depth[i, 0].numpy(), "valid": valid[i, 0].numpy()},
                               out["depth"][i, 0], "relative_depth", protocol) for i in range(2)]
    assert all(r.status == "ok" and r.alignment == "median" for r in records)
    expected = np.mean([r.metrics["abs_rel"] for r in records])
    assert 0.01 < expected and out["logs"]["abs_rel_median"] == pytest.approx(expected, rel=1e-12)


def test_full_size_architecture_builds_with_sd21_channels():
    """The benchmark's full-size model (SD 2.1-sized VAE/UNet, ResNet-50), built on the meta device."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from diffdepth.backbone import StableDiffusion
    from diffdepth.bench.diffsql import FULL_CONFIG, SD21_UNET, SD21_VAE

    with torch.device("meta"):
        sd = StableDiffusion(vae=AutoencoderKL(**SD21_VAE), unet=UNet2DConditionModel(**SD21_UNET))
        m = DiffSQL(sd=sd, encoder="resnet50", pose_encoder="resnet18", **FULL_CONFIG)
    assert m.size_multiple == 64  # 640x192 is a valid input
    chans = [(f.local.in_channels, f.glob.in_channels) for f in m.sd_branch.fusions]
    assert chans == [(320, 320), (1280, 1280), (1280, 1280)]
    assert m.context.shape == (1, 77, 1024)
    assert m.encoder.channels == [64, 256, 512, 1024, 2048]
    # the SD features join the stride-16 skip of the decoder: 1024 (ResNet-50 layer3) + 64 (SD) + 256 (from below)
    assert m.decoder.up16.net[0].in_channels == 256 + 1024 + 64


# ------------------------------------------------------------------ "Up Block (0)" tap point; Eq. 7 queries
def test_up0_token_counts_on_sd21_at_640x192_pick_the_upsampler_output():
    from diffusers import UNet2DConditionModel

    from diffdepth.bench.diffsql import SD21_UNET
    from diffdepth.methods.diffsql.networks import resolve_tap_point, tap_token_grid

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD21_UNET)
    latent = (192 // 8, 640 // 8)
    assert tap_token_grid(unet, "mid0", latent) == (3, 10)
    assert tap_token_grid(unet, "up0", latent) == (3, 10)  # 30 tokens at 1/64 ...
    assert tap_token_grid(unet, "up0", latent, after_upsampler=True) == (6, 20)  # ... 120 at 1/32
    assert tap_token_grid(unet, "up1", latent) == (6, 20)
    assert resolve_tap_point(unet, "up0", "auto", 64, (192, 640)) == "after_upsampler"  # 30 < 64 queries
    assert resolve_tap_point(unet, "up0", "auto", 30, (192, 640)) == "before_upsampler"
    assert resolve_tap_point(unet, "up1", "auto", 64, (192, 640)) == "before_upsampler"  # 120 >= 64
    assert resolve_tap_point(unet, "mid0", "auto", 64, (192, 640)) == "before_upsampler"  # nothing to choose
    assert sd_stage_paths(unet, "up0", after_upsampler=True)[-1] == ("decoder", "up_blocks.0.upsamplers.0",
                                                                      "mid_block.attentions.0")
    with pytest.raises(ValueError, match="no up-sampler"):
        resolve_tap_point(unet, "up3", "after_upsampler", 64, (192, 640))


def test_full_size_model_taps_up0_after_its_upsampler_by_default():
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from diffdepth.backbone import StableDiffusion
    from diffdepth.bench.diffsql import FULL_CONFIG, SD21_UNET, SD21_VAE

    with torch.device("meta"):
        sd = StableDiffusion(vae=AutoencoderKL(**SD21_VAE), unet=UNet2DConditionModel(**SD21_UNET))
        m = DiffSQL(sd=sd, encoder="resnet18", pose_encoder="resnet18", **{**FULL_CONFIG, "sd_tap": "up0"})
    assert m.get_config()["sd_tap_point"] == "after_upsampler" and m.fixed_input_size == (192, 640)
    assert m.sd_branch.stages[-1][1] == "up_blocks.0.upsamplers.0" and m.sd_branch.stop_after == "up_blocks.0"
    assert (m.sd_branch.fusions[-1].local.in_channels, m.sd_branch.fusions[-1].glob.in_channels) == (1280, 1280)


def test_tiny_tap_point_auto_follows_the_query_count():
    x = torch.rand(1, 3, 64, 64)  # latent 8x8, up0 of the tiny UNet at 4x4 before its upsampler, 8x8 after
    few = DiffSQL.make_tiny(seed=0, input_size=[64, 64], num_queries=16).eval()
    many = DiffSQL.make_tiny(seed=0, input_size=[64, 64], num_queries=32).eval()
    assert few.get_config()["sd_tap_point"] == "before_upsampler"  # 16 tokens >= 16 queries
    assert many.get_config()["sd_tap_point"] == "after_upsampler"  # 16 < 32: the 64 tokens after
    with torch.no_grad():
        assert few.sd_features(x)[1].shape[1] == 16 and many.sd_features(x)[1].shape[1] == 64
        assert torch.isfinite(many(x)["depth"]).all()
    forced = DiffSQL.make_tiny(seed=0, input_size=[64, 64], num_queries=32, sd_tap_point="before_upsampler")
    assert forced.get_config()["sd_tap_point"] == "before_upsampler"
    with pytest.raises(ConfigError, match="no up-sampler"):
        DiffSQL.make_tiny(seed=0, sd_tap="up1", sd_tap_point="after_upsampler")  # the last up block has none
    with pytest.raises(ConfigError, match="sd_tap_point"):
        DiffSQL.make_tiny(seed=0, sd_tap_point="middle")


def test_cost_volume_queries_eq7_reading_switch():
    """Eq. 7 as printed builds V from Q_dynamic (rank up to K; tokens enter only through g);
    the default builds it from Q_output of Eq. 6, whose rank is at most the token count L."""
    torch.manual_seed(0)
    k, e, n_tokens = 8, 16, 3
    out_head = SelfQueryHead(dim=e, num_queries=k, num_bins=6, queries="fixed", cost_queries="output")
    dyn_head = SelfQueryHead(dim=e, num_queries=k, num_bins=6, queries="fixed", cost_queries="dynamic")
    dyn_head.load_state_dict(out_head.state_dict())
    tokens = torch.randn(1, n_tokens, e)
    q, q_out = out_head.make_queries(tokens)
    assert torch.linalg.matrix_rank(q_out[0]) <= n_tokens < k == torch.linalg.matrix_rank(q[0])
    s = torch.randn(1, e, 5, 6)
    other = torch.randn(1, n_tokens, e)
    # fixed queries + Eq. 7 as printed: V = Q_base · S does not depend on the tokens at all
    assert torch.allclose(dyn_head(s, tokens)["depth"], dyn_head(s, other)["depth"])
    assert not torch.allclose(out_head(s, tokens)["depth"], out_head(s, other)["depth"])
    with pytest.raises(ConfigError, match="cost_queries"):
        DiffSQL.make_tiny(seed=0, cost_queries="input")
