"""Inference presets of marigold/metricgold (``preset=`` / ``--preset``): each sets exactly the
DDIM spacing, step count and ensemble size it names, with the timesteps diffusers' own
DDIMScheduler gives for that spacing, and explicit options override it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffdepth.cli import main
from diffdepth.errors import InputError
from diffdepth.methods.marigold import MarigoldDepth, MetricGoldDepth

torch.set_num_threads(1)

#: what each preset must be: (steps, spacing, ensemble size)
EXPECTED = {
    ("metricgold", "paper"): (50, "leading", 10),   # MetricGold paper: DDIM 50 steps, 10 seeds
    ("metricgold", "fast"): (1, "trailing", 1),     # Garcia et al. 2024
    ("marigold", "paper"): (50, "leading", 10),     # Marigold CVPR 2024 / v1-0 eval scripts
    ("marigold", "paper-v1-1"): (1, "trailing", 10),  # Marigold v1-1 README, "for academic comparisons"
    ("marigold", "fast"): (1, "trailing", 1),
}


@pytest.fixture(scope="module")
def models():
    return {"marigold": MarigoldDepth.make_tiny(seed=3).eval(), "metricgold": MetricGoldDepth.make_tiny(seed=3).eval()}


def diffusers_timesteps(model, spacing: str, steps: int) -> list[int]:
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config({**model.sd.scheduler.config, "timestep_spacing": spacing})
    sched.set_timesteps(steps)
    return [int(t) for t in sched.timesteps]


def test_presets_are_exactly_the_listed_ones():
    assert {(m, p) for m, p in EXPECTED} == {("marigold", p) for p in MarigoldDepth.presets} | \
        {("metricgold", p) for p in MetricGoldDepth.presets}


@pytest.mark.parametrize("method,preset", sorted(EXPECTED))
def test_preset_sets_spacing_steps_and_members(models, method, preset):
    model = models[method]
    steps, spacing, members = EXPECTED[(method, preset)]
    assert model.config["default_denoising_steps"] == 1 and model.config["default_ensemble_size"] == 1
    if members > 1 and method == "marigold" and steps > 1:
        resolved = model._resolve({"preset": preset})  # the 50 x 10 run itself is covered for metricgold
        assert (resolved["steps"], resolved["timestep_spacing"], resolved["ensemble_size"]) == (steps, spacing, 10)
        assert model.ddim(steps, spacing).timesteps.tolist() == diffusers_timesteps(model, spacing, steps)
        return
    x = torch.rand(1, 3, 16, 32, generator=torch.Generator().manual_seed(0))
    pred = model.predict(x, preset=preset, seed=4)
    assert pred.extras["preset"] == preset
    assert pred.extras["steps"] == steps and pred.extras["timestep_spacing"] == spacing
    assert pred.extras["ensemble_size"] == members
    assert (pred.uncertainty is not None) == (members > 1)
    assert pred.extras["timesteps"] == diffusers_timesteps(model, spacing, steps)
    # the preset is only defaults: the same run spelled out gives the same depth
    spelled = model.predict(x, steps=steps, timestep_spacing=spacing, ensemble_size=members, seed=4)
    assert torch.equal(spelled.depth, pred.depth)


def test_paper_leading_and_fast_trailing_timesteps_by_hand(models):
    model = models["metricgold"]
    paper = model._resolve({"preset": "paper"})
    ts = model.ddim(paper["steps"], paper["timestep_spacing"]).timesteps.tolist()
    # SD 2's scheduler (steps_offset 1), leading: 49*20+1 ... 1 every 20; trailing one step: 999
    assert ts == list(range(981, 0, -20)) and len(ts) == 50
    fast = model._resolve({"preset": "fast"})
    assert model.ddim(fast["steps"], fast["timestep_spacing"]).timesteps.tolist() == [999]


def test_explicit_options_override_the_preset(models):
    model = models["metricgold"]
    o = model._resolve({"preset": "paper", "steps": 2, "ensemble_size": None})
    assert (o["steps"], o["timestep_spacing"], o["ensemble_size"]) == (2, "leading", 10)
    o = model._resolve({"preset": "fast", "timestep_spacing": "leading"})
    assert (o["steps"], o["timestep_spacing"], o["ensemble_size"]) == (1, "leading", 1)
    o = model._resolve({})  # no preset: the checkpoint's defaults
    assert (o["steps"], o["ensemble_size"], o["preset"]) == (1, 1, None)


def test_unknown_preset_is_a_clear_error(models):
    with pytest.raises(InputError, match=r"unknown --preset 'papr' for metricgold; use one of paper, fast"):
        models["metricgold"].predict(torch.rand(1, 3, 16, 16), preset="papr")


def test_info_lists_the_presets(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    section = out[out.index("  metricgold"):out.index("  primedepth")]
    assert "--preset paper" in section and "steps=50, timestep_spacing=leading, ensemble_size=10" in section
    assert "--preset fast" in section and "steps=1, timestep_spacing=trailing, ensemble_size=1" in section
    assert "--preset paper-v1-1" in out[out.index("  marigold"):out.index("  metricgold")]


@pytest.mark.slow
def test_preset_in_predict_and_eval_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.fromarray((np.random.default_rng(0).random((24, 40, 3)) * 255).astype(np.uint8)).save("photo.png")
    assert main(["make-tiny", "mg", "--method", "metricgold"]) == 0
    # one member: no uncertainty to give, refused before any output is written
    assert main(["predict", "photo.png", "--checkpoint", "mg", "--out", "fast", "--save", "npy,uncertainty",
                 "--processing-res", "32", "--preset", "fast"]) == 2
    assert not Path("fast/photo.npy").exists()
    assert main(["predict", "photo.png", "--checkpoint", "mg", "--out", "fast", "--save", "npy",
                 "--processing-res", "32", "--preset", "fast"]) == 0
    assert Path("fast/photo.npy").exists()
    assert main(["predict", "photo.png", "--checkpoint", "mg", "--out", "paper", "--save", "npy,uncertainty",
                 "--processing-res", "32", "--preset", "paper", "--steps", "3", "--seed", "0"]) == 0
    assert np.load("paper/photo_uncertainty.npy").max() > 0  # 10 members
    assert main(["synth", "evalset", "--n", "1", "--size", "32x32", "--seed", "5", "--quiet"]) == 0
    assert main(["eval", "--dataset", "folder", "--data-root", "evalset", "--method", "metricgold", "--checkpoint",
                 "mg", "--out", "ev", "--no-progress", "--preset", "fast"]) == 0
    summary = json.loads(Path("ev/summary.json").read_text())
    assert summary["options"]["preset"] == "fast"


def test_preset_is_refused_by_methods_without_presets():
    from _toy_methods import MeanDepth

    from diffdepth import DepthPipeline

    with pytest.raises(InputError, match=r"--preset do not apply to method 'test-mean'"):
        DepthPipeline(MeanDepth(), preset="paper")
