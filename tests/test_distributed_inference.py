"""`predict` and `eval` under a 2-process launcher shard their inputs (gloo on CPU)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from diffdepth.cli import main

TESTS = Path(__file__).parent


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args, tmp_path):
    launcher = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert launcher is not None, f"torchrun (installed with torch) is missing next to {sys.executable}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [launcher, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "diffdepth.cli", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_two_process_eval_equals_one_process(tmp_path):
    data, pred = tmp_path / "data", tmp_path / "pred"
    assert main(["synth", str(data), "--kind", "indoor", "--n", "5", "--size", "40x56", "--seed", "3"]) == 0
    from diffdepth.data.folder import FolderDepthDataset

    ds = FolderDepthDataset(data)
    for i in range(len(ds)):
        s = ds[i]
        f = pred / (s["name"] + ".npy")
        f.parent.mkdir(parents=True, exist_ok=True)
        np.save(f, (s["depth"][0] * (1.2 + 0.1 * i) + 0.3).astype(np.float32))  # a different error per sample
    common = ["eval", "--dataset", "folder", "--data-root", str(data), "--predictions", str(pred),
              "--kind", "metric_depth", "--no-progress"]
    assert main(common + ["--out", str(tmp_path / "one")]) == 0
    _torchrun(common + ["--out", str(tmp_path / "two")], tmp_path)
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert one["counts"]["evaluated"] == 5
    assert one["metrics"] == two["metrics"] and one["counts"] == two["counts"]
    assert (tmp_path / "one" / "per_sample.csv").read_text() == (tmp_path / "two" / "per_sample.csv").read_text()


def test_two_process_predict_writes_every_output_once(tmp_path):
    import _toy_methods

    ckpt = tmp_path / "ckpt"
    _toy_methods.MeanDepth().save_pretrained(ckpt)
    src = tmp_path / "in"
    src.mkdir()
    for i in range(5):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(src / f"{i}.png")
    proc = _torchrun(["predict", str(src), "--method", "_toy_methods:MeanDepth", "--checkpoint", str(ckpt),
                      "--out", str(tmp_path / "out"), "--save", "npy"], tmp_path)
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == [f"{i}.npy" for i in range(5)] + ["predictions.json"]
    # one summary for both processes (3 + 2 images), and one record listing every output
    counts = [int(line.split()[3]) for line in proc.stderr.splitlines() if line.startswith("wrote depth for")]
    assert counts == [5]
    record = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert sorted(record["entries"]) == [str(i) for i in range(5)]
    assert sorted(record["inputs"]) == [str(i) for i in range(5)]  # each input's stamp, from either process
    for i in range(5):
        np.testing.assert_allclose(np.load(tmp_path / "out" / f"{i}.npy"), 1 + 40 * i / 255, atol=1e-5)


def test_two_process_eval_scores_a_sequence_crossing_the_shards_whole(tmp_path):
    # the flicker metric aligns a posed sequence as a whole and pairs consecutive frames: a drive split
    # between two processes must give the one-process numbers, the pair across the split included
    data, pred = tmp_path / "data", tmp_path / "pred"
    assert main(["synth", str(data), "--kind", "sequence", "--n", "6", "--size", "48x160", "--seed", "1"]) == 0
    from diffdepth.data.benchmarks import open_benchmark

    ds = open_benchmark("kitti_mono2_improved", data, data / "test_files.txt")
    for i in range(len(ds)):
        s = ds[i]
        f = pred / (s["name"] + ".npy")
        f.parent.mkdir(parents=True, exist_ok=True)
        depth = np.where(s["depth"][0] > 0, s["depth"][0], 80.0)
        np.save(f, (depth * (1.0 + 0.15 * (-1) ** i)).astype(np.float32))  # a scale that flickers
    common = ["eval", "--dataset", "kitti_mono2_improved", "--data-root", str(data), "--split-file",
              str(data / "test_files.txt"), "--predictions", str(pred), "--kind", "metric_depth", "--no-progress"]
    assert main(common + ["--out", str(tmp_path / "one")]) == 0
    _torchrun(common + ["--out", str(tmp_path / "two")], tmp_path)
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert len(ds) >= 4 and one["temporal"]["pairs"] == len(ds) - 1
    assert two["temporal"] == one["temporal"] and two["metrics"] == one["metrics"]
    assert (tmp_path / "one" / "per_sample.csv").read_text() == (tmp_path / "two" / "per_sample.csv").read_text()
