"""DiffSQL from the command line: make-tiny -> predict -> train (debug recipe) -> eval --alignment median,
each output checked against the library API run directly and the metrics against plain numpy."""
import json
from pathlib import Path

import numpy as np
import pytest

from diffdepth.cli import main
from test_eval_cli import _hand_metrics
from test_marigold_cli import _api

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_diffsql_command_line_end_to_end(tmp_path):
    from PIL import Image

    tiny = tmp_path / "tiny-ds"
    assert main(["make-tiny", str(tiny), "--method", "diffsql"]) == 0
    img = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((40, 70, 3)) * 255).astype(np.uint8)).save(img)
    out = tmp_path / "pred"
    assert main(["predict", str(img), "--method", "diffsql", "--checkpoint", str(tiny), "--out", str(out),
                 "--save", "npy,png16,color,ply", "--scale", "2", "--device", "cpu"]) == 0
    depth = np.load(out / "photo.npy")
    assert depth.shape == (40, 70) and np.isfinite(depth).all() and (depth > 0).all()
    np.testing.assert_allclose(depth, _api("diffsql", tiny, img, scale=2).depth, rtol=1e-5, atol=1e-6)

    run = tmp_path / "run"
    assert main(["train", str(REPO / "configs/diffsql/debug.yaml"), "train.max_steps=2", "checkpoint.every=2",
                 "--output-dir", str(run)]) == 0
    ckpt = sorted(run.glob("checkpoint-*"))[-1]
    data = next((run / "data").glob("synth-sequence-*"))
    ev = tmp_path / "eval"
    assert main(["eval", "--dataset", "kitti", "--data-root", str(data), "--split-file",
                 str(data / "test_files_with_gt.txt"), "--method", "diffsql", "--checkpoint", str(ckpt),
                 "--alignment", "median", "--max-samples", "2", "--no-progress", "--device", "cpu",
                 "--out", str(ev)]) == 0
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["alignments"] == ["median"] and summary["counts"]["evaluated"] == 2
    # by hand: the trained checkpoint run as the API runs it (kitti_eigen: native size), ground truth
    # uint16 / 256 scored where 1e-5 < g < 80 m inside the Eigen crop (32x64 frame: rows 10:29,
    # columns 2:61), median scaling, clipped to the range
    crop = np.zeros((32, 64), bool)
    crop[10:29, 2:61] = True
    per = []
    for line in (data / "test_files_with_gt.txt").read_text().splitlines()[:2]:
        rgb, gt_rel = line.split()[:2]
        pred = np.load(ev / "predictions" / (rgb.rsplit(".", 1)[0] + ".npy")).astype(np.float64)
        np.testing.assert_allclose(pred, _api("diffsql", ckpt, data / rgb, processing_res=0).depth,
                                   rtol=1e-5, atol=1e-6)
        g = (np.asarray(Image.open(data / gt_rel)).astype(np.float32) / np.float32(256.0)).astype(np.float64)
        v = (g > 1e-5) & (g < 80.0) & crop
        p = pred[v] * (np.median(g[v]) / np.median(pred[v]))
        per.append(_hand_metrics(np.clip(p, 1e-5, 80.0), g[v]))
    for name in per[0]:
        assert summary["metrics"][name] == pytest.approx(np.mean([m[name] for m in per]), rel=1e-6), name
