"""``diffdepth.jobs`` called directly (no CLI): input planning, pending outputs, image and video jobs."""
from pathlib import Path

import numpy as np
import pytest

import _toy_methods
from diffdepth import jobs as J
from diffdepth.io.sidecar import OutputIndex
from diffdepth.io.video import VideoWriter
from diffdepth.pipeline import DepthPipeline

SETTINGS = {"method": "test-mean", "checkpoint": "x", "options": {}}


def test_collect_inputs_mirrors_folders_and_globs_and_leaves_out_outputs(tmp_path):
    src = tmp_path / "in"
    for rel in ("a.png", "sub/b.jpg", "sub/b_depth.png", ".hidden/c.png"):
        _toy_methods.solid_image(src / rel)
    (src / "sub" / "b.png").write_bytes((src / "a.png").read_bytes())  # ground truth beside b.png
    out = src / "out"
    _toy_methods.solid_image(out / "old.png")  # a file inside the output folder
    skipped = {}
    jobs, failures = J.collect_inputs([str(src), str(tmp_path / "in" / "s*" / "*.jpg"), str(src / "a.png"),
                                       str(tmp_path / "nope")], out, skipped)
    got = [(j.source.relative_to(src).as_posix(), j.rel.as_posix()) for j in jobs]
    assert got == [("a.png", "a"), ("sub/b.jpg", "sub/b"), ("sub/b.png", "sub/b"),  # the folder
                   ("sub/b.jpg", "sub/b"),  # the glob: relative to its non-magic part
                   ("a.png", "a")]  # a file: its stem
    assert failures == [(str(tmp_path / "nope"), "no such file or folder")]
    assert sum(skipped.values()) == 2  # out/old.png and sub/b_depth.png
    unique = J.unique_jobs(jobs, failures)
    # the same file named twice is one job; two files with one output name: the second fails
    assert [(j.source.name, j.rel.as_posix()) for j in unique] == [("a.png", "a"), ("b.jpg", "sub/b")]
    assert len(failures) == 2 and "collide" in failures[1][1] and failures[1][0].endswith("b.png")


def test_safe_rel_never_leaves_the_output_folder():
    assert J.safe_rel(Path("../../etc/x")) == Path("etc/x")
    assert J.safe_rel(Path("/abs/y")) == Path("abs/y")
    assert J.safe_rel(Path("..")) == Path("output")


def test_pending_names_missing_and_stale_outputs(tmp_path):
    jobs = [J.Job(tmp_path / "a.png", Path("a")), J.Job(tmp_path / "v.mp4", Path("v"))]
    index = OutputIndex(tmp_path, SETTINGS)
    todo, needs = J.pending(jobs, tmp_path, {"npy", "color", "side"}, index)
    assert todo == jobs and needs[Path("a")] == ["color", "npy", "side"] and needs[Path("v")] == ["mp4", "npz", "side"]
    np.save(tmp_path / "a.npy", np.zeros((2, 2), np.float32))
    index.record("a", ["npy"], "affine_invariant_depth")
    todo, needs = J.pending(jobs, tmp_path, {"npy"}, index)
    assert [j.rel for j in todo] == [Path("v")]  # a.npy exists and is recorded
    assert J.pending(jobs, tmp_path, {"npy"}, index, overwrite=True)[1][Path("a")] == ["npy"]
    other = OutputIndex(tmp_path, {**SETTINGS, "options": {"scale": 2}})  # made with other settings
    assert [j.rel for j in J.pending(jobs, tmp_path, {"npy"}, other)[0]] == [Path("a"), Path("v")]


def test_run_jobs_writes_depth_records_and_fails_bad_inputs(tmp_path):
    a = _toy_methods.solid_image(tmp_path / "in" / "a.png", value=51)
    bad = tmp_path / "in" / "bad.png"
    bad.write_bytes(b"not an image")
    jobs = [J.Job(a, Path("a")), J.Job(bad, Path("bad"))]
    out = tmp_path / "out"
    index = OutputIndex(out, SETTINGS)
    todo, needs = J.pending(jobs, out, {"npy"}, index)
    pipe = DepthPipeline(_toy_methods.MeanDepth(offset=1.0), processing_res=0, workers=1)
    failures = []
    stats = J.run_jobs(pipe, todo, needs, out, index, failures)
    index.flush()
    np.testing.assert_allclose(np.load(out / "a.npy"), 1 + 51 / 255, atol=1e-6)
    assert stats["images"] == 1 and [f[0] for f in failures] == [str(bad)]
    assert set(index.new) == {"a"} and not (out / "bad.npy").exists()
    with pytest.raises(J.StopRun, match="gives no seg"):  # MeanDepth has no segmentation head
        J.run_jobs(pipe, todo[:1], {Path("a"): ["npy", "seg"]}, out, index, [])


def test_predict_video_selects_frames_and_writes_npz(tmp_path):
    clip = tmp_path / "clip.mp4"
    with VideoWriter(clip, fps=10) as vw:
        for i in range(7):
            vw.write(np.full((16, 16, 3), 30 * i, np.uint8))
    pipe = DepthPipeline(_toy_methods.MeanDepth(offset=1.0), processing_res=0)
    kind, n = J.predict_video(pipe, clip, tmp_path / "o" / "clip", ("npz",), start=1, stride=2, max_frames=2)
    assert (kind, n) == ("affine_invariant_depth", 2)
    with np.load(tmp_path / "o" / "clip.npz") as z:
        assert z["depth"].shape == (2, 16, 16) and float(z["fps"]) == 5.0  # every 2nd frame: fps / 2
        np.testing.assert_allclose(z["depth"].mean((1, 2)), [1 + 30 / 255, 1 + 90 / 255], atol=0.03)  # frames 1, 3
    assert not (tmp_path / "o" / "clip_depth.mp4").exists()
