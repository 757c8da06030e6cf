"""``evaluation.job.run_eval`` called directly (no CLI): saved predictions and a model run."""
import json

import numpy as np
import pytest

from diffdepth.cli import main
from diffdepth.data.benchmarks import open_benchmark
from diffdepth.evaluation.job import run_eval
from diffdepth.evaluation.protocols import get_protocol


@pytest.fixture
def bench(tmp_path):
    data = tmp_path / "data"
    assert main(["synth", str(data), "--kind", "indoor", "--n", "3", "--size", "40x56", "--seed", "3"]) == 0
    protocol = get_protocol("folder")
    return protocol, open_benchmark(protocol.name, data, None), data


def test_saved_predictions_scored_on_the_first_n_samples(bench, tmp_path):
    protocol, ds, data = bench
    pred = tmp_path / "pred"
    for i in range(3):
        s = ds[i]
        f = pred / (s["name"] + ".npy")
        f.parent.mkdir(parents=True, exist_ok=True)
        np.save(f, (s["depth"][0] * (1.0 if i < 2 else 3.0)).astype(np.float32))  # the third one is wrong
    summary, paths = run_eval(protocol, ds, tmp_path / "two", n=2, data_root=data, predictions=pred,
                              kind="metric_depth", progress=False)
    assert summary["counts"]["evaluated"] == 2 and summary["metrics"]["abs_rel"] < 1e-6
    assert json.loads(paths["json"].read_text())["metrics"] == summary["metrics"]
    summary, _ = run_eval(protocol, ds, tmp_path / "three", n=3, data_root=data, predictions=pred,
                          kind="metric_depth", progress=False)
    assert summary["counts"]["evaluated"] == 3
    assert summary["metrics"]["abs_rel"] == pytest.approx(2 / 3, rel=1e-4)  # (0 + 0 + 2) / 3


def test_model_run_saves_its_predictions_and_records_them(bench, tmp_path, toy_ckpt):
    protocol, ds, data = bench
    summary, paths = run_eval(protocol, ds, tmp_path / "out", n=3, data_root=data, method="test-mean",
                              checkpoint=str(toy_ckpt), options={}, processing_res=0, progress=False)
    saved = sorted((tmp_path / "out" / "predictions").rglob("*.npy"))
    assert len(saved) == 3 and summary["counts"]["evaluated"] == 3
    s = ds[0]
    image = np.asarray(s["image"], np.float32)
    np.testing.assert_allclose(np.load(tmp_path / "out" / "predictions" / (s["name"] + ".npy")),
                               1 + image.mean(0), atol=1e-5)  # the toy model: 1 + mean RGB at the GT size
    record = json.loads((tmp_path / "out" / "predictions" / "predictions.json").read_text())
    assert record["kind"] == "affine_invariant_depth" and summary["method"] == "test-mean"
