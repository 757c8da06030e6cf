"""Checkpoints written before issue 12 (tests/fixtures/legacy_ckpt, commit 138c222) still load
through the public ``diffdepth.load_model`` and predict exactly what they predicted then."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import diffdepth
from diffdepth.registry import get_method

FIXTURE = Path(__file__).parent / "fixtures" / "legacy_ckpt"
#: the predict options the stored predictions were made with (see the fixture's README)
OPTIONS = {"primedepth": {"seed": 0}, "marigold": {"seed": 0, "steps": 1}, "metricgold": {"seed": 0, "steps": 1},
           "seecoder-vpd": {}, "diffsql": {}}


def _predict(model, method):
    x = torch.from_numpy(np.load(FIXTURE / "input.npy"))
    return model.predict(x, **OPTIONS[method]).depth.float().numpy()


def _assert_same(got, expected):
    # float32 noise only (the same weights at another memory alignment differ by ~1e-6 of the range)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=3e-5 * np.abs(expected).max())


@pytest.fixture
def legacy(tmp_path, request):
    """A copy of one legacy checkpoint folder (loading must work from anywhere and may not write into it)."""
    method = request.param
    dst = tmp_path / method
    shutil.copytree(FIXTURE / method, dst)
    return method, dst


@pytest.mark.parametrize("legacy", list(OPTIONS), indirect=True)
def test_legacy_checkpoint_predicts_as_it_did(legacy, tmp_path):
    method, path = legacy
    expected = np.load(FIXTURE / f"{method}.npy")
    assert expected.std() > 1e-3 * np.abs(expected).mean()  # a structured map, not a constant
    cls = get_method(method).load_class()
    for model in (diffdepth.load_model(checkpoint=path, device="cpu"),  # method detected
                  diffdepth.load_model(method, path, device="cpu")):
        assert type(model) is cls
        _assert_same(_predict(model, method), expected)
    # saved again by today's code, it loads back to the same predictions
    model.save_pretrained(tmp_path / "resaved")
    if method == "primedepth":  # one weights-file name now (PrimeDepth's old one is still read)
        assert (tmp_path / "resaved" / "model.safetensors").exists()
        assert not (tmp_path / "resaved" / "primedepth.safetensors").exists()
    if method in ("marigold", "metricgold"):  # diffdepth.json's config as the first landing wrote it
        config = json.loads((tmp_path / "resaved" / "diffdepth.json").read_text())["config"]
        assert config == json.loads((FIXTURE / method / "diffdepth.json").read_text())["config"]
    again = diffdepth.load_model(checkpoint=tmp_path / "resaved", device="cpu")
    assert type(again) is cls and again.get_config() == model.get_config()
    _assert_same(_predict(again, method), expected)


def test_marigold_checkpoint_loads_as_metricgold_and_back():
    """Fine-tuning across the normalisers: a checkpoint of one loads as the other with that class's
    normaliser at its defaults and the saved inference defaults; the config holds that normaliser's pair only."""
    from diffdepth.methods.marigold import MarigoldDepth, MetricGoldDepth

    metric = MetricGoldDepth.from_pretrained(FIXTURE / "marigold")
    assert type(metric.normalizer).__name__ == "LogNormalizer"
    assert {k: metric.get_config()[k] for k in ("normalizer", "d_min", "d_max", "default_processing_resolution")} \
        == {"normalizer": "log", "d_min": 0.1, "d_max": 100.0, "default_processing_resolution": 64}
    assert "q_low" not in metric.get_config() and "q_high" not in metric.get_config()
    affine = MarigoldDepth.from_pretrained(FIXTURE / "metricgold", q_low=0.05)
    assert affine.get_config()["normalizer"] == "affine" and affine.normalizer.q_low == 0.05
    assert "d_min" not in affine.get_config() and "d_max" not in affine.get_config()


def test_marigold_training_state_of_the_first_landing_resumes(tmp_path):
    """A Marigold training run saved by 138c222 (fixture ``marigold_train``: parameters then named ``unet.*``,
    today ``sd.unet.*``; ``optim.lr_multipliers: {"unet.": 0.5}``; EMA on) resumes with today's code:
    the weights, the EMA, the optimizer state and the step counter are the saved ones, and it trains on."""
    from safetensors.torch import load_file

    from diffdepth.training.config import load_config
    from diffdepth.training.trainer import Trainer

    run = tmp_path / "run"
    shutil.copytree(FIXTURE / "marigold_train", run)
    state = run / "checkpoint-2" / "training_state"
    saved = load_file(str(state / "trainable.safetensors"))
    saved_ema = torch.load(state / "ema.pt", weights_only=True)["shadow"]
    assert len(saved) > 100 and saved.keys() == saved_ema.keys() and all(k.startswith("unet.") for k in saved)
    cfg = load_config(run / "config.yaml", [f"model.pretrained={FIXTURE / 'marigold'}", "train.max_steps=3",
                                            "log.progress=false"])
    trainer = Trainer(cfg, run, resume=True)
    trainer.setup()
    assert trainer.step == 2
    params = dict(trainer.model.named_parameters())
    for key, value in saved.items():
        assert torch.equal(params["sd." + key].detach(), value), key
        assert torch.equal(trainer.ema.shadow["sd." + key], saved_ema[key]), key
    assert any(not torch.equal(saved[k], saved_ema[k]) for k in saved)  # the EMA is not the weights
    (group,) = trainer.optimizer.param_groups  # the recipe's "unet." multiplier applies to today's names
    assert group["prefix"] == "sd.unet." and group["lr_multiplier"] == 0.5 and len(group["params"]) == len(saved)
    adam = torch.load(state / "optimizer.bin", weights_only=True)["state"]  # by position in the group
    for i, p in enumerate(group["params"]):
        assert float(trainer.optimizer.state[p]["step"]) == 2
        assert torch.equal(trainer.optimizer.state[p]["exp_avg"], adam[i]["exp_avg"])
    out = trainer.train()
    assert out["step"] == 3 and len(out["history"]) == 1 and np.isfinite(out["loss"])
    after = load_file(str(run / "checkpoint-3" / "training_state" / "trainable.safetensors"))
    assert after.keys() == {"sd." + k for k in saved}
    assert all(not torch.equal(after["sd." + k], saved[k]) for k in saved if k.endswith("conv_in.weight"))
