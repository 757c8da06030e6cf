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


# ------------------------------------------------------------------ jobs.predict: the whole plan
def test_predict_runs_keeps_and_recomputes_with_exact_summaries(tmp_path, toy_ckpt):
    src = tmp_path / "in"
    _toy_methods.solid_image(src / "a.png", value=51)
    _toy_methods.solid_image(src / "sub" / "b.png", value=102)
    out, missing = tmp_path / "out", str(tmp_path / "nope.png")
    kw = dict(method="test-mean", checkpoint=str(toy_ckpt), formats={"npy"})
    res = J.predict([str(src), missing], out, **kw)
    assert (res.rc, res.images, res.videos, res.kept) == (1, 2, 0, 0)
    assert res.failures == [(missing, "no such file or folder")]
    assert res.messages[0].startswith(f"wrote depth for 2 image(s) to {out} in ")
    assert res.messages[1:] == ["1 input(s) failed:", f"  {missing}: no such file or folder"]
    np.testing.assert_allclose(np.load(out / "sub" / "b.npy"), 1 + 102 / 255, atol=1e-6)
    res = J.predict([str(src)], out, **kw)  # everything is there, made with the same settings
    assert (res.rc, res.images, res.kept) == (0, 0, 2)
    assert res.messages == [f"2 input(s) already have all outputs in {out} (use --overwrite to redo)"]
    res = J.predict([str(src)], out, options={"scale": 2}, **kw)  # other settings: recomputed
    assert (res.rc, res.images, res.kept) == (0, 2, 0)
    assert res.messages[0] == (f"{out} holds outputs made with other settings (scale None -> 2); recomputed them")
    np.testing.assert_allclose(np.load(out / "a.npy"), 2 * (1 + 51 / 255), atol=1e-6)
    res = J.predict([str(src)], out, overwrite=True, options={"scale": 3}, **kw)
    assert (res.images, res.kept) == (2, 0) and len(res.messages) == 1  # no "kept"/"recomputed" with overwrite
    assert res.messages[0].startswith("wrote depth for 2 image(s)")


def test_predict_refuses_what_the_method_cannot_give_before_loading(tmp_path, toy_ckpt, monkeypatch):
    img = str(_toy_methods.solid_image(tmp_path / "x.png"))
    kw = dict(method="test-mean", checkpoint=str(toy_ckpt))
    with pytest.raises(J.InputError, match=r"^method test-mean does not take --steps, --x-y \(it takes: scale\)$"):
        J.predict([img], tmp_path / "o", options={"steps": 4, "x_y": 1}, **kw)
    with pytest.raises(J.InputError, match="test-mean takes no prompt"):
        J.predict([img], tmp_path / "o", caption="auto", **kw)
    with pytest.raises(J.InputError, match="one anchors file for 2 inputs"):
        J.predict([img, str(_toy_methods.solid_image(tmp_path / "y.png"))], tmp_path / "o", align_to=img, **kw)
    monkeypatch.setattr(_toy_methods.MeanDepth, "predict_options", frozenset({"scale"}))
    with pytest.raises(J.InputError, match="--save seg,seg_ids: method test-mean has no segmentation head"):
        J.predict([img], tmp_path / "o", formats={"npy", "seg", "seg_ids"}, **kw)
    monkeypatch.setattr(_toy_methods.MeanDepth, "predict_options", {"scale": {"type": float}})
    monkeypatch.setattr("diffdepth.registry.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(J.InputError, match=r"^--opt scale of test-mean takes a number, got 'abc'$"):
        J.predict([img], tmp_path / "o", options={"scale": "abc"}, **kw)
    assert not (tmp_path / "o").exists()  # nothing written, no model loaded


def test_run_settings_record_what_changes_the_values():
    got = J.run_settings("m", "org/model", {"with_segmentation": True, "scale": 2}, processing_res=0, dtype="fp16",
                         caption="auto", temporal="align", temporal_window=4, tile=64, vae_tiling_above=512)
    assert got == {"method": "m", "checkpoint": "org/model",
                   "options": {"scale": 2, "processing_res": 0, "dtype": "fp16", "caption": "auto",
                               "temporal": ["align", 4], "tile": [64, 16], "vae_tiling_above": 512}}
    plain = J.run_settings("m", None, {}, temporal="latent", tile_overlap=3)
    assert plain["options"] == {"processing_res": None, "dtype": "fp32"}  # defaults leave no trace
    render = J.render_settings({**J.EXPORT, "cmap": "gray", "ply_stride": 2}, {**J.VIDEO, "stride": 3})
    assert render["color"] == {"cmap": "gray", "vmin": None, "vmax": None, "percentiles": None}
    assert render["npz"] == {"start": 0, "end": None, "stride": 3, "max": None}
    assert render["side"] == {**render["color"], **render["npz"]} and render["ply"]["stride"] == 2


def test_describe_change_names_what_differs():
    old = {"method": "a", "checkpoint": "c", "options": {"steps": 1, "seed": 0}}
    new = {"method": "a", "checkpoint": "d", "options": {"steps": 2, "seed": 0, "flip": True}}
    assert J.describe_change(old, new) == "checkpoint c -> d, flip None -> True, steps 1 -> 2"
    assert J.describe_change(old, old) == "settings changed"
