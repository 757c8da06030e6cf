"""Checkpoints written before issue 12 (tests/fixtures/legacy_ckpt, commit 138c222) still load
through the public ``diffdepth.load_model`` and predict exactly what they predicted then."""
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
    again = diffdepth.load_model(checkpoint=tmp_path / "resaved", device="cpu")
    assert type(again) is cls and again.get_config() == model.get_config()
    _assert_same(_predict(again, method), expected)
