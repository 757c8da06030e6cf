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


# ------------------------------------------------------------------ run_job: planning from plain arguments
def _save_predictions(ds, folder, factors):
    for i, k in enumerate(factors):
        s = ds[i]
        f = folder / (s["name"] + ".npy")
        f.parent.mkdir(parents=True, exist_ok=True)
        np.save(f, (s["depth"][0] * k).astype(np.float32))


def test_run_job_single_run_report_and_notes(bench, tmp_path):
    from diffdepth.evaluation.job import run_job

    _, ds, data = bench
    pred = tmp_path / "pred"
    _save_predictions(ds, pred, [1.0, 2.0])  # the third sample has no prediction
    res = run_job([("folder", str(data))], tmp_path / "o", predictions=str(pred), kind="metric_depth",
                  max_depth=30.0, progress=False)
    assert res.rc == 0 and res.notes == ["note: 1 sample(s) skipped: missing prediction"]
    assert res.summary["protocol"]["max_depth"] == 30.0 and res.summary["counts"]["evaluated"] == 2
    assert res.summary["metrics"]["abs_rel"] == pytest.approx(0.5, rel=1e-5)  # (0 + 1) / 2
    o = tmp_path / "o"
    assert res.report == (o / "summary.md").read_text() + f"wrote {o / 'summary.json'}, {o / 'summary.md'}, " \
                                                          f"{o / 'per_sample.csv'}\n"
    (tmp_path / "empty").mkdir()
    res = run_job([("folder", str(data))], tmp_path / "none", predictions=str(tmp_path / "empty"),
                  kind="metric_depth", max_samples=1, progress=False)
    assert res.rc == 1 and res.report == "" and res.summary["counts"]["samples"] == 1
    assert res.notes == ["note: 1 sample(s) skipped: missing prediction",
                         f"diffdepth eval: error: no sample could be evaluated — see {tmp_path / 'none' / 'per_sample.csv'}"]


def test_run_job_rejects_impossible_plans(bench, tmp_path):
    from diffdepth.errors import InputError
    from diffdepth.evaluation.job import run_job

    _, _, data = bench
    two = [("folder", str(data)), ("folder", str(data))]
    cases = [(dict(datasets=two, predictions=str(data)), "saved --predictions are scored on one --dataset"),
             (dict(datasets=two, split_file="x"), "--split-file applies to a single --dataset"),
             (dict(datasets=[("folder", str(data)), ("nyuv2", None)]), "--dataset nyuv2 has no --data-root"),
             (dict(datasets=two[:1], min_depth=5.0, max_depth=2.0), "--min-depth 5.0 must be below --max-depth 2.0"),
             (dict(datasets=two[:1], max_samples=0), "--max-samples must be >= 1, got 0"),
             (dict(datasets=two, alignment_seed=3), "--alignment-seed applies to one model")]
    for kwargs, message in cases:
        with pytest.raises(InputError, match=message.replace("+", r"\+")):
            run_job(out=tmp_path / "o", progress=False, **kwargs)


def test_run_job_several_datasets_make_one_table_equal_to_single_runs(bench, tmp_path, toy_ckpt):
    import csv

    from diffdepth.evaluation.job import run_job
    from diffdepth.evaluation.leaderboard import Entry

    protocol, ds, data = bench
    other = tmp_path / "data2"
    assert main(["synth", str(other), "--kind", "indoor", "--n", "2", "--size", "40x56", "--seed", "9"]) == 0
    entry = Entry(method="test-mean", checkpoint=str(toy_ckpt), label="toy")
    res = run_job([("folder", str(data)), ("folder", str(other))], tmp_path / "b", entries=[entry],
                  processing_res=0, max_samples=2, progress=False)
    board = tmp_path / "b"
    assert res.rc == 0 and res.report.endswith(f"wrote {board / 'leaderboard.md'}, {board / 'leaderboard.csv'} "
                                               f"and one report folder per model in {board}\n")
    rows = list(csv.DictReader((board / "leaderboard.csv").open()))
    assert [(r["model"], r["dataset"], r["evaluated"]) for r in rows] == [("toy", "folder", "2"), ("toy", "folder#2", "2")]
    for root, row in zip((data, other), rows):
        single, _ = run_eval(protocol, open_benchmark("folder", root, None), tmp_path / ("s" + root.name), n=2,
                             data_root=root, method="test-mean", checkpoint=str(toy_ckpt), processing_res=0,
                             progress=False)
        assert float(row["abs_rel"]) == pytest.approx(single["metrics"]["abs_rel"], rel=1e-5)
    summary = json.loads((board / "toy" / "folder#2" / "summary.json").read_text())
    keys = list(summary)  # score() fills the timing and kind in place: the leaderboard's key order
    assert keys[keys.index("alignment"):keys.index("predictions")] == [
        "alignment", "kind", "seconds_per_image", "peak_memory_mib", "peak_memory_kind", "processes"]
    assert summary["kind"] == "affine_invariant_depth" and summary["processes"] == 1
    assert summary["seconds_per_image"] > 0 and summary["benchmark"] == "folder#2"


def test_model_predictions_of_another_size_are_saved_at_the_gt_size_and_counted_resized(bench, tmp_path):
    from diffdepth.evaluation.runner import evaluate

    protocol, ds, _ = bench
    samples = [ds[0], ds[1]]
    half = lambda s: (np.asarray(s["depth"][0])[::2, ::2], "metric_depth")  # noqa: E731 - 20x28 for 40x56
    full = lambda s: (np.asarray(s["depth"][0]), "metric_depth")  # noqa: E731
    records = evaluate(samples[:1], half, protocol, save_dir=tmp_path / "p", progress=False)
    records += evaluate(samples[1:], full, protocol, save_dir=tmp_path / "p", progress=False)
    assert [r.resized for r in records] == [True, False]
    assert np.load(tmp_path / "p" / (samples[0]["name"] + ".npy")).shape == np.shape(samples[0]["depth"])[-2:]
