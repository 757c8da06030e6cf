"""Training tasks of the Marigold family on tiny random models and synthetic scenes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from diffdepth.errors import ConfigError, InputError
from diffdepth.methods.marigold import MarigoldDepth, MetricGoldDepth

torch.set_num_threads(1)


def synth_batch(seed: int, n: int, size=(64, 64)):
    from diffdepth.data.synth import render_sample

    samples = [render_sample("indoor", i, seed, size) for i in range(n)]
    image = torch.from_numpy(np.stack([s["image"] for s in samples])).permute(0, 3, 1, 2).float()
    depth = torch.from_numpy(np.stack([s["depth"] for s in samples]))[:, None].float()
    valid = torch.from_numpy(np.stack([s["valid"] for s in samples]))[:, None]
    return {"image": image, "depth": depth, "valid": valid}


def absrel(pred, gt, valid):
    """Mean over images of mean |p - g| / g over valid pixels."""
    return float(np.mean([((pred[i] - gt[i]).abs() / gt[i])[valid[i]].mean().item() for i in range(len(gt))]))


def test_diffusion_objective_learns_and_only_touches_the_unet():
    model = MarigoldDepth.make_tiny(seed=0).train()
    task = model.make_training_task(objective="diffusion")
    batch = synth_batch(0, 2)
    batch["valid"][0, :, :8, :8] = False  # one latent cell masked out
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for step in range(12):
        torch.manual_seed(123)  # same t and noise every step: the loss must fall on this fixed problem
        out = task(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert out["logs"]["valid_latent_frac"] == pytest.approx(1 - 1 / 128)
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(p.grad is None for p in model.sd.vae.parameters())
    assert all(p.grad is None for p in model.sd.text_encoder.parameters())


def test_task_options_are_validated():
    model = MarigoldDepth.make_tiny(seed=0)
    with pytest.raises(ConfigError):
        model.make_training_task(objective="gan")
    with pytest.raises(ConfigError):
        model.make_training_task(crop=[60, 64])
    with pytest.raises(ConfigError):
        model.make_training_task(unknown_option=1)
    task = model.make_training_task()
    with pytest.raises(InputError):
        task({"image": torch.rand(1, 3, 60, 64), "depth": torch.rand(1, 1, 60, 64)})
    sample = {"image": np.zeros((3, 40, 48), np.float32), "depth": np.ones((1, 40, 48), np.float32),
              "valid": np.ones((1, 40, 48), bool), "intrinsics": np.eye(3)}
    out = model.make_training_task(crop=[32, 32], flip_prob=0.0).transform(sample, np.random.default_rng(0))
    assert out["image"].shape == (3, 32, 32) and out["depth"].shape == (1, 32, 32)
    with pytest.raises(InputError):
        model.make_training_task(crop=[64, 64]).transform(sample, np.random.default_rng(0))


def test_zero_terminal_snr_task_updates_the_saved_schedule(tmp_path):
    model = MarigoldDepth.make_tiny(seed=0)
    model.make_training_task(zero_terminal_snr=True)
    assert model.sd.scheduler.alphas_cumprod[-1].item() == pytest.approx(0.0, abs=1e-10)
    model.save_pretrained(tmp_path / "z")
    loaded = MarigoldDepth.from_pretrained(tmp_path / "z")
    assert loaded.sd.scheduler.config.rescale_betas_zero_snr is True
    assert loaded.sd.scheduler.alphas_cumprod[-1].item() == pytest.approx(0.0, abs=1e-10)


@pytest.mark.slow
def test_metricgold_debug_training_gives_metres_better_than_a_constant(capsys):
    """A tiny MetricGold trained for 30 steps (e2e objective, log normaliser) on 16 synthetic
    rooms predicts held-out rooms in metres, without alignment, better than the best constant
    (the training median). Measured: AbsRel ≈ 0.30 vs 0.41 for the constant."""
    torch.manual_seed(0)
    model = MetricGoldDepth.make_tiny(seed=0, d_min=0.5, d_max=20.0)
    task = model.make_training_task(objective="e2e")
    assert model.config["init_noise"] == "zeros" and model.config["default_denoising_steps"] == 1
    train, test = synth_batch(0, 16), synth_batch(1, 8)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for step in range(30):
        idx = torch.randint(0, 16, (4,), generator=g)
        out = task({k: v[idx] for k, v in train.items()})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    model.eval()
    pred = model.predict(test["image"])
    assert pred.kind == "metric_depth"
    ours = absrel(pred.depth, test["depth"], test["valid"])
    constant = train["depth"][train["valid"]].median()
    baseline = absrel(torch.full_like(test["depth"], float(constant)), test["depth"], test["valid"])
    with capsys.disabled():
        print(f"\nmetricgold debug: AbsRel {ours:.3f} (no alignment) vs constant {float(constant):.2f} m: {baseline:.3f}")
    assert ours < 0.85 * baseline


def test_visualize_returns_uint8_panels():
    model = MetricGoldDepth.make_tiny(seed=0)
    panels = model.make_training_task().visualize(synth_batch(0, 1), None)
    assert set(panels) == {"input", "gt", "pred"}
    assert all(p.shape == (64, 64, 3) and p.dtype == np.uint8 for p in panels.values())
    assert panels["gt"].std() > 0  # a real depth map, not a flat colour
