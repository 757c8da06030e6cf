"""`diffdepth eval` end to end on a tiny generic-folder dataset, checked against plain numpy."""
import csv
import json
import sys
import types

import numpy as np
import pytest
from PIL import Image

from diffdepth import cli
from diffdepth.types import DepthMap

MIN_D, MAX_D = 1e-3, 65.535  # the folder protocol's range (uint16 millimetres)


@pytest.fixture(autouse=True)
def only_eval_command(monkeypatch):
    # the test exercises `eval` through cli.main without depending on the other sub-commands
    monkeypatch.setattr(cli, "COMMANDS", ("eval",))


def _write_sample(root, name, mm, seed):
    h, w = mm.shape
    path = root / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    Image.fromarray(mm.astype(np.uint16)).save(root / f"{name}_depth.png")


def _gt(mm):
    # the folder format: uint16 millimetres -> metres (float32, as the reader decodes), 0 = invalid
    return (mm.astype(np.float32) / np.float32(1000.0)).astype(np.float64), mm > 0


def _hand_metrics(p, g):
    """Plain numpy formulas of REFERENCE.md on 1-D valid pixels."""
    d = np.log(p) - np.log(g)
    ratio = np.maximum(p / g, g / p)
    return {
        "abs_rel": np.mean(np.abs(p - g) / g), "sq_rel": np.mean((p - g) ** 2 / g),
        "rmse": np.sqrt(np.mean((p - g) ** 2)), "rmse_log": np.sqrt(np.mean(d ** 2)),
        "log10": np.mean(np.abs(np.log10(p) - np.log10(g))),
        "delta1": np.mean(ratio < 1.25), "delta2": np.mean(ratio < 1.25 ** 2), "delta3": np.mean(ratio < 1.25 ** 3),
        "i_rmse": np.sqrt(np.mean((1 / p - 1 / g) ** 2)), "silog": 100 * np.sqrt(np.mean(d ** 2) - np.mean(d) ** 2),
    }


def _lsq(p, g):
    # closed form of min Σ(s p + t - g)²
    s = np.sum((p - p.mean()) * (g - g.mean())) / np.sum((p - p.mean()) ** 2)
    return s, g.mean() - s * p.mean()


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    root, preds = tmp_path / "data", tmp_path / "preds"
    preds.mkdir()
    samples = {}
    # A: ordinary sample with a few invalid pixels; prediction = affine map of gt + noise
    mm_a = rng.integers(500, 9000, size=(8, 10)).astype(np.uint16)
    mm_a[0, :3] = 0
    _write_sample(root, "a", mm_a, 1)
    g, v = _gt(mm_a)
    pred_a = (0.3 * g + 0.7 + rng.normal(0, 0.05, g.shape)).astype(np.float32)
    np.save(preds / "a.npy", pred_a)
    samples["a"] = (g, v, pred_a)
    # B (in a subfolder): prediction constant and of another size -> resized; lsq gives mean(gt)
    mm_b = rng.integers(1000, 5000, size=(8, 10)).astype(np.uint16)
    _write_sample(root, "sub/b", mm_b, 2)
    (preds / "sub").mkdir()
    np.save(preds / "sub/b.npy", np.full((4, 5), 3.0, np.float32))
    samples["sub/b"] = (*_gt(mm_b), None)
    # C: one NaN in the prediction on a valid pixel
    mm_c = rng.integers(800, 7000, size=(8, 10)).astype(np.uint16)
    _write_sample(root, "c", mm_c, 3)
    g, v = _gt(mm_c)
    pred_c = (2.0 * g - 0.4 + rng.normal(0, 0.1, g.shape)).astype(np.float32)
    pred_c[4, 4] = np.nan
    np.save(preds / "c.npy", pred_c)
    samples["c"] = (g, v, pred_c)
    # D: no valid ground truth at all -> skipped and counted
    _write_sample(root, "d", np.zeros((8, 10), np.uint16), 4)
    np.save(preds / "d.npy", np.ones((8, 10), np.float32))
    return root, preds, samples


def _expected_lsq(samples):
    per = {}
    g, v, p = samples["a"]
    s, t = _lsq(p[v].astype(np.float64), g[v])
    per["a"] = _hand_metrics(np.clip(s * p[v].astype(np.float64) + t, MIN_D, MAX_D), g[v])
    g, v, _ = samples["sub/b"]
    per["sub/b"] = _hand_metrics(np.full(v.sum(), g[v].mean()), g[v])
    g, v, p = samples["c"]
    pv = p.astype(np.float64)
    fit = v & np.isfinite(pv)
    s, t = _lsq(pv[fit], g[fit])
    aligned = s * pv + t
    aligned[np.isnan(aligned)] = MIN_D  # NaN is treated as a missing depth -> bottom of the range
    per["c"] = _hand_metrics(np.clip(aligned[v], MIN_D, MAX_D), g[v])
    return per


def test_eval_predictions_matches_hand_computation(dataset, tmp_path, capsys):
    root, preds, samples = dataset
    out = tmp_path / "out"
    rc = cli.main(["eval", "--dataset", "folder", "--data-root", str(root), "--predictions", str(preds),
                   "--out", str(out), "--no-progress"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    per = _expected_lsq(samples)
    for name, value in summary["metrics"].items():
        expected = np.mean([per[k][name] for k in per])
        assert value == pytest.approx(expected, rel=1e-9, abs=1e-12), name
    c = summary["counts"]
    assert (c["samples"], c["evaluated"], c["skipped_empty"]) == (4, 3, 1)
    assert c["nonfinite_samples"] == 1 and c["nonfinite_pixels"] == 1 and c["resized_predictions"] == 1
    assert summary["alignments"] == ["lsq"] and summary["kind"] == "affine_invariant_depth"
    assert summary["dataset"] == "folder"
    rows = {r["name"]: r for r in csv.DictReader((out / "per_sample.csv").open())}
    assert rows["d"]["status"] == "empty_mask" and rows["sub/b"]["resized"] == "True"
    for k in per:
        assert float(rows[k]["abs_rel"]) == pytest.approx(per[k]["abs_rel"], rel=1e-5)
    s_a, t_a = _lsq(samples["a"][2][samples["a"][1]].astype(np.float64), samples["a"][0][samples["a"][1]])
    assert float(rows["a"]["scale"]) == pytest.approx(s_a, rel=1e-5)
    assert float(rows["a"]["shift"]) == pytest.approx(t_a, rel=1e-5)
    md = (out / "summary.md").read_text()
    assert "abs_rel" in md and f"{summary['metrics']['abs_rel']:.4f}" in md
    err = capsys.readouterr().err
    assert "resized" in err and "non-finite" in err


def test_eval_kind_file_median_and_metric(dataset, tmp_path):
    root, preds, samples = dataset
    (preds / "kind.txt").write_text("relative_depth\n")
    out = tmp_path / "out_med"
    assert cli.main(["eval", "--dataset", "folder", "--data-root", str(root), "--predictions", str(preds),
                     "--out", str(out), "--no-progress", "--max-samples", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    g, v, p = samples["a"]
    ratio = np.median(g[v]) / np.median(p[v].astype(np.float64))
    hand = _hand_metrics(np.clip(p[v].astype(np.float64) * ratio, MIN_D, MAX_D), g[v])
    assert summary["alignments"] == ["median"] and summary["counts"]["samples"] == 1
    assert summary["metrics"]["rmse"] == pytest.approx(hand["rmse"], rel=1e-9)
    # --kind overrides kind.txt; metric depth is not aligned, only clipped
    out = tmp_path / "out_metric"
    assert cli.main(["eval", "--dataset", "folder", "--data-root", str(root), "--predictions", str(preds),
                     "--out", str(out), "--no-progress", "--max-samples", "1", "--kind", "metric_depth"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    hand = _hand_metrics(np.clip(p[v].astype(np.float64), MIN_D, MAX_D), g[v])
    assert summary["alignments"] == ["none"]
    assert summary["metrics"]["abs_rel"] == pytest.approx(hand["abs_rel"], rel=1e-9)


def test_eval_missing_prediction_is_counted(dataset, tmp_path):
    root, preds, _ = dataset
    (preds / "c.npy").unlink()
    out = tmp_path / "out"
    assert cli.main(["eval", "--dataset", "folder", "--data-root", str(root), "--predictions", str(preds),
                     "--out", str(out), "--no-progress"]) == 0
    c = json.loads((out / "summary.json").read_text())["counts"]
    assert c["missing_prediction"] == 1 and c["evaluated"] == 2


def test_eval_errors_are_one_line(tmp_path, capsys):
    rc = cli.main(["eval", "--dataset", "nosuch", "--data-root", str(tmp_path), "--predictions", str(tmp_path),
                   "--out", str(tmp_path / "o")])
    assert rc == 2 and "unknown dataset 'nosuch'" in capsys.readouterr().err
    rc = cli.main(["eval", "--dataset", "folder", "--data-root", str(tmp_path / "absent"),
                   "--predictions", str(tmp_path), "--out", str(tmp_path / "o")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    rc = cli.main(["eval", "--dataset", "folder", "--data-root", str(tmp_path), "--predictions", str(tmp_path),
                   "--checkpoint", "x", "--out", str(tmp_path / "o")])
    assert rc == 2 and "--checkpoint applies only with --method" in capsys.readouterr().err


def test_eval_with_method_saves_predictions_that_rescore_identically(dataset, tmp_path, monkeypatch):
    root, _, _ = dataset
    import diffdepth

    calls = {}

    class FakePipeline:
        def __init__(self, model, processing_res=None, batch_size=1, **options):
            calls["processing_res"] = processing_res

        def __call__(self, images):
            # a deterministic "model": disparity-like output from the image brightness
            return [DepthMap(depth=(0.2 + im.mean(axis=2)).astype(np.float32),
                                    kind="affine_invariant_disparity") for im in images]

    monkeypatch.setattr(diffdepth, "load_model", lambda *a, **k: object())
    monkeypatch.setitem(sys.modules, "diffdepth.pipeline", types.SimpleNamespace(DepthPipeline=FakePipeline))
    out = tmp_path / "run"
    assert cli.main(["eval", "--dataset", "folder", "--data-root", str(root), "--method", "marigold",
                     "--checkpoint", str(tmp_path), "--out", str(out), "--no-progress",
                     "--processing-res", "0"]) == 0
    assert calls["processing_res"] == 0
    first = json.loads((out / "summary.json").read_text())
    record = json.loads((out / "predictions/predictions.json").read_text())
    assert (record["kind"], record["units"], record["method"]) == ("affine_invariant_disparity", "relative disparity",
                                                                 "marigold")
    assert (out / "predictions/sub/b.npy").is_file() and first["alignments"] == ["lsq-disparity"]
    again = tmp_path / "rescore"
    assert cli.main(["eval", "--dataset", "folder", "--data-root", str(root), "--predictions",
                     str(out / "predictions"), "--out", str(again), "--no-progress"]) == 0
    second = json.loads((again / "summary.json").read_text())
    assert second["metrics"] == first["metrics"]  # bit-identical: the saved arrays are what was scored
    assert second["counts"]["evaluated"] == first["counts"]["evaluated"] == 3


# ------------------------------------------------------------------ synth -> eval (issue 3 "done when")
def _decode_png16(path, scale):
    return np.asarray(Image.open(path)).astype(np.float32) / np.float32(scale)


@pytest.mark.parametrize("layout,size,dataset,scale", [
    ("folder", "32x40", "folder", 1000.0),
    ("nyu", "96x128", "nyuv2", 1000.0),
    ("kitti", "40x124", "kitti_eigen", 256.0),
])
def test_synth_then_eval_predictions_matches_hand_computation(tmp_path, monkeypatch, layout, size, dataset, scale):
    monkeypatch.setattr(cli, "COMMANDS", ("eval", "synth"))
    data = tmp_path / "synth"
    kind = "outdoor" if layout == "kitti" else "indoor"
    assert cli.main(["synth", str(data), "--kind", kind, "--n", "2", "--size", size, "--layout", layout,
                     "--seed", "3", "--quiet"]) == 0
    # collect (image rel path, depth rel path) as the layout defines them
    if layout == "folder":
        pairs = [(p.relative_to(data).as_posix(), p.name[:-4] + "_depth.png")
                 for p in sorted(data.glob("*.png")) if not p.name.endswith("_depth.png")]
        split = []
    else:
        split_file = data / ("filename_list_test.txt" if layout == "nyu" else "eigen_test_files_with_gt.txt")
        pairs = [tuple(line.split()[:2]) for line in split_file.read_text().splitlines() if line.strip()]
        split = ["--split-file", str(split_file)]
    assert len(pairs) == 2
    preds = tmp_path / "preds"
    rng = np.random.default_rng(7)
    h, w = (int(v) for v in size.split("x"))
    # hand-derived evaluation crops for these frame sizes
    crop = np.ones((h, w), bool)
    if dataset == "nyuv2":  # Eigen crop 45:471, 41:601 of 480x640 scaled to 96x128 -> 9:94, 8:120
        crop[:] = False
        crop[9:94, 8:120] = True
    elif dataset == "kitti_eigen":  # int(.3324324*40)=13, int(.91351351*40)=36, int(.0359477*124)=4, int(.96405229*124)=119
        crop[:] = False
        crop[13:36, 4:119] = True
    lo, hi = {"folder": (1e-3, 65.535), "nyuv2": (1e-3, 10.0), "kitti_eigen": (1e-5, 80.0)}[dataset]
    expected = []
    for rgb, dep in pairs:
        g = _decode_png16(data / dep, scale).astype(np.float64)
        pred = (g * rng.uniform(0.8, 1.3, g.shape) + 0.05).astype(np.float32)  # metric prediction, noisy
        target = preds / (rgb.rsplit(".", 1)[0] + ".npy")
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, pred)
        valid = (g > lo) & (g < hi) & crop
        expected.append(_hand_metrics(np.clip(pred[valid].astype(np.float64), lo, hi), g[valid]))
    out = tmp_path / "out"
    assert cli.main(["eval", "--dataset", dataset, "--data-root", str(data), "--predictions", str(preds),
                     "--kind", "metric_depth", "--out", str(out), "--no-progress", *split]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["evaluated"] == 2
    for name, value in summary["metrics"].items():
        assert value == pytest.approx(np.mean([e[name] for e in expected]), rel=1e-9), name


def test_evaluate_shards_gather_to_the_same_summary():
    # the runner is sharding-ready: records of two halves summarise like one pass over all
    from diffdepth.evaluation import evaluate, get_protocol, summarize

    rng = np.random.default_rng(11)
    samples = []
    for i in range(4):
        g = rng.uniform(0.5, 9.0, (6, 7)).astype(np.float32)
        samples.append({"name": f"s{i}", "depth": g[None], "valid": np.ones((1, 6, 7), bool)})
    preds = {s["name"]: (s["depth"][0] * rng.uniform(0.5, 2.0)) + rng.normal(0, 0.1, (6, 7)) for s in samples}
    proto = get_protocol("scannet")

    def fn(sample):
        return preds[sample["name"]]

    whole = summarize(evaluate(samples, fn, proto, kind="affine_invariant_depth", progress=False), proto)
    parts = (evaluate(samples[:2], fn, proto, kind="affine_invariant_depth", progress=False)
             + evaluate(samples[2:], fn, proto, kind="affine_invariant_depth", progress=False))
    assert summarize(parts, proto)["metrics"] == whole["metrics"]
    assert whole["counts"]["evaluated"] == 4 and whole["alignments"] == ["lsq"]
