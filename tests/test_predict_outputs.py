"""What a prediction folder records and how reruns, `eval --predictions` and option checks use it
(issue 17: sidecar, output folders never inputs, reruns never stale, options checked first)."""
import json
import os
import stat

import numpy as np
import pytest
from PIL import Image

from diffdepth import registry
from diffdepth.cli import main
from diffdepth.io.sidecar import SIDECAR, read_sidecar

import _toy_methods

_toy_methods.register()


_img = _toy_methods.solid_image


def _toy(ckpt, out, *extra):
    return ["--method", "test-mean", "--checkpoint", str(ckpt), "--out", str(out), *extra]


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a model is loaded."""
    def boom(*a, **k):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr(registry, "load_model", boom)
    import diffdepth.commands.predict  # noqa: F401  (imports load_model from the registry at call time)


# ----------------------------------------------------------------------------- item 2: the sidecar
def test_predict_records_kind_units_method_checkpoint_and_options(tmp_path, toy_ckpt):
    img = _img(tmp_path / "in" / "x.png")
    out = tmp_path / "out"
    assert main(["predict", str(img), *_toy(toy_ckpt, out, "--save", "npy", "--opt", "scale=2")]) == 0
    rec = read_sidecar(out)
    assert rec["kind"] == "affine_invariant_depth" and rec["units"] == "relative"
    assert rec["method"] == "test-mean" and rec["checkpoint"].startswith(str(toy_ckpt.resolve()))
    assert rec["options"]["scale"] == 2 and rec["options"]["processing_res"] is None
    assert set(rec["entries"]) == {"x"} and set(rec["entries"]["x"]) == {"npy"}


METHODS = ["primedepth", "marigold", "metricgold", "seecoder-vpd", "diffsql"]


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_predict_then_eval_predictions_equals_eval_method(tmp_path, method, capsys):
    """The kind travels with the saved predictions: scoring them gives eval --method's summary
    (today's bug: metric or disparity predictions were least-squares aligned as affine depth)."""
    ckpt = tmp_path / "ckpt"
    assert main(["make-tiny", str(ckpt), "--method", method]) == 0
    scenes = tmp_path / "scenes"
    assert main(["synth", str(scenes), "--kind", "indoor", "--n", "2", "--size", "32x40", "--quiet"]) == 0
    seeded = "seed" in registry.get_method(method).load_class().predict_options
    common = ["--processing-res", "32", "--device", "cpu"] + (["--seed", "0"] if seeded else [])
    preds = tmp_path / "preds"
    assert main(["predict", str(scenes), "--checkpoint", str(ckpt), "--out", str(preds), "--save", "npy",
                 *common]) == 0
    assert sorted(p.name for p in preds.glob("*.npy")) == ["indoor_00000.npy", "indoor_00001.npy"]  # no GT maps
    ev = ["eval", "--dataset", "folder", "--data-root", str(scenes), "--no-progress"]
    assert main([*ev, "--predictions", str(preds), "--out", str(tmp_path / "a")]) == 0
    assert main([*ev, "--method", method, "--checkpoint", str(ckpt), "--out", str(tmp_path / "b"), *common]) == 0
    a = json.loads((tmp_path / "a" / "summary.json").read_text())
    b = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert a["kind"] == b["kind"] == registry.get_method(method).output_kind
    assert a["alignments"] == b["alignments"]
    assert a["counts"]["evaluated"] == b["counts"]["evaluated"] == 2
    assert a["metrics"] == pytest.approx(b["metrics"], rel=1e-5, abs=1e-6)


def test_eval_predictions_reads_the_kind_from_the_sidecar(tmp_path, capsys):
    """Metric predictions scored without alignment: 2x the ground truth gives abs_rel exactly 1."""
    scenes = tmp_path / "scenes"
    assert main(["synth", str(scenes), "--kind", "indoor", "--n", "2", "--size", "24x32", "--quiet"]) == 0
    from diffdepth.data.benchmarks import open_benchmark
    from diffdepth.io.sidecar import write_sidecar

    preds = tmp_path / "preds"
    preds.mkdir()
    data = open_benchmark("folder", str(scenes), None)
    for s in (data[i] for i in range(len(data))):
        depth = np.asarray(s["depth"]).reshape(np.shape(s["depth"])[-2:])
        np.save(preds / f"{s['name']}.npy", (2 * depth).astype(np.float32))
    write_sidecar(preds, {"kind": "metric_depth", "method": "test"})
    assert main(["eval", "--dataset", "folder", "--data-root", str(scenes), "--predictions", str(preds),
                 "--out", str(tmp_path / "ev"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["kind"] == "metric_depth" and summary["alignments"] == ["none"]
    assert summary["metrics"]["abs_rel"] == pytest.approx(1.0, abs=1e-3)
    # without any record eval says what it assumed
    os.remove(preds / SIDECAR)
    capsys.readouterr()
    assert main(["eval", "--dataset", "folder", "--data-root", str(scenes), "--predictions", str(preds),
                 "--out", str(tmp_path / "ev2"), "--no-progress"]) == 0
    assert "records no kind" in capsys.readouterr().err


# ----------------------------------------------------------------------------- item 3: outputs never inputs
def test_predict_dot_twice_gives_one_output_tree(tmp_path, toy_ckpt, monkeypatch, capsys):
    work = tmp_path / "photos"
    _img(work / "a.png")
    _img(work / "sub" / "b.png")
    monkeypatch.chdir(work)
    args = ["predict", ".", "--method", "test-mean", "--checkpoint", str(toy_ckpt)]
    assert main(args) == 0
    first = sorted(p.relative_to(work).as_posix() for p in (work / "depth_out").rglob("*"))
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    second = sorted(p.relative_to(work).as_posix() for p in (work / "depth_out").rglob("*"))
    assert second == first
    assert not (work / "depth_out" / "depth_out").exists()
    assert "already have all outputs" in err and "output folder" in err
    # an output folder written elsewhere is recognised by its predictions.json, too
    assert main(["predict", str(work), "--method", "test-mean", "--checkpoint", str(toy_ckpt),
                 "--out", str(tmp_path / "o2"), "--save", "npy"]) == 0
    assert sorted(p.relative_to(tmp_path / "o2").as_posix() for p in (tmp_path / "o2").rglob("*.npy")) == \
        ["a.npy", "sub/b.npy"]


def test_ground_truth_depth_maps_beside_their_images_are_not_inputs(tmp_path, toy_ckpt, capsys):
    scenes = tmp_path / "scenes"
    assert main(["synth", str(scenes), "--kind", "indoor", "--n", "2", "--size", "24x32", "--quiet"]) == 0
    _img(tmp_path / "alone" / "road_depth.png")  # no road.png beside it: an ordinary photo
    out = tmp_path / "out"
    assert main(["predict", str(scenes), str(tmp_path / "alone"), *_toy(toy_ckpt, out, "--save", "npy")]) == 0
    assert sorted(p.name for p in out.rglob("*.npy")) == ["indoor_00000.npy", "indoor_00001.npy", "road_depth.npy"]
    assert "left out 2 file(s) of the input folders: ground truth" in capsys.readouterr().err


# ----------------------------------------------------------------------------- item 4: reruns
def test_reruns_recompute_exactly_what_changed(tmp_path, toy_ckpt, capsys):
    img = _img(tmp_path / "in" / "x.png")
    out = tmp_path / "out"
    run = lambda *extra, ckpt=toy_ckpt: main(["predict", str(img), *_toy(ckpt, out, *extra)])  # noqa: E731
    sentinel = np.array([7.0], np.float32)

    def mark(name):  # replace a recorded output with a sentinel: kept means "not recomputed"
        np.save(out / name, sentinel) if name.endswith(".npy") else (out / name).write_bytes(b"kept")

    def kept(name):
        return (np.load(out / name).shape == (1,)) if name.endswith(".npy") else (out / name).read_bytes() == b"kept"

    assert run("--save", "npy") == 0
    mark("x.npy")
    assert run("--save", "npy,color,uncertainty") == 0  # new kinds of output: only they are written
    assert kept("x.npy") and (out / "x_color.png").exists() and (out / "x_uncertainty.npy").exists()
    mark("x_color.png")
    assert run("--save", "npy,color", "--cmap", "gray") == 0  # another colour map: only the colour image
    assert kept("x.npy") and not kept("x_color.png")
    mark("x_color.png")
    assert run("--save", "npy,color", "--cmap", "gray", "--opt", "scale=3") == 0  # another option: all
    assert not kept("x.npy") and not kept("x_color.png")
    np.testing.assert_allclose(np.load(out / "x.npy"), 3 * (1 + 128 / 255), atol=1e-2)
    assert "scale None -> 3" in capsys.readouterr().err
    mark("x.npy")
    other = tmp_path / "ckpt2"
    _toy_methods.MeanDepth(offset=2.0).save_pretrained(other)
    assert run("--save", "npy", "--opt", "scale=3", ckpt=other) == 0  # another checkpoint: recomputed
    np.testing.assert_allclose(np.load(out / "x.npy"), 3 * (2 + 128 / 255), atol=1e-2)
    mark("x.npy")
    assert run("--save", "npy", "--opt", "scale=3", ckpt=other) == 0  # nothing changed: nothing recomputed
    assert kept("x.npy")
    rec = read_sidecar(out)
    # the colour image made with the first checkpoint stays listed under its own settings
    assert rec["entries"]["x"]["color"].split(":")[0] != rec["entries"]["x"]["npy"]


# ----------------------------------------------------------------------------- item 5: options first
def test_options_are_checked_before_any_model_loads(tmp_path, toy_ckpt, no_model, capsys):
    img = _img(tmp_path / "x.png")
    (tmp_path / "afile").write_text("")
    cases = [
        (["--cmap", "inferno"], "invalid choice: 'inferno'"),
        (["--out", str(tmp_path / "afile")], "is a file"),
        (["--focal", "500", "--fov", "60"], "--focal and --fov both set"),
        (["--save", "npy,nope"], "unknown output format"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--focal", "-1"], "--focal must be > 0 pixels, got -1.0"),
        (["--ply-max-depth", "nan"], "--ply-max-depth must be > 0, got nan"),
        (["--focal", "0"], "--focal must be > 0 pixels, got 0.0"),
        (["--processing-res", "-1"], "--processing-res must be >= 0 (0 = native), got -1"),
        (["--temporal-window", "0"], "--temporal-window must be >= 1 frame, got 0"),
        (["--tile", "0"], "--tile must be >= 1 px, got 0"),
        (["--max-frames", "0"], "--max-frames must be >= 1, got 0"),
        (["--steps", "3"], "does not take --steps"),
    ]
    for extra, message in cases:
        args = ["predict", str(img), "--method", "test-mean", "--checkpoint", str(toy_ckpt)]
        if "--out" not in extra:
            args += ["--out", str(tmp_path / "o")]
        with pytest.raises(SystemExit) if extra[0] == "--cmap" else _nothing():
            assert main(args + extra) == 2
        err = capsys.readouterr().err
        assert message in err, (extra, err)
        assert "Traceback" not in err
    assert not (tmp_path / "o").exists()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_outputs_the_method_cannot_give_are_refused_up_front(tmp_path, capsys, no_model):
    img = _img(tmp_path / "x.png")
    ckpt = tmp_path / "mg"
    (ckpt).mkdir()
    (ckpt / "diffdepth.json").write_text(json.dumps({"method": "marigold"}))
    base = ["predict", str(img), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o")]
    assert main(base + ["--save", "npy,seg"]) == 2
    err = capsys.readouterr().err
    assert "marigold has no segmentation head" in err and "with-segmentation" not in err
    assert main(base + ["--save", "npy,uncertainty", "--ensemble-size", "1"]) == 2
    assert "at least 2 members" in capsys.readouterr().err


# ----------------------------------------------------------------------------- item 6: errors
def test_checkpoint_errors_name_the_real_cause(tmp_path, capsys, no_model):
    img = _img(tmp_path / "x.png")
    base = ["predict", str(img), "--out", str(tmp_path / "o")]
    assert main(base + ["--checkpoint", "./nope"]) == 2
    assert "checkpoint ./nope: no such file or folder" in capsys.readouterr().err
    run = tmp_path / "run"
    (run / "checkpoint-4").mkdir(parents=True)
    (run / "checkpoint-12").mkdir(parents=True)
    assert main(base + ["--checkpoint", str(run)]) == 2
    err = capsys.readouterr().err
    assert "is a training run folder" in err and f"--checkpoint {run / 'checkpoint-12'}" in err


def test_a_bad_image_is_named_once(tmp_path, toy_ckpt, capsys):
    bad = tmp_path / "in" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    _img(tmp_path / "in" / "good.png")
    assert main(["predict", str(tmp_path / "in"), *_toy(toy_ckpt, tmp_path / "o", "--save", "npy")]) == 1
    captured = capsys.readouterr()
    skipped = [line for line in captured.err.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and skipped[0].count(str(bad)) == 1
    assert sum(line.count(str(bad)) for line in captured.err.splitlines() if "failed" not in line) == 2
    assert "skipped" not in captured.out  # messages and the summary go to stderr together


# ----------------------------------------------------------------------------- item 7: no silent no-ops
def test_the_same_file_given_twice_is_one_input(tmp_path, toy_ckpt):
    img = _img(tmp_path / "x.png")
    assert main(["predict", str(img), str(img), *_toy(toy_ckpt, tmp_path / "o", "--save", "npy")]) == 0


# ----------------------------------------------------------------------------- item 9: permissions
def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "tiny"
        assert main(["make-tiny", str(out), "--method", "diffsql"]) == 0
        files = [p for p in out.rglob("*") if p.is_file()]
        assert any(p.suffix == ".safetensors" for p in files)
        for p in files:
            assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
        from diffdepth.utils import atomic_path
        from safetensors.torch import save_file
        import torch

        with atomic_path(tmp_path / "w.safetensors") as t:
            save_file({"a": torch.zeros(2)}, str(t))
        assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == 0o644
        from diffdepth.backbone import make_tiny_sd

        make_tiny_sd(seed=0).save_pretrained(tmp_path / "sd")  # the API, outside any atomic folder
        for p in (tmp_path / "sd").rglob("*.safetensors"):
            assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
    finally:
        os.umask(old)


# ----------------------------------------------------------------------------- item 6/10: train starts
def test_train_errors_name_recipe_keys_and_a_failed_start_leaves_no_run_folder(tmp_path, capsys):
    recipe = "configs/marigold/debug.yaml"
    root = os.path.join(os.path.dirname(__file__), "..", recipe)
    run = tmp_path / "run"
    assert main(["train", root, "--output-dir", str(run), "data.train=[{type: hypersim, root: null}]"]) == 2
    err = capsys.readouterr().err
    assert "data.train.0.root is not set" in err and "NoneType" not in err
    assert not run.exists()
    assert main(["train", root, "--output-dir", str(run), "model.tiny=false", "model.backbone=nobody/no-such-sd"]) == 2
    err = capsys.readouterr().err
    assert "model.backbone=PATH" in err and "--checkpoint" not in err
    assert not run.exists()


# ----------------------------------------------------------------------------- items 7/10: video, eval logs
def test_video_side_by_side_and_a_note_for_image_only_outputs(tmp_path, toy_ckpt, capsys):
    from diffdepth.io.video import VideoWriter, video_info

    clip = tmp_path / "in" / "clip.mp4"
    clip.parent.mkdir()
    with VideoWriter(clip, fps=8) as vw:
        for i in range(3):
            vw.write(np.full((32, 48, 3), 60 * i, np.uint8))
    out = tmp_path / "out"
    assert main(["predict", str(clip), *_toy(toy_ckpt, out, "--save", "npy,png16,side")]) == 0
    err = capsys.readouterr().err
    assert "--save png16 applies to images only" in err
    _, n, w, h = video_info(out / "clip_side.mp4")
    assert (n, w, h) == (3, 96, 32)  # RGB | depth
    assert (out / "clip_depth.mp4").exists() and (out / "clip.npz").exists()
    assert "1 video(s), 3 frames" in err and "frames/s" in err


def test_eval_folder_summary_names_no_published_split_and_logs_no_bar(tmp_path, capsys):
    scenes = tmp_path / "scenes"
    assert main(["synth", str(scenes), "--kind", "indoor", "--n", "2", "--size", "24x32", "--quiet"]) == 0
    from diffdepth.io.sidecar import write_sidecar

    preds = tmp_path / "preds"
    preds.mkdir()
    for name in ("indoor_00000", "indoor_00001"):
        np.save(preds / f"{name}.npy", np.ones((24, 32), np.float32))
    write_sidecar(preds, {"kind": "affine_invariant_depth"})
    capsys.readouterr()
    assert main(["eval", "--dataset", "folder", "--data-root", str(scenes), "--predictions", str(preds),
                 "--out", str(tmp_path / "ev")]) == 0  # progress on, but stderr is no terminal
    assert "eval folder" not in capsys.readouterr().err
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["split_file"] is None


# ----------------------------------------------------------------------------- what users of the anchors expect
def test_colour_range_grayscale_seg_ids_and_ply_options(tmp_path, toy_ckpt):
    from diffdepth.io.export import read_ply

    img = tmp_path / "half.png"
    arr = np.zeros((32, 32, 3), np.uint8)
    arr[:, 16:] = 255  # depth 1 (left) and 2 (right)
    Image.fromarray(arr).save(img)
    out = tmp_path / "o"
    assert main(["predict", str(img), *_toy(toy_ckpt, out, "--save", "color,seg_ids,ply", "--grayscale",
                                             "--vmin", "0", "--vmax", "4", "--ply-stride", "2",
                                             "--ply-max-depth", "1.5")]) == 0
    grey = np.asarray(Image.open(out / "half_color.png"))
    # depth d maps to n = d/4; near = 1 - n is drawn bright: 1 -> 191, 2 -> 128
    assert grey[0, 0].tolist() == [191] * 3 and grey[0, -1].tolist() == [128] * 3
    ids = np.asarray(Image.open(out / "half_seg_ids.png"))
    assert ids.dtype == np.uint8 and ids[0, 0] == 0 and ids[0, -1] == 1
    ply = read_ply(out / "half.ply")
    assert len(ply.points) == 16 * 8  # every 2nd pixel of the 16 near columns; the far half (2 > 1.5) left out
    assert main(["predict", str(img), *_toy(toy_ckpt, out, "--save", "color", "--cmap", "gray",
                                             "--percentiles", "0,100")]) == 0
    grey = np.asarray(Image.open(out / "half_color.png"))
    assert grey[0, 0].tolist() == [255] * 3 and grey[0, -1].tolist() == [0] * 3


def test_video_frame_selection(tmp_path, toy_ckpt):
    from diffdepth.io.video import VideoWriter

    clip = tmp_path / "clip.mp4"
    with VideoWriter(clip, fps=12) as vw:
        for i in range(6):
            vw.write(np.full((32, 32, 3), 40 * i, np.uint8))
    out = tmp_path / "o"
    assert main(["predict", str(clip), *_toy(toy_ckpt, out, "--start-frame", "1", "--frame-stride", "2")]) == 0
    z = np.load(out / "clip.npz")
    assert z["depth"].shape[0] == 3 and float(z["fps"]) == pytest.approx(6.0)
    # frames 1, 3, 5 (flat grey 40*i, lossy codec): depth 1 + grey/255
    np.testing.assert_allclose(z["depth"].mean(axis=(1, 2)), [1 + 40 * i / 255 for i in (1, 3, 5)], atol=0.03)
    assert main(["predict", str(clip), *_toy(toy_ckpt, out, "--max-frames", "2")]) == 0  # new selection: redone
    assert np.load(out / "clip.npz")["depth"].shape[0] == 2


# ----------------------------------------------------------------------------- item 8: native resolution
def test_attention_maps_are_computed_on_bounded_query_chunks(monkeypatch):
    """PrimeDepth's regional/token attention maps never need the full N x N block: with a small
    budget every block is within it, and the depth is the same as in one block."""
    import torch

    from diffdepth.backbone import taps
    from diffdepth.methods.primedepth import PrimeDepth

    model = PrimeDepth.make_tiny(seed=0).eval()
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(taps, "ATTENTION_CHUNK_BYTES", 1 << 62)
    with torch.no_grad():
        whole = model.predict(x).depth
    blocks = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        if v.shape[-1] != q.shape[-1] or v.stride(-2) == 0:  # a map (values = regions / identity), not the UNet's
            blocks.append(q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * 4 * 3)
        return sdpa(q, k, v, *a, **kw)

    budget = 64 * 1024
    monkeypatch.setattr(taps, "ATTENTION_CHUNK_BYTES", budget)
    monkeypatch.setattr(taps.F, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        chunked = model.predict(x).depth
    assert blocks and max(blocks) <= budget
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)


def test_eval_with_every_prediction_missing_fails(tmp_path, capsys):
    scenes = tmp_path / "scenes"
    assert main(["synth", str(scenes), "--kind", "indoor", "--n", "2", "--size", "24x32", "--quiet"]) == 0
    (tmp_path / "empty").mkdir()
    assert main(["eval", "--dataset", "folder", "--data-root", str(scenes), "--predictions", str(tmp_path / "empty"),
                 "--kind", "metric_depth", "--out", str(tmp_path / "ev"), "--no-progress"]) == 1
    assert "no sample could be evaluated" in capsys.readouterr().err


def test_every_offered_colour_map_renders(tmp_path, toy_ckpt):
    # what `predict --cmap` and the demo's drop-downs offer must exist: each name is rendered
    import argparse

    from diffdepth.cli import build_parser
    from diffdepth.demo.app import CMAPS
    from diffdepth.io import colorize

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    predict_cmaps = next(a for a in sub.choices["predict"]._actions if "--cmap" in a.option_strings).choices
    offered = set(predict_cmaps) | set(CMAPS)
    assert {"spectral", "turbo", "gray"} <= offered and "inferno" not in offered
    img = tmp_path / "x.png"
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[:, :, :] = np.linspace(0, 255, 32).astype(np.uint8)[None, :, None]  # depth grows to the right
    Image.fromarray(rgb).save(img)
    for name in sorted(offered):
        ramp = colorize(np.linspace(1.0, 2.0, 32)[None], "affine_invariant_depth", cmap=name, robust=False)
        assert len({tuple(c) for c in ramp[0]}) > 16, name  # a ramp, not one colour
        out = tmp_path / name
        assert main(["predict", str(img), *_toy(toy_ckpt, out, "--save", "npy,color", "--cmap", name)]) == 0
        color = np.asarray(Image.open(out / "x_color.png"))
        np.testing.assert_array_equal(color, colorize(np.load(out / "x.npy"), "affine_invariant_depth", name))
