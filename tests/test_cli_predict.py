"""`diffdepth predict`, `make-tiny` and `info` through the real CLI entry point."""
import json

import numpy as np
import pytest

from diffdepth.cli import main

import _toy_methods

_toy_methods.register()


_img = _toy_methods.solid_image


def test_predict_mirrors_folders_and_writes_every_format(tmp_path, toy_ckpt, capsys):
    src = tmp_path / "photos"
    _img(src / "a.png")
    _img(src / "sub" / "b.jpg", 37, 53)
    out = tmp_path / "out"
    rc = main(["predict", str(src), "--method", "test-mean", "--checkpoint", str(toy_ckpt), "--out", str(out),
               "--save", "npy,png16,color,side,ply,uncertainty", "--processing-res", "0"])
    assert rc == 0
    for base in (out / "a", out / "sub" / "b"):
        for suffix in (".npy", "_depth16.png", "_color.png", "_side.png", ".ply", "_uncertainty.npy"):
            assert (base.parent / (base.name + suffix)).exists(), base.name + suffix
    depth = np.load(out / "sub" / "b.npy")
    assert depth.shape == (53, 37)
    np.testing.assert_allclose(depth, 1 + 128 / 255, atol=2e-2)  # JPEG of a flat grey
    ply_header = (out / "a.ply").read_bytes().split(b"end_header")[0].decode()
    assert "fov 60" in ply_header  # the stated default field of view
    assert not list(out.rglob("*.tmp*"))


def test_bad_inputs_are_skipped_and_reported(tmp_path, toy_ckpt, capsys):
    src = tmp_path / "in"
    _img(src / "good.png")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    _img(src / "tiny.png", 8, 8)
    out = tmp_path / "out"
    rc = main(["predict", str(src), str(tmp_path / "missing.jpg"), "--method", "test-mean",
               "--checkpoint", str(toy_ckpt), "--out", str(out), "--save", "npy"])
    err = capsys.readouterr().err
    assert rc == 1
    assert (out / "good.npy").exists()
    assert not (out / "broken.npy").exists() and not (out / "tiny.npy").exists()
    assert "3 input(s) failed" in err and "broken.png" in err and "tiny.png" in err and "missing.jpg" in err
    assert "Traceback" not in err


def test_existing_outputs_are_kept_unless_overwrite(tmp_path, toy_ckpt, capsys):
    img = _img(tmp_path / "x.png")
    out = tmp_path / "out"
    out.mkdir()
    sentinel = np.array([42.0], np.float32)
    np.save(out / "x.npy", sentinel)
    args = ["predict", str(img), "--method", "test-mean", "--checkpoint", str(toy_ckpt), "--out", str(out), "--save", "npy"]
    # a file the folder's record does not list is not trusted: it is recomputed
    assert main(args) == 0
    assert np.load(out / "x.npy").shape == (32, 32)
    # what the record lists, made with the same settings, is kept
    np.save(out / "x.npy", sentinel)
    capsys.readouterr()
    assert main(args) == 0
    np.testing.assert_array_equal(np.load(out / "x.npy"), sentinel)
    assert "already have all outputs" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert np.load(out / "x.npy").shape == (32, 32)


def test_outputs_never_escape_out_and_collisions_are_reported(tmp_path, toy_ckpt, capsys):
    a = _img(tmp_path / "one" / "same.png")
    b = _img(tmp_path / "two" / "same.png")
    out = tmp_path / "out"
    rc = main(["predict", str(a), str(b), "--method", "test-mean", "--checkpoint", str(toy_ckpt),
               "--out", str(out), "--save", "npy"])
    assert rc == 1 and "collide" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["predictions.json", "same.npy"]
    # a glob with '..' in it still writes inside --out
    rc = main(["predict", str(tmp_path / "one" / ".." / "two" / "*.png"), "--method", "test-mean",
               "--checkpoint", str(toy_ckpt), "--out", str(tmp_path / "out2"), "--save", "npy"])
    assert rc == 0
    for f in (tmp_path / "out2").rglob("*.npy"):
        assert (tmp_path / "out2") in f.parents


def test_method_flags_come_from_declared_predict_options(tmp_path, toy_ckpt, monkeypatch, capsys):
    from diffdepth.commands import predict as cmd

    monkeypatch.setattr(_toy_methods.MeanDepth, "predict_options", {
        "scale": {"type": float}, "levels": {"type": int, "help": "pyramid levels", "min": 2},
        "fine": {"type": bool, "help": "fine pass"}, "tag": {"type": str},
        "mode": {"type": str, "choices": ("a", "b")}})
    flags = cmd.declared_options()
    assert flags["levels"][1] == ["test-mean"] and flags["flip"][1] == ["primedepth", "seecoder-vpd", "diffsql"]
    assert "scale" in flags and flags["scale"][1] == ["diffsql"]  # no help: no flag for test-mean's scale
    from diffdepth.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["predict", "x.png", "--levels", "3", "--fine", "--opt", "scale=2"])
    assert cmd.method_options(args) == {"levels": 3, "fine": True, "scale": 2}
    rc = main(["predict", str(_img(tmp_path / "x.png")), "--method", "test-mean", "--checkpoint", str(toy_ckpt),
               "--out", str(tmp_path / "o"), "--levels", "1"])
    assert rc == 2 and "--levels must be >= 2, got 1" in capsys.readouterr().err
    # --opt values arrive YAML-typed and are held to the same spec: a clear error, nothing written
    for opt, message in [("scale=abc", "--opt scale of test-mean takes a number, got 'abc'"),
                         ("levels=2.5", "--levels of test-mean takes an integer, got 2.5"),
                         ("levels=1", "--levels of test-mean must be >= 2, got 1"),
                         ("fine=3", "--fine of test-mean takes true or false, got 3"),
                         ("mode=c", "--opt mode of test-mean is one of a, b, got 'c'")]:
        rc = main(["predict", str(_img(tmp_path / "x.png")), "--method", "test-mean", "--checkpoint",
                   str(toy_ckpt), "--out", str(tmp_path / "bad"), "--opt", opt])
        assert rc == 2 and message in capsys.readouterr().err, opt
        assert not (tmp_path / "bad").exists()
    model = _toy_methods.MeanDepth()
    assert model.check_options({"scale": 2, "levels": 3}) == {"scale": 2.0, "levels": 3}
    assert isinstance(model.check_options({"scale": 2})["scale"], float)
    typed = model.check_options({"levels": np.int64(3), "fine": np.bool_(True)})  # numpy scalars, as from arrays
    assert typed == {"levels": 3, "fine": True} and type(typed["levels"]) is int and type(typed["fine"]) is bool
    assert model.check_options({"tag": 123}) == {"tag": "123"}  # --opt tag=123 means the text "123"
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", "--help"])
    assert "pyramid levels (test-mean)" in " ".join(capsys.readouterr().out.split())


def test_method_options_are_checked(tmp_path, toy_ckpt, capsys):
    img = _img(tmp_path / "x.png")
    rc = main(["predict", str(img), "--method", "test-mean", "--checkpoint", str(toy_ckpt), "--out",
               str(tmp_path / "o"), "--steps", "4"])
    assert rc == 2 and "--steps" in capsys.readouterr().err
    rc = main(["predict", str(img), "--method", "test-mean", "--checkpoint", str(toy_ckpt), "--out",
               str(tmp_path / "o"), "--save", "npy", "--opt", "scale=3"])
    assert rc == 0
    np.testing.assert_allclose(np.load(tmp_path / "o" / "x.npy"), 3 * (1 + 128 / 255), atol=1e-5)
    rc = main(["predict", str(img), "--method", "test-mean", "--checkpoint", str(toy_ckpt), "--out",
               str(tmp_path / "o"), "--save", "npy,bogus"])
    assert rc == 2 and "bogus" in capsys.readouterr().err


def test_ensemble_with_external_folder(tmp_path, capsys):
    class MeanDisparity(_toy_methods.MeanDepth):
        method = "test-mean-disparity"
        output_kind = "affine_invariant_disparity"

    from diffdepth.registry import MethodInfo, register

    register(MethodInfo("test-mean-disparity", "test_cli_predict:MeanDisparity", None, "", "test only"))
    globals()["MeanDisparity"] = MeanDisparity
    ckpt = tmp_path / "ckpt"
    MeanDisparity().save_pretrained(ckpt)
    from PIL import Image

    # our disparity: 1 + mean(RGB) = 1 on the black left half, 2 on the white right half
    img = tmp_path / "x.png"
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[:, 16:] = 255
    Image.fromarray(rgb).save(img)
    ext = tmp_path / "ext"
    ext.mkdir()
    # the external model saved depth 1/1, 1/5 (top-left, top-right) and 1/3, 1/7 (bottom), ...
    depth = 1.0 / np.kron(np.array([[1.0, 5.0], [3.0, 7.0]]), np.ones((16, 16))).astype(np.float32)
    np.save(ext / "x.npy", depth)
    (ext / "kind.txt").write_text("affine_invariant_depth\n")  # ... so it is inverted to disparity 1, 5, 3, 7
    rc = main(["predict", str(img), "--method", "test-mean-disparity", "--checkpoint", str(ckpt), "--out",
               str(tmp_path / "o"), "--save", "npy", "--ensemble-with", str(ext)])
    assert rc == 0
    # by hand: least squares of ours (1, 2) on theirs (1, 3 | 5, 7), equal pixel counts:
    # s = cov/var = 4 (2 - 1) / 20 = 0.2, t = 1.5 - 4 s = 0.7 -> aligned 0.9, 1.7 / 1.3, 2.1;
    # the average with ours: (1 + 0.9) / 2, (2 + 1.7) / 2 / (1 + 1.3) / 2, (2 + 2.1) / 2
    expected = np.kron(np.array([[0.95, 1.85], [1.15, 2.05]]), np.ones((16, 16)))
    np.testing.assert_allclose(np.load(tmp_path / "o" / "x.npy"), expected, atol=1e-5)
    # affine depth outputs cannot be averaged this way: the image is reported, not written
    ck2 = tmp_path / "ck2"
    _toy_methods.MeanDepth().save_pretrained(ck2)
    rc = main(["predict", str(img), "--method", "test-mean", "--checkpoint", str(ck2), "--out",
               str(tmp_path / "o2"), "--save", "npy", "--ensemble-with", str(ext)])
    assert rc == 1 and "affine-invariant disparities" in capsys.readouterr().err


def test_video_gives_colour_video_and_npz(tmp_path, toy_ckpt, capsys):
    from diffdepth.io.video import VideoWriter, load_npz_frames

    clip = tmp_path / "clip.mp4"
    with VideoWriter(clip, fps=5) as w:
        for v in (0.1, 0.5, 0.9):
            w.write(np.full((32, 48, 3), v, np.float32))
    rc = main(["predict", str(clip), "--method", "test-mean", "--checkpoint", str(toy_ckpt),
               "--out", str(tmp_path / "o")])
    assert rc == 0
    depth, kind, fps = load_npz_frames(tmp_path / "o" / "clip.npz")
    assert depth.shape == (3, 32, 48) and kind == "affine_invariant_depth" and fps == pytest.approx(5)
    assert depth[0].mean() < depth[1].mean() < depth[2].mean()
    assert (tmp_path / "o" / "clip_depth.mp4").stat().st_size > 0
    # --ensemble-with averages images only: a video says so and gets the first model's depth
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "kind.txt").write_text("affine_invariant_disparity\n")
    rc = main(["predict", str(clip), "--method", "test-mean", "--checkpoint", str(toy_ckpt),
               "--out", str(tmp_path / "o2"), "--ensemble-with", str(ext)])
    assert rc == 0 and "note: --ensemble-with applies to images only" in capsys.readouterr().err
    np.testing.assert_array_equal(load_npz_frames(tmp_path / "o2" / "clip.npz")[0], depth)


def test_make_tiny_writes_a_loadable_sd_and_refuses_to_clobber(tmp_path, capsys):
    from diffdepth.backbone import StableDiffusion

    out = tmp_path / "tiny"
    assert main(["make-tiny", str(out)]) == 0
    sd = StableDiffusion.from_pretrained(out)
    assert sd.unet.config.block_out_channels == [32, 64] or tuple(sd.unet.config.block_out_channels) == (32, 64)
    assert main(["make-tiny", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_offline_default_checkpoint_gives_one_line_hint(tmp_path, capsys):
    img = _img(tmp_path / "x.png")
    rc = main(["predict", str(img), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "prs-eth/marigold-depth-v1-1" in err[0] and "--checkpoint" in err[0]


def test_info_lists_methods(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for m in ("primedepth", "marigold", "metricgold", "seecoder-vpd", "diffsql"):
        assert m in out


def test_unregistered_method_checkpoint_loads_by_its_recorded_class(tmp_path):
    """A checkpoint of a method outside the registry records its class and still loads."""
    import json

    from diffdepth.registry import load_model

    class_path = "_toy_methods:MeanDepth"
    model = _toy_methods.MeanDepth(offset=2.5)
    model.method = "not-registered"
    model.save_pretrained(tmp_path / "c")
    assert json.loads((tmp_path / "c" / "diffdepth.json").read_text())["target"] == class_path
    back = load_model(checkpoint=tmp_path / "c", device="cpu")
    assert type(back).__name__ == "MeanDepth" and float(back.offset.detach()) == 2.5


def test_outputs_get_normal_permissions(tmp_path, toy_ckpt):
    import os
    import stat

    img = _img(tmp_path / "x.png")
    assert main(["predict", str(img), "--method", "test-mean", "--checkpoint", str(toy_ckpt), "--out",
                 str(tmp_path / "o"), "--save", "npy"]) == 0
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "o" / "x.npy").stat().st_mode) == 0o666 & ~mask


def test_eval_passes_method_options_and_rejects_unknown_ones(tmp_path, toy_ckpt, capsys):
    data = tmp_path / "data"
    assert main(["synth", str(data), "--kind", "indoor", "--n", "2", "--size", "32x32", "--seed", "0"]) == 0
    common = ["eval", "--dataset", "folder", "--data-root", str(data), "--method", "test-mean",
              "--checkpoint", str(toy_ckpt), "--no-progress", "--processing-res", "0"]
    assert main(common + ["--out", str(tmp_path / "e"), "--opt", "scale=3"]) == 0
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["options"] == {"scale": 3}
    from diffdepth.data.folder import FolderDepthDataset

    sample = FolderDepthDataset(data)[0]
    saved = np.load(tmp_path / "e" / "predictions" / f"{sample['name']}.npy")
    np.testing.assert_allclose(saved, 3 * (1 + sample["image"].mean(0)), atol=1e-5)
    assert main(common + ["--out", str(tmp_path / "e2"), "--steps", "3"]) == 2
    assert "--steps" in capsys.readouterr().err



def test_turbo_images_drawn_before_the_256_table_are_redrawn(tmp_path, toy_ckpt):
    """Turbo changed from a polynomial to the published table: a turbo ``_color.png`` recorded with the
    render settings of before (cmap, vmin, vmax, percentiles) is redrawn on a rerun, its depth is not
    recomputed, and other maps keep the ids they had."""
    from diffdepth.io.sidecar import fingerprint
    from diffdepth.jobs import EXPORT

    img, out = _img(tmp_path / "x.png"), tmp_path / "o"
    args = ["predict", str(img), "--method", "test-mean", "--checkpoint", str(toy_ckpt), "--out", str(out),
            "--save", "npy,color"]
    assert main(args + ["--cmap", "turbo"]) == 0
    drawn = (out / "x_color.png").read_bytes()
    side = json.loads((out / "predictions.json").read_text())
    before = {k: EXPORT[k] for k in ("vmin", "vmax", "percentiles")}
    side["entries"]["x"]["color"] = f"{side['settings_id']}:{fingerprint({**before, 'cmap': 'turbo'})}"
    (out / "predictions.json").write_text(json.dumps(side))
    (out / "x_color.png").write_bytes(b"drawn with the polynomial")
    npy_time = (out / "x.npy").stat().st_mtime_ns
    assert main(args + ["--cmap", "turbo"]) == 0
    assert (out / "x_color.png").read_bytes() == drawn and (out / "x.npy").stat().st_mtime_ns == npy_time
    # Spectral (the default) is the same map as before: its id is the one the earlier code wrote
    assert main(args) == 0
    side = json.loads((out / "predictions.json").read_text())
    assert side["entries"]["x"]["color"] == f"{side['settings_id']}:{fingerprint({**before, 'cmap': 'spectral'})}"
