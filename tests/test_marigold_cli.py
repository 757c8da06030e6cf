"""End to end through the CLI: make-tiny -> predict (metric and ensembled affine outputs) ->
train the debug recipes -> eval on synthetic data. Every output is checked against the library
API run directly (the same model and options) and the metrics against plain numpy."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffdepth.cli import main
from test_eval_cli import _hand_metrics, _lsq

ROOT = Path(__file__).resolve().parents[1]


def _api(method, checkpoint, image, **options):
    """The prediction of ``diffdepth.load_model`` + ``DepthPipeline`` for one image file."""
    import diffdepth
    from diffdepth.io import read_image
    from diffdepth.pipeline import DepthPipeline

    model = diffdepth.load_model(method, str(checkpoint), device="cpu")
    return DepthPipeline(model, **options)([read_image(image)])[0]


def _hand_folder_scores(eval_dir, data_root, aligned_by_lsq):
    """Mean per-sample metrics of eval_dir/predictions on the synth folder, by hand: ground truth
    uint16 mm, scored where 1e-3 < g < 65.535 m, least squares in depth (affine) or none (metric),
    clipped to the range."""
    per = []
    for pred_file in sorted((eval_dir / "predictions").glob("*.npy")):
        mm = np.asarray(Image.open(data_root / (pred_file.stem + "_depth.png")))
        g = (mm.astype(np.float32) / np.float32(1000.0)).astype(np.float64)
        v = (g > 1e-3) & (g < 65.535)
        p = np.load(pred_file).astype(np.float64)[v]
        if aligned_by_lsq:
            s, t = _lsq(p, g[v])
            p = s * p + t
        per.append(_hand_metrics(np.clip(p, 1e-3, 65.535), g[v]))
    assert len(per) == 2
    return {k: np.mean([m[k] for m in per]) for k in per[0]}


@pytest.mark.slow
def test_make_tiny_predict_train_eval(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((40, 56, 3)) * 255).astype(np.uint8)).save("photo.png")

    assert main(["make-tiny", "tiny-mg", "--method", "metricgold"]) == 0
    assert main(["predict", "photo.png", "--method", "metricgold", "--checkpoint", "tiny-mg", "--out", "out-mg",
                 "--seed", "0", "--save", "npy,png16,color,ply"]) == 0
    depth = np.load("out-mg/photo.npy")
    api = _api("metricgold", "tiny-mg", "photo.png", seed=0)
    assert api.kind == "metric_depth"
    np.testing.assert_allclose(depth, api.depth, rtol=1e-5, atol=1e-5)  # the CLI writes what the API predicts
    cfg = json.loads(Path("tiny-mg/diffdepth.json").read_text())["config"]
    assert depth.min() >= cfg["d_min"] - 1e-4 and depth.max() <= cfg["d_max"] + 1e-3  # metres
    assert depth.std() > 1e-3  # a map, not a constant
    png = np.array(Image.open("out-mg/photo_depth16.png"))
    assert png.dtype == np.uint16
    assert np.abs(png.astype(np.float64) - np.round(depth * 1000)).max() <= 1  # millimetres
    assert Path("out-mg/photo.ply").exists() and Path("out-mg/photo_color.png").exists()

    assert main(["make-tiny", "tiny-m", "--method", "marigold"]) == 0
    assert main(["predict", "photo.png", "--method", "marigold", "--checkpoint", "tiny-m", "--out", "out-m",
                 "--ensemble-size", "3", "--seed", "0", "--save", "npy,uncertainty"]) == 0
    api = _api("marigold", "tiny-m", "photo.png", ensemble_size=3, seed=0)
    np.testing.assert_allclose(np.load("out-m/photo.npy"), api.depth, rtol=1e-5, atol=1e-5)
    unc = np.load("out-m/photo_uncertainty.npy")
    np.testing.assert_allclose(unc, api.uncertainty, rtol=1e-5, atol=1e-5)
    assert unc.shape == (40, 56) and unc.min() >= 0 and unc.max() > 0

    assert main(["synth", "evalset", "--n", "2", "--size", "64x64", "--seed", "5", "--quiet"]) == 0
    for method in ("marigold", "metricgold"):
        run = tmp_path / f"run-{method}"
        assert main(["train", str(ROOT / "configs" / method / "debug.yaml"), "--debug", "--output-dir", str(run),
                     "log.progress=false"]) == 0
        ckpt = sorted(run.glob("checkpoint-*"))[-1]
        assert (ckpt / "model_index.json").exists() and (ckpt / "diffdepth.json").exists()
        ev = tmp_path / f"eval-{method}"
        assert main(["eval", "--dataset", "folder", "--data-root", "evalset", "--method", method, "--checkpoint",
                     str(ckpt), "--seed", "0", "--out", str(ev), "--no-progress"]) == 0
        # eval ran the trained checkpoint as the API does (folder protocol: the model's own resolution) ...
        for pred_file in sorted((ev / "predictions").glob("*.npy")):
            api = _api(method, ckpt, Path("evalset") / (pred_file.stem + ".png"), seed=0)
            np.testing.assert_allclose(np.load(pred_file), api.depth, rtol=1e-5, atol=1e-5)
        # ... and scored those predictions as the plain formulas do
        summary = json.loads((ev / "summary.json").read_text())
        assert summary["counts"]["evaluated"] == 2
        assert summary["alignments"] == (["lsq"] if method == "marigold" else ["none"])
        hand = _hand_folder_scores(ev, tmp_path / "evalset", aligned_by_lsq=method == "marigold")
        for name, value in hand.items():
            assert summary["metrics"][name] == pytest.approx(value, rel=1e-6), (method, name)
