"""The ``hf`` method: tiny random transformers depth models saved in the real format, checked against
``transformers.pipeline("depth-estimation")`` on the same files."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import diffdepth
from diffdepth.cli import main
from diffdepth.errors import CheckpointError
from diffdepth.methods.hf import make_tiny_hf
from diffdepth.registry import detect_method
from diffdepth.types import AFFINE_DISPARITY, METRIC_DEPTH


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    dirs = {}
    for family, seed in (("depth_anything", 0), ("dpt", 1)):
        make_tiny_hf(family, seed=seed).save_pretrained(root / family)
        dirs[family] = root / family
    return dirs


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    # two sizes and aspect ratios: the processors resize each to their own multiple (14 / 32)
    for name, (h, w) in {"a": (45, 61), "sub/b": (50, 38)}.items():
        path = root / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return root


def _reference(folder, model_dir):
    """transformers' own depth-estimation pipeline with the same (slow, PIL) processor."""
    from transformers import pipeline

    from diffdepth.methods.hf.model import _load_processor

    pipe = pipeline("depth-estimation", model=str(model_dir), image_processor=_load_processor(model_dir),
                    device="cpu")
    return {str(p.relative_to(folder).with_suffix("")): pipe(str(p))["predicted_depth"].numpy()
            for p in sorted(folder.rglob("*.png"))}


@pytest.mark.parametrize("family", ["depth_anything", "dpt"])
def test_predict_cli_equals_transformers_pipeline(family, hf_dirs, photos, tmp_path):
    out = tmp_path / "out"
    rc = main(["predict", str(photos), "--method", "hf", "--checkpoint", str(hf_dirs[family]),
               "--out", str(out), "--save", "npy,png16,color", "--device", "cpu"])
    assert rc == 0
    ref = _reference(photos, hf_dirs[family])
    assert set(ref) == {"a", "sub/b"}
    for name, expected in ref.items():
        got = np.load(out / f"{name}.npy")
        assert got.shape == expected.shape
        assert np.abs(expected).max() > 0.1  # the random model predicts something non-trivial
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
        assert (out / f"{name}_depth16.png").exists() and (out / f"{name}_color.png").exists()


def test_python_api_and_detection_of_a_plain_transformers_folder(hf_dirs, photos, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    for f in hf_dirs["depth_anything"].iterdir():
        if f.name != "diffdepth.json":  # exactly what transformers writes, nothing of ours
            (plain / f.name).write_bytes(f.read_bytes())
    assert detect_method(plain) == "hf"
    model = diffdepth.load_model(checkpoint=plain, device="cpu")
    assert model.method == "hf" and model.output_kind == AFFINE_DISPARITY
    pred = diffdepth.DepthPipeline(model)(str(photos / "a.png"))
    assert pred.kind == AFFINE_DISPARITY
    expected = _reference(photos, plain)["a"]
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(pred.depth, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_output_kind_from_config_and_overrides(tmp_path, photos):
    metric = tmp_path / "metric"
    make_tiny_hf("depth_anything", depth_estimation_type="metric", max_depth=20).save_pretrained(metric)
    m = diffdepth.load_model("hf", checkpoint=metric, device="cpu")
    assert m.output_kind == METRIC_DEPTH
    assert make_tiny_hf("dpt").output_kind == AFFINE_DISPARITY
    # override when loading (and it survives save/load through diffdepth.json) ...
    forced = diffdepth.load_model("hf", checkpoint=metric, device="cpu", output_kind=AFFINE_DISPARITY)
    assert forced.output_kind == AFFINE_DISPARITY
    forced.save_pretrained(tmp_path / "forced")
    assert json.loads((tmp_path / "forced" / "diffdepth.json").read_text())["config"]["output_kind"] == AFFINE_DISPARITY
    assert diffdepth.load_model(checkpoint=tmp_path / "forced", device="cpu").output_kind == AFFINE_DISPARITY
    # ... and per call (CLI: --opt output_kind=...)
    out = tmp_path / "out"
    assert main(["predict", str(photos / "a.png"), "--method", "hf", "--checkpoint", str(metric), "--out", str(out),
                 "--save", "npy", "--opt", "output_kind=affine_invariant_disparity"]) == 0
    pred = diffdepth.DepthPipeline(m, output_kind=AFFINE_DISPARITY)(str(photos / "a.png"))
    assert pred.kind == AFFINE_DISPARITY
    np.testing.assert_allclose(np.load(out / "a.npy"), pred.depth, rtol=1e-6)


def test_unknown_family_needs_an_explicit_kind():
    from types import SimpleNamespace

    from diffdepth.methods.hf import infer_output_kind

    with pytest.raises(CheckpointError, match="output_kind"):
        infer_output_kind(SimpleNamespace(model_type="new_depth_model"))
    assert infer_output_kind(SimpleNamespace(model_type="zoedepth")) == METRIC_DEPTH


def test_a_folder_that_is_not_a_transformers_model_is_a_one_line_error(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        diffdepth.load_model("hf", checkpoint=tmp_path / "x", device="cpu")


# ------------------------------------------------------------------ on-the-fly ensembles (item 2)
def _avg(ours, other_disparity):
    """PrimeDepth's pixel-wise average: other aligned to ours by closed-form least squares, then the mean."""
    o, e = ours.astype(np.float64).ravel(), other_disparity.astype(np.float64).ravel()
    s = np.sum((e - e.mean()) * (o - o.mean())) / np.sum((e - e.mean()) ** 2)
    t = o.mean() - s * e.mean()
    return 0.5 * ours + 0.5 * (s * other_disparity + t)


def test_ensemble_with_a_method_spec_runs_both_models_and_averages(hf_dirs, photos, tmp_path):
    metric = tmp_path / "metric"
    make_tiny_hf("depth_anything", seed=5, depth_estimation_type="metric", max_depth=20).save_pretrained(metric)
    pipe = lambda d: diffdepth.DepthPipeline(diffdepth.load_model("hf", checkpoint=d, device="cpu"))  # noqa: E731
    img = str(photos / "a.png")
    ours = pipe(hf_dirs["depth_anything"])(img).depth
    dpt = pipe(hf_dirs["dpt"])(img).depth
    far = pipe(metric)(img).depth
    assert (far > 0).all()
    for spec, other in ((f"hf:{hf_dirs['dpt']}", dpt), (f"hf:{metric}", 1.0 / far)):  # metric depth is inverted
        out = tmp_path / spec.replace("/", "_")
        assert main(["predict", img, "--method", "hf", "--checkpoint", str(hf_dirs["depth_anything"]),
                     "--out", str(out), "--save", "npy", "--ensemble-with", spec]) == 0
        got = np.load(out / "a.npy")
        expected = _avg(ours, other)
        assert np.abs(expected - ours).max() > 1e-2  # the second model changes the result
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_eval_scores_the_ensemble_and_bad_specs_are_one_line_errors(hf_dirs, tmp_path, capsys):
    data = tmp_path / "synth"
    assert main(["synth", str(data), "--n", "2", "--size", "40x52", "--quiet"]) == 0
    capsys.readouterr()
    out = tmp_path / "ev"
    assert main(["eval", "--dataset", "folder", "--data-root", str(data), "--method", "hf", "--checkpoint",
                 str(hf_dirs["depth_anything"]), "--ensemble-with", f"hf:{hf_dirs['dpt']}", "--out", str(out),
                 "--no-progress", "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ensemble_with"] == f"hf:{hf_dirs['dpt']}" and summary["kind"] == AFFINE_DISPARITY
    from diffdepth.data.benchmarks import open_benchmark

    ds = open_benchmark("folder", data)
    pipe = lambda d: diffdepth.DepthPipeline(diffdepth.load_model("hf", checkpoint=d, device="cpu"))  # noqa: E731
    a, b = pipe(hf_dirs["depth_anything"]), pipe(hf_dirs["dpt"])
    for i in range(len(ds)):
        sample = ds[i]
        image = np.ascontiguousarray(np.asarray(sample["image"], np.float32).transpose(1, 2, 0))
        expected = _avg(a([image])[0].depth, b([image])[0].depth)
        np.testing.assert_allclose(np.load(out / "predictions" / f"{sample['name']}.npy"), expected,
                                   rtol=1e-4, atol=1e-5)
    rc = main(["predict", str(data), "--method", "hf", "--checkpoint", str(hf_dirs["dpt"]), "--out",
               str(tmp_path / "x"), "--ensemble-with", "nosuchmethod:foo"])
    err = capsys.readouterr().err
    assert rc != 0 and "neither a folder of predictions nor METHOD:CHECKPOINT" in err and "Traceback" not in err


# ------------------------------------------------------------------ leaderboard (item 3)
def _csv_rows(path):
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


def test_leaderboard_two_models_on_synth_matches_single_evals(hf_dirs, tmp_path, capsys):
    data = tmp_path / "synth"
    assert main(["synth", str(data), "--n", "2", "--size", "40x52", "--quiet"]) == 0
    common = ["--dataset", "folder", "--data-root", str(data), "--no-progress", "--device", "cpu"]
    da, dpt = str(hf_dirs["depth_anything"]), str(hf_dirs["dpt"])
    out = tmp_path / "board"
    assert main(["eval", *common, "--method", "hf", "--checkpoint", da, "--checkpoint", dpt, "--method", "hf",
                 "--out", str(out)]) != 0  # two checkpoints for the first --method: ambiguous
    capsys.readouterr()
    assert main(["eval", *common, "--method", "hf", "--checkpoint", da, "--method", "hf", "--checkpoint", dpt,
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = _csv_rows(out / "leaderboard.csv")
    assert [r["model"] for r in rows] == [f"hf:{da}", f"hf:{dpt}"]
    # the same numbers as one `diffdepth eval` per model, under the same protocol
    for ckpt, row in zip((da, dpt), rows):
        single = tmp_path / ("single_" + Path(ckpt).name)
        assert main(["eval", *common, "--method", "hf", "--checkpoint", ckpt, "--out", str(single)]) == 0
        ref = json.loads((single / "summary.json").read_text())
        assert int(row["evaluated"]) == ref["counts"]["evaluated"] == 2
        for metric, value in ref["metrics"].items():
            assert float(row[metric]) == pytest.approx(value, rel=1e-5), metric
        assert row["alignment"] == "lsq-disparity" and row["kind"] == AFFINE_DISPARITY
        assert row["processing_resolution"].startswith("processor")
        assert row["protocol"].startswith("folder, crop none")
        assert float(row["seconds_per_image"]) > 0 and float(row["peak_memory_mib"]) > 0
    assert sum((p / "summary.json").exists() for p in out.iterdir()) == 2  # one report folder per model
    assert "| model |" in printed and "abs_rel ↓" in printed
    md = (out / "leaderboard.md").read_text()
    assert md.count("**") >= 2 * 10  # each metric's best is marked
    # several benchmarks in one table: one model on two datasets (the second a different synth scene set)
    data2 = tmp_path / "synth2"
    assert main(["synth", str(data2), "--n", "2", "--size", "40x52", "--seed", "7", "--quiet"]) == 0
    multi = tmp_path / "multi"
    assert main(["eval", "--dataset", "folder", "--data-root", str(data), "--dataset", "folder", "--data-root",
                 str(data2), "--method", "hf", "--checkpoint", dpt, "--no-progress", "--device", "cpu",
                 "--out", str(multi)]) == 0
    both = _csv_rows(multi / "leaderboard.csv")
    assert [r["dataset"] for r in both] == ["folder", "folder#2"]
    for metric in ("abs_rel", "delta1"):
        assert float(both[0][metric]) == pytest.approx(float(rows[1][metric]), rel=1e-6)
    assert float(both[1]["abs_rel"]) != pytest.approx(float(both[0]["abs_rel"]), rel=1e-6)
    assert len(list(multi.glob("*/folder#2/summary.json"))) == 1  # OUT/<label>/<benchmark>/ per pair


def test_leaderboard_from_yaml_with_an_ensemble(hf_dirs, tmp_path, capsys):
    data = tmp_path / "synth"
    assert main(["synth", str(data), "--n", "2", "--size", "40x52", "--quiet"]) == 0
    da, dpt = str(hf_dirs["depth_anything"]), str(hf_dirs["dpt"])
    models = tmp_path / "models.yaml"
    models.write_text(f"models:\n  - {{method: hf, checkpoint: {da}, label: DA}}\n"
                      f"  - {{method: hf, checkpoint: {da}, label: DA+DPT, ensemble_with: 'hf:{dpt}'}}\n")
    common = ["--dataset", "folder", "--data-root", str(data), "--no-progress", "--device", "cpu"]
    assert main(["eval", *common, "--models", str(models), "--out", str(tmp_path / "b")]) == 0
    rows = {r["model"]: r for r in _csv_rows(tmp_path / "b" / "leaderboard.csv")}
    assert set(rows) == {"DA", "DA+DPT"} and rows["DA+DPT"]["ensemble_with"] == f"hf:{dpt}"
    assert (tmp_path / "b" / "DA+DPT" / "summary.json").exists()
    assert main(["eval", *common, "--method", "hf", "--checkpoint", da, "--ensemble-with", f"hf:{dpt}",
                 "--out", str(tmp_path / "ens")]) == 0
    ref = json.loads((tmp_path / "ens" / "summary.json").read_text())["metrics"]
    for metric, value in ref.items():
        assert float(rows["DA+DPT"][metric]) == pytest.approx(value, rel=1e-5)
    assert float(rows["DA+DPT"]["abs_rel"]) != pytest.approx(float(rows["DA"]["abs_rel"]), rel=1e-6)
    models.write_text("models:\n  - {checkpoint: x}\n")
    capsys.readouterr()
    assert main(["eval", *common, "--models", str(models), "--out", str(tmp_path / "c")]) != 0
    assert "entry 1 needs a `method`" in capsys.readouterr().err


def test_video_frames_equal_per_frame_predictions(hf_dirs, tmp_path):
    from diffdepth.io.video import VideoWriter, iter_video_frames, load_npz_frames

    clip = tmp_path / "clip.mp4"
    rng = np.random.default_rng(0)
    with VideoWriter(clip, fps=5) as w:
        for _ in range(2):
            w.write(rng.random((32, 48, 3)).astype(np.float32))
    assert main(["predict", str(clip), "--method", "hf", "--checkpoint", str(hf_dirs["dpt"]),
                 "--out", str(tmp_path / "o")]) == 0
    depth, kind, _ = load_npz_frames(tmp_path / "o" / "clip.npz")
    assert kind == AFFINE_DISPARITY and depth.shape == (2, 32, 48)
    pipe = diffdepth.DepthPipeline(diffdepth.load_model("hf", checkpoint=hf_dirs["dpt"], device="cpu"))
    for got, frame in zip(depth, iter_video_frames(clip)):
        np.testing.assert_allclose(got, pipe(frame).depth, rtol=1e-5, atol=1e-6)


def test_two_process_leaderboard_equals_one_process(hf_dirs, tmp_path):
    from test_distributed_inference import _torchrun

    data = tmp_path / "synth"
    assert main(["synth", str(data), "--n", "3", "--size", "40x52", "--quiet"]) == 0
    args = ["eval", "--dataset", "folder", "--data-root", str(data), "--no-progress", "--device", "cpu",
            "--method", "hf", "--checkpoint", str(hf_dirs["depth_anything"]),
            "--method", "hf", "--checkpoint", str(hf_dirs["dpt"])]
    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    _torchrun(args + ["--out", str(tmp_path / "two")], tmp_path)
    one, two = _csv_rows(tmp_path / "one" / "leaderboard.csv"), _csv_rows(tmp_path / "two" / "leaderboard.csv")
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        assert a["evaluated"] == b["evaluated"] == "3"
        for metric in ("abs_rel", "rmse", "delta1", "silog"):
            assert float(a[metric]) == pytest.approx(float(b[metric]), rel=1e-5)
    # every sample scored once, in order (1 thread per process under torchrun: last-digit float differences)
    for folder in (tmp_path / "one").iterdir():
        if folder.is_dir():
            a_rows, b_rows = _csv_rows(folder / "per_sample.csv"), _csv_rows(tmp_path / "two" / folder.name / "per_sample.csv")
            assert [r["name"] for r in a_rows] == [r["name"] for r in b_rows] and len(a_rows) == 3
            for a, b in zip(a_rows, b_rows):
                assert float(a["abs_rel"]) == pytest.approx(float(b["abs_rel"]), rel=1e-5)
