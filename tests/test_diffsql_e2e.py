"""DiffSQL from the command line: make-tiny -> predict -> train (debug recipe) -> eval --alignment median."""
import json
from pathlib import Path

import numpy as np
import pytest

from diffdepth.cli import main

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
    text = json.dumps(summary)
    assert "abs_rel" in text and "median" in text
