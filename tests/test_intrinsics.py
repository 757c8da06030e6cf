"""Issue 15 items 4-5: real intrinsics (EXIF, K files, flags; precedence and source recorded), the
``.npz`` point cloud in metres, and the per-prediction records of ``predictions.json``."""
import json
import math

import numpy as np
import pytest
from PIL import Image

from diffdepth.cli import main
from diffdepth.errors import InputError
from diffdepth.io.export import intrinsics_for, read_ply
from diffdepth.io.images import read_image_with_meta
from diffdepth.io.intrinsics import find_k_file, read_k_file
from diffdepth.io.sidecar import RECORD_KEYS, read_record, read_sidecar

import _toy_methods

_toy_methods.register()

VALUE = 128
DEPTH = 1.0 + VALUE / 255.0  # what the toy method predicts for a uniform image of VALUE


def _jpeg(path, w=48, h=32, exif_tags=None, ramp=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    sub = exif.get_ifd(0x8769)
    for tag, value in (exif_tags or {}).items():
        sub[tag] = value
    arr = np.full((h, w, 3), VALUE, np.uint8)
    if ramp:  # left to right 0..255, so the prediction has a range
        arr[:] = np.linspace(0, 255, w).round().astype(np.uint8)[None, :, None]
    Image.fromarray(arr).save(path, quality=95, exif=exif)
    return path


def _predict(ckpt, out, *inputs, save="npy", extra=()):
    return main(["predict", *map(str, inputs), "--method", "test-mean", "--checkpoint", str(ckpt),
                 "--out", str(out), "--save", save, *extra])


# ----------------------------------------------------------------------------- EXIF
def test_exif_focal_35mm_equivalent_on_a_3_2_image_is_f35_over_36_times_width(tmp_path):
    # on a 3:2 image the diagonal convention (f35 * diag_px / 43.27 mm) equals f35 / 36 mm * width
    p = _jpeg(tmp_path / "a.jpg", w=60, h=40, exif_tags={0xA405: 28})
    meta = read_image_with_meta(p)[1]
    assert meta.focal_px == pytest.approx(28 / 36 * 60)
    assert meta.focal_source == "exif FocalLengthIn35mmFilm"


def test_exif_focal_length_with_focal_plane_resolution_in_cm(tmp_path):
    # 4.2 mm lens, 2500 px per cm on the sensor (unit 3 = cm) -> 4.2 * 250 = 1050 px
    p = _jpeg(tmp_path / "b.jpg", w=48, h=32, exif_tags={0x920A: 4.2, 0xA20E: 2500.0, 0xA210: 3})
    meta = read_image_with_meta(p)[1]
    assert meta.focal_px == pytest.approx(1050.0)
    # the same lens, the image saved at half the width it was captured with (PixelXDimension 96)
    p = _jpeg(tmp_path / "c.jpg", w=48, h=32, exif_tags={0x920A: 4.2, 0xA20E: 2500.0, 0xA210: 3, 0xA002: 96})
    assert read_image_with_meta(p)[1].focal_px == pytest.approx(525.0)
    # FocalLength without the sensor's resolution gives no focal length in pixels
    p = _jpeg(tmp_path / "d.jpg", exif_tags={0x920A: 4.2})
    assert read_image_with_meta(p)[1].focal_px is None


# ----------------------------------------------------------------------------- K files
def test_k_file_formats_and_errors(tmp_path):
    f = tmp_path / "x_K.txt"
    f.write_text("# fx 0 cx\n500, 0, 320\n0 510 240\n0 0 1\n")
    assert read_k_file(f).tolist() == [[500, 0, 320], [0, 510, 240], [0, 0, 1]]
    f.write_text("500 510 320 240\n")
    assert read_k_file(f).tolist() == [[500, 0, 320], [0, 510, 240], [0, 0, 1]]
    for text, words in (("1 2 3", "holds 3 numbers"), ("500 0 320 0 510 240 0 0 2", "no skew"),
                        ("500 3 320 0 510 240 0 0 1", "no skew"), ("-5 0 1 0 5 1 0 0 1", "> 0"),
                        ("500 0 320 0 five 240 0 0 1", "not a number")):
        f.write_text(text)
        with pytest.raises(InputError, match=words) as err:
            read_k_file(f)
        assert str(f) in str(err.value)


def test_find_k_file_prefers_the_images_own_file_over_the_folders(tmp_path):
    img = tmp_path / "a.png"
    assert find_k_file(img) == (None, None)
    (tmp_path / "K.txt").write_text("1 1 0 0")
    assert find_k_file(img) == (tmp_path / "K.txt", "folder file")
    (tmp_path / "intrinsics.txt").write_text("1 1 0 0")
    assert find_k_file(img) == (tmp_path / "intrinsics.txt", "folder file")
    (tmp_path / "a_K.txt").write_text("1 1 0 0")
    assert find_k_file(img) == (tmp_path / "a_K.txt", "K file")


def test_intrinsics_precedence_and_rescaling():
    Kf = np.array([[200.0, 0, 50], [0, 200, 25], [0, 0, 1]])
    K, src = intrinsics_for(100, 50, focal=80, K_file=Kf, exif_focal_px=300)
    assert K[0, 0] == 80 and "--focal" in src
    K, src = intrinsics_for(100, 50, fov=90, K_file=Kf, exif_focal_px=300)
    assert K[0, 0] == pytest.approx(50) and "--fov" in src
    K, src = intrinsics_for(100, 50, K_file=Kf, K_file_source="K file a_K.txt", exif_focal_px=300)
    assert np.array_equal(K, Kf) and src == "K file a_K.txt"
    K, src = intrinsics_for(100, 50, K_file=Kf, K_file_source="K file a_K.txt", K_file_size=(200, 100))
    assert K[0, 0] == 100 and K[1, 1] == 100 and K[0, 2] == 25 and "rescaled from 200x100" in src
    K, src = intrinsics_for(100, 50, exif_focal_px=300, exif_source="exif FocalLengthIn35mmFilm")
    assert K[0, 0] == 300 and src == "focal 300 px (exif FocalLengthIn35mmFilm)"


def test_predict_picks_flag_then_k_file_then_folder_file_then_exif_then_default(tmp_path, toy_ckpt):
    ins = tmp_path / "in"
    _jpeg(ins / "own.jpg", exif_tags={0xA405: 50})  # own K file beats the folder file and EXIF
    (ins / "own_K.txt").write_text("100 0 24\n0 101 16\n0 0 1\n")
    _jpeg(ins / "folder.jpg", exif_tags={0xA405: 50})  # folder file beats EXIF
    (ins / "intrinsics.txt").write_text("200 202 24 16\n")
    _jpeg(ins / "sub" / "exif.jpg", w=60, h=40, exif_tags={0xA405: 36})  # no K file in sub/: EXIF
    _jpeg(ins / "sub" / "plain.jpg")  # nothing: 60 degrees
    out = tmp_path / "out"
    assert _predict(toy_ckpt, out, ins, save="npy,ply") == 0
    rec = {rel: read_record(out, rel)["intrinsics"] for rel in ("own", "folder", "sub/exif", "sub/plain")}
    assert (rec["own"]["fx"], rec["own"]["fy"], rec["own"]["from"]) == (100, 101, "k_file")
    assert rec["own"]["source"] == "K file own_K.txt"
    assert (rec["folder"]["fx"], rec["folder"]["fy"], rec["folder"]["from"]) == (200, 202, "folder_file")
    assert rec["sub/exif"]["fx"] == pytest.approx(60.0) and rec["sub/exif"]["from"] == "exif"
    assert rec["sub/exif"]["source"] == "focal 60 px (exif FocalLengthIn35mmFilm)"
    assert rec["sub/plain"]["fx"] == pytest.approx(24 / math.tan(math.radians(30)))
    assert rec["sub/plain"]["from"] == "default"
    comments = read_ply(out / "own.ply").comments
    assert "intrinsics: K file own_K.txt" in comments and "K: fx=100 fy=101 cx=24 cy=16" in comments
    # --focal wins over every file
    out2 = tmp_path / "out2"
    assert _predict(toy_ckpt, out2, ins, save="npy", extra=("--focal", "77")) == 0
    assert {read_record(out2, r)["intrinsics"]["fx"] for r in ("own", "folder", "sub/exif")} == {77}


def test_a_bad_k_file_fails_its_image_with_the_files_name(tmp_path, toy_ckpt, capsys):
    ins = tmp_path / "in"
    _jpeg(ins / "a.jpg")
    (ins / "a_K.txt").write_text("1 2 3\n")
    _jpeg(ins / "sub" / "b.jpg")
    out = tmp_path / "out"
    assert _predict(toy_ckpt, out, ins, save="npy,ply") == 1
    assert str(ins / "a_K.txt") in capsys.readouterr().err
    assert not (out / "a.npy").exists() and (out / "sub" / "b.ply").exists()


# ----------------------------------------------------------------------------- point cloud in metres
def test_points_npz_back_projects_metric_depth_in_metres(tmp_path, toy_ckpt, monkeypatch):
    monkeypatch.setattr(_toy_methods.MeanDepth, "output_kind", "metric_depth")
    ins = tmp_path / "in"
    _jpeg(ins / "m.jpg", w=48, h=32)
    (ins / "m_K.txt").write_text("40 0 24\n0 20 16\n0 0 1\n")
    out = tmp_path / "out"
    assert _predict(toy_ckpt, out, ins / "m.jpg", save="npy,points,ply,glb") == 0
    z = np.load(out / "m_points.npz")
    assert str(z["kind"]) == "metric_depth" and str(z["units"]) == "m"
    assert str(z["K_source"]) == "K file m_K.txt"
    assert z["K"].tolist() == [[40, 0, 24], [0, 20, 16], [0, 0, 1]]
    pts, pix = z["points"], z["pixels"]
    assert pts.dtype == np.float32 and pts.shape == (48 * 32, 3) and z["colors"].dtype == np.uint8
    depth = np.load(out / "m.npy")
    assert np.allclose(depth, DEPTH, atol=2e-3)  # JPEG: the value is VALUE +- a little
    # pixel (row 0, col 0) -> x = (0 - 24) / 40 * z, y = (0 - 16) / 20 * z; (row 16, col 24) is on the axis
    i0 = np.flatnonzero((pix[:, 0] == 0) & (pix[:, 1] == 0))[0]
    zc = depth[0, 0]
    assert pts[i0] == pytest.approx([-0.6 * zc, -0.8 * zc, zc], rel=1e-5)
    ic = np.flatnonzero((pix[:, 0] == 16) & (pix[:, 1] == 24))[0]
    assert pts[ic] == pytest.approx([0.0, 0.0, depth[16, 24]], abs=1e-6)
    ply = read_ply(out / "m.ply")
    assert np.allclose(ply.points, pts) and "units: metres" in ply.comments
    assert (out / "m.glb").read_bytes()[:4] == b"glTF"


# ----------------------------------------------------------------------------- records
def test_every_output_of_a_predict_run_has_its_record(tmp_path, toy_ckpt):
    ins = tmp_path / "in"
    for name in ("a.jpg", "sub/b.jpg"):
        _jpeg(ins / name, ramp=True)
    out = tmp_path / "out"
    save = "npy,png16,color,side,ply,points,glb,uncertainty"
    assert _predict(toy_ckpt, out, ins, save=save, extra=("--opt", "scale=2")) == 0
    data = read_sidecar(out)
    assert set(data["records"]) == {"a", "sub/b"}
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"predictions.json"}
    listed = set()
    for rel, rec in data["records"].items():
        assert set(rec) == set(RECORD_KEYS)
        assert (rec["kind"], rec["quantity"], rec["scale"], rec["units"]) == (
            "affine_invariant_depth", "depth", "affine-invariant", "relative")
        assert rec["method"] == "test-mean" and rec["options"]["scale"] == 2 and rec["processing_res"] == 0
        assert rec["checkpoint"].startswith(str(toy_ckpt.resolve())) and rec["alignment"] is None
        assert rec["size"] == [32, 48] and rec["input"] == str((ins / f"{rel}.jpg").resolve())
        lo, hi = rec["valid_range"]
        d = np.load(out / f"{rel}.npy")
        assert (lo, hi) == (pytest.approx(float(d.min())), pytest.approx(float(d.max())))
        assert lo == pytest.approx(2 * 1.0, abs=0.02) and hi == pytest.approx(2 * 2.0, abs=0.02)  # 2 * (1 + rgb)
        assert set(rec["outputs"]) == set(save.split(",")) and rec["settings_id"] == data["settings_id"]
        listed |= set(rec["outputs"].values())
    assert listed == files
    # a rerun that adds one format keeps the record's other outputs
    assert _predict(toy_ckpt, out, ins, save="npy,seg", extra=("--opt", "scale=2")) == 0
    assert set(read_record(out, "a")["outputs"]) >= set(save.split(","))


def test_align_records_the_fit_and_keeps_the_intrinsics(tmp_path, toy_ckpt):
    from diffdepth.io.aligned import align_folder

    ins = tmp_path / "in"
    _jpeg(ins / "a.jpg")
    (ins / "a_K.txt").write_text("50 0 24\n0 50 16\n0 0 1\n")
    out = tmp_path / "out"
    assert _predict(toy_ckpt, out, ins, save="npy") == 0
    pred = np.load(out / "a.npy")
    rng = np.random.default_rng(0)
    anchors = np.zeros_like(pred)
    idx = rng.choice(pred.size, 60, replace=False)
    # the toy depth is nearly constant; give it a ramp so scale and shift are determined
    pred = pred + np.linspace(0, 1, pred.size, dtype=np.float32).reshape(pred.shape)
    np.save(out / "a.npy", pred)
    anchors.flat[idx] = 2.0 * pred.flat[idx] + 0.5
    (tmp_path / "anc").mkdir()
    np.save(tmp_path / "anc" / "a.npy", anchors)
    align_folder(out, tmp_path / "anc", tmp_path / "metric")
    rec = read_record(tmp_path / "metric", "a")
    assert set(rec) == set(RECORD_KEYS) and rec["kind"] == "metric_depth" and rec["units"] == "m"
    assert rec["alignment"]["scale"] == pytest.approx(2.0, rel=1e-3)
    assert rec["alignment"]["shift"] == pytest.approx(0.5, abs=1e-3)
    assert rec["alignment"]["source_kind"] == "affine_invariant_depth"
    assert rec["intrinsics"]["fx"] == 50 and rec["intrinsics"]["source"] == "K file a_K.txt"
    metric = np.load(tmp_path / "metric" / "a.npy")
    assert rec["valid_range"] == [pytest.approx(float(metric.min())), pytest.approx(float(metric.max()))]


def test_read_record_of_an_older_folder_falls_back_to_its_keys(tmp_path):
    from diffdepth.io.sidecar import write_sidecar

    write_sidecar(tmp_path, {"kind": "metric_depth", "method": "m", "entries": {"x": {"npy": "s"}},
                             "settings": {"s": {"kind": "metric_depth"}}})
    rec = read_record(tmp_path, "x")
    assert rec["kind"] == "metric_depth" and rec["units"] == "m" and rec["method"] == "m"
    assert read_record(tmp_path, "y") is None
    json.loads((tmp_path / "predictions.json").read_text())


def test_rerun_redraws_what_a_changed_input_or_k_file_leaves_stale(tmp_path, toy_ckpt):
    ins, out = tmp_path / "in", tmp_path / "out"
    img = _jpeg(ins / "a.jpg")
    names = ("a.npy", "a_color.png", "a.ply")

    def stamps():  # a rewrite replaces the file (atomic rename): a new inode and time
        return {n: ((out / n).stat().st_ino, (out / n).stat().st_mtime_ns) for n in names}

    def redrawn(before):
        return sorted(n for n, s in stamps().items() if s != before[n])

    assert _predict(toy_ckpt, out, ins, save="npy,color,ply") == 0
    first = stamps()
    assert _predict(toy_ckpt, out, ins, save="npy,color,ply") == 0
    assert redrawn(first) == []  # nothing changed: nothing redrawn
    # a K file appears beside the image: the point cloud is redrawn with it, the depth is kept
    (ins / "a_K.txt").write_text("100 0 24\n0 101 16\n0 0 1\n")
    assert _predict(toy_ckpt, out, ins, save="npy,color,ply") == 0
    assert redrawn(first) == ["a.ply"] and "K: fx=100 fy=101 cx=24 cy=16" in read_ply(out / "a.ply").comments
    second = stamps()
    (ins / "a_K.txt").write_text("90 0 24\n0 91 16\n0 0 1\n")  # edited
    assert _predict(toy_ckpt, out, ins, save="npy,color,ply") == 0
    assert redrawn(second) == ["a.ply"] and "K: fx=90 fy=91 cx=24 cy=16" in read_ply(out / "a.ply").comments
    # the photo is replaced: asking for the depth only recomputes it, and the colour image and point cloud
    # of the old photo are no longer listed, so asking for them later redraws them too
    third = stamps()
    Image.fromarray(np.full((32, 48, 3), 200, np.uint8)).save(img, quality=95)
    assert _predict(toy_ckpt, out, ins, save="npy") == 0
    assert redrawn(third) == ["a.npy"]
    np.testing.assert_allclose(np.load(out / "a.npy"), 1 + 200 / 255, atol=0.02)
    assert set(read_sidecar(out)["entries"]["a"]) == {"npy"}
    fourth = stamps()
    assert _predict(toy_ckpt, out, ins, save="npy,color,ply") == 0
    assert redrawn(fourth) == ["a.ply", "a_color.png"]
