"""End to end through the CLI: make-tiny -> predict (metric and ensembled affine outputs) ->
train the debug recipes -> eval on synthetic data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffdepth.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_make_tiny_predict_train_eval(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((40, 56, 3)) * 255).astype(np.uint8)).save("photo.png")

    assert main(["make-tiny", "tiny-mg", "--method", "metricgold"]) == 0
    assert main(["predict", "photo.png", "--method", "metricgold", "--checkpoint", "tiny-mg", "--out", "out-mg",
                 "--save", "npy,png16,color,ply"]) == 0
    depth = np.load("out-mg/photo.npy")
    assert depth.shape == (40, 56)
    cfg = json.loads(Path("tiny-mg/diffdepth.json").read_text())["config"]
    assert depth.min() >= cfg["d_min"] - 1e-4 and depth.max() <= cfg["d_max"] + 1e-3  # metres
    png = np.array(Image.open("out-mg/photo_depth16.png"))
    assert png.dtype == np.uint16
    assert np.abs(png.astype(np.float64) - np.round(depth * 1000)).max() <= 1  # millimetres
    assert Path("out-mg/photo.ply").exists() and Path("out-mg/photo_color.png").exists()

    assert main(["make-tiny", "tiny-m", "--method", "marigold"]) == 0
    assert main(["predict", "photo.png", "--method", "marigold", "--checkpoint", "tiny-m", "--out", "out-m",
                 "--ensemble-size", "3", "--seed", "0", "--save", "npy,uncertainty"]) == 0
    unc = np.load("out-m/photo_uncertainty.npy")
    assert unc.shape == (40, 56) and unc.min() >= 0 and unc.max() > 0

    for method in ("marigold", "metricgold"):
        run = tmp_path / f"run-{method}"
        assert main(["train", str(ROOT / "configs" / method / "debug.yaml"), "--debug", "--output-dir", str(run),
                     "log.progress=false"]) == 0
        ckpt = sorted(run.glob("checkpoint-*"))[-1]
        assert (ckpt / "model_index.json").exists() and (ckpt / "diffdepth.json").exists()
        assert main(["synth", "evalset", "--n", "2", "--size", "64x64", "--seed", "5", "--quiet"]) == 0
        assert main(["eval", "--dataset", "folder", "--data-root", "evalset", "--method", method, "--checkpoint",
                     str(ckpt), "--out", f"eval-{method}", "--no-progress"]) == 0
        summary = json.loads(Path(f"eval-{method}/summary.json").read_text())
        assert "abs_rel" in json.dumps(summary)
