"""The overlapped folder pipeline (reader and writer threads around the model) against the sequential loop."""
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffdepth.cli import main
from diffdepth.errors import InputError
from diffdepth.io.export import save_outputs
from diffdepth.methods.marigold import MarigoldDepth
from diffdepth.pipeline import DepthPipeline

from _toy_methods import MeanDepth


def _jpegs(folder, n, size=(40, 24)):
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"{i:02d}.jpg"
        Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def test_overlapped_pipeline_writes_the_same_files_in_input_order(tmp_path):
    files = _jpegs(tmp_path / "in", 5)
    (tmp_path / "in" / "03.jpg").write_bytes(b"broken")  # a bad input in the middle
    model = MarigoldDepth.make_tiny(seed=0).eval()
    runs = {}
    for workers in (0, 2):
        out = tmp_path / f"out{workers}"
        writers, errors = set(), []

        def write(item, pred, out=out, writers=writers):
            writers.add(threading.current_thread().name.split("_")[0])
            save_outputs(out / Path(item.name).stem, pred, item.rgb, {"npy", "png16", "color"})

        pipe = DepthPipeline(model, workers=workers, steps=1, seed=0)
        order = []
        for item, err in pipe.process(files, write, on_error=lambda i, x, e: errors.append(i)):
            assert err is None
            order.append(item.index)
        assert order == [0, 1, 2, 4] and errors == [3]
        runs[workers] = (out, writers)
    # workers=0 writes in the calling thread, workers=2 on the writer pool
    assert runs[0][1] == {threading.current_thread().name.split("_")[0]}
    assert runs[2][1] == {"diffdepth-write"}
    names = sorted(p.name for p in runs[0][0].iterdir())
    assert len(names) == 12 and names == sorted(p.name for p in runs[2][0].iterdir())
    for name in names:
        assert (runs[0][0] / name).read_bytes() == (runs[2][0] / name).read_bytes(), name


def test_write_errors_are_yielded_or_propagate(tmp_path):
    images = [np.full((16, 16, 3), v, np.float32) for v in (0.0, 0.5, 1.0)]

    def write(item, pred):
        if item.index == 1:
            raise InputError("cannot write 1")

    for workers in (0, 2):
        pipe = DepthPipeline(MeanDepth(), processing_res=0, workers=workers)
        got = [(it.index, None if e is None else str(e)) for it, e in pipe.process(images, write, catch=(InputError,))]
        assert got == [(0, None), (1, "cannot write 1"), (2, None)]
        with pytest.raises(InputError, match="cannot write 1"):  # not caught: propagates
            list(pipe.process(images, write))
    with pytest.raises(InputError, match="workers must be >= 0"):
        DepthPipeline(MeanDepth(), workers=-1)


def test_predict_workers_flag_gives_identical_outputs(tmp_path, capsys):
    ckpt = tmp_path / "tiny"
    MarigoldDepth.make_tiny(seed=0).save_pretrained(ckpt)
    _jpegs(tmp_path / "in", 3)
    for workers in (0, 3):
        assert main(["predict", str(tmp_path / "in"), "--checkpoint", str(ckpt), "--out", str(tmp_path / f"o{workers}"),
                     "--workers", str(workers), "--steps", "1", "--seed", "0", "--save", "npy,png16"]) == 0
    a, b = (sorted(p for p in (tmp_path / o).iterdir() if p.name != "predictions.json") for o in ("o0", "o3"))
    assert [p.name for p in a] == [p.name for p in b] and len(a) == 6
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))


def test_bench_pipeline_dry_run(capsys):
    assert main(["bench", "pipeline", "--dry-run", "--opt", "steps=1"]) == 0
    out = capsys.readouterr().out
    assert "| sequential (workers 0) |" in out and "| overlapped (workers 2) |" in out
    assert "outputs identical: yes" in out
