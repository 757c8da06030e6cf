"""Issue 15: robust scale/shift fits to sparse anchors, the anchor readers, `diffdepth align`,
`predict --align-to` and `eval --alignment sparse:N`."""
import json

import numpy as np
import pytest
from PIL import Image

from diffdepth import cli
from diffdepth.evaluation.alignment import TooFewAnchors, fit_anchors, fit_scale_shift, robust_scale_shift


@pytest.fixture(scope="module")
def synth_depth(tmp_path_factory):
    """One `diffdepth synth` indoor scene's ground-truth depth (metres, float64)."""
    data = tmp_path_factory.mktemp("synth")
    assert cli.main(["synth", str(data), "--n", "1", "--size", "48x64", "--seed", "5", "--quiet"]) == 0
    (gt_png,) = sorted(data.glob("*_depth.png"))
    return np.asarray(Image.open(gt_png)).astype(np.float64) / 1000.0


def _sparse(gt, n, seed):
    rng = np.random.default_rng(seed)
    ys, xs = np.nonzero(gt > 0)
    pick = rng.choice(len(ys), n, replace=False)
    a = np.zeros_like(gt)
    a[ys[pick], xs[pick]] = gt[ys[pick], xs[pick]]
    return a, (ys[pick], xs[pick])


def _affine_prediction(gt, s, t, noise, seed=0):
    """A prediction whose least-squares map to ``gt`` is about ``(s, t)``: ``(gt·(1+noise·ε) − t)/s``."""
    rng = np.random.default_rng(seed)
    return (gt * (1 + noise * rng.standard_normal(gt.shape)) - t) / s


@pytest.mark.parametrize("outliers", [0.0, 0.2])
def test_fit_to_50_anchors_matches_the_all_pixel_least_squares(synth_depth, outliers):
    gt = synth_depth
    pred = _affine_prediction(gt, 2.5, 0.7, 0.01)
    s_all, t_all = fit_scale_shift(pred, gt, gt > 0)  # the reference: least squares on every valid pixel
    anchors, (ys, xs) = _sparse(gt, 50, seed=1)
    if outliers:
        rng = np.random.default_rng(2)
        bad = rng.choice(50, int(outliers * 50), replace=False)
        anchors[ys[bad], xs[bad]] = rng.uniform(0.2, 3.0, len(bad)) * anchors[ys[bad], xs[bad]] + 1.0
    res = fit_anchors(pred, anchors, "affine_invariant_depth", seed=0)
    tol = 0.01 if not outliers else 0.05
    assert res.scale == pytest.approx(s_all, rel=tol)
    assert res.shift == pytest.approx(t_all, rel=tol)
    assert (res.n_anchors, res.n_heldout, res.n_fit) == (50, 10, 40)
    if outliers:  # the corrupted anchors are recognised as outliers (held-out ones count in the held-out error)
        assert 0.7 <= res.inlier_fraction < 0.9
    else:
        assert res.heldout_absrel < 0.02 and res.inlier_fraction > 0.95 and res.warning is None
    # a plain least-squares fit on the same anchors would fail the 5 % bound with outliers
    if outliers:
        s_ls, _ = fit_scale_shift(pred, anchors, anchors > 0)
        assert abs(s_ls / s_all - 1) > 0.05


def test_disparity_kind_is_fitted_in_disparity_and_scale_only_for_relative(synth_depth):
    gt = synth_depth
    disp = (1.0 / gt[gt > 0] - 0.05) / 4.0  # s=4, t=0.05 in disparity
    pred = np.zeros_like(gt)
    pred[gt > 0] = disp
    anchors, _ = _sparse(gt, 30, seed=3)
    res = fit_anchors(pred, anchors, "affine_invariant_disparity")
    assert (res.space, res.fit) == ("disparity", "scale-shift")
    assert (res.scale, res.shift) == pytest.approx((4.0, 0.05), rel=1e-6)
    np.testing.assert_allclose(res.apply(pred)[gt > 0], gt[gt > 0], rtol=1e-6)
    rel = fit_anchors(gt / 3.0 + 0.5, anchors, "relative_depth")  # scale only: the shift is not fitted
    assert rel.fit == "scale" and rel.shift == 0.0
    both = fit_anchors(gt / 3.0 + 0.5, anchors, "relative_depth", fit="scale-shift")
    assert (both.scale, both.shift) == pytest.approx((3.0, -1.5), rel=1e-6)


def test_too_few_anchors_is_a_clear_error_and_a_poor_fit_warns():
    pred = np.arange(20, dtype=float).reshape(4, 5) + 1
    anchors = np.zeros_like(pred)
    anchors[0, :4] = [1, 2, 3, 4]
    anchors[1, 0] = np.nan
    with pytest.raises(TooFewAnchors, match="4 usable anchor.*at least 5"):
        fit_anchors(pred, anchors, "affine_invariant_depth")
    res = fit_anchors(pred, anchors, "metric_depth")  # scale only needs 3: one of 4 is held out
    assert (res.n_fit, res.n_heldout, res.fit) == (3, 1, "scale")
    anchors[0, 3] = 0
    res = fit_anchors(pred, anchors, "metric_depth")  # 3 anchors: too few to hold any out
    assert res.n_heldout == 0 and res.heldout_absrel is None
    rng = np.random.default_rng(0)
    noise = rng.uniform(0.5, 20, pred.shape)  # anchors unrelated to the prediction
    poor = fit_anchors(pred, noise, "affine_invariant_depth")
    assert poor.warning and "poor fit" in poor.warning


def test_robust_fit_is_exact_on_noise_free_data_with_outliers():
    p = np.linspace(1, 10, 40)
    g = 3 * p - 2
    g[::5] += 50  # 20 % gross outliers
    s, t, inl, _ = robust_scale_shift(p, g, seed=4)
    assert (s, t) == pytest.approx((3.0, -2.0), rel=1e-9)
    assert inl.sum() == 32 and not inl[::5].any()


# ------------------------------------------------------------------ readers
from diffdepth.data.anchors import find_anchor_file, read_anchors  # noqa: E402
from diffdepth.errors import InputError  # noqa: E402


def test_npy_anchors_treat_zero_nan_and_inf_as_none_and_move_to_the_prediction_grid(tmp_path):
    a = np.zeros((4, 6), np.float32)
    a[1, 2], a[3, 5], a[0, 0], a[2, 2] = 2.5, 7.0, np.nan, np.inf
    np.save(tmp_path / "a.npy", a)
    got = read_anchors(tmp_path / "a.npy", (4, 6))
    assert np.count_nonzero(got) == 2 and got[1, 2] == 2.5 and got[3, 5] == 7.0
    big = read_anchors(tmp_path / "a.npy", (8, 12))  # pixel centre (2.5,1.5)*2 -> (5,3); (5.5,3.5)*2 -> (11,7)
    assert np.count_nonzero(big) == 2 and big[3, 5] == 2.5 and big[7, 11] == 7.0


def test_png_anchors_in_millimetres_or_kitti_units(tmp_path):
    raw = np.zeros((3, 4), np.uint16)
    raw[1, 1], raw[2, 3] = 1500, 2560
    Image.fromarray(raw).save(tmp_path / "a.png")
    mm = read_anchors(tmp_path / "a.png", (3, 4))
    assert mm[1, 1] == pytest.approx(1.5) and mm[2, 3] == pytest.approx(2.56) and np.count_nonzero(mm) == 2
    kitti = read_anchors(tmp_path / "a.png", (3, 4), png_scale=256.0)
    assert kitti[2, 3] == pytest.approx(10.0) and kitti[1, 1] == pytest.approx(1500 / 256)
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(InputError, match="16-bit"):
        read_anchors(tmp_path / "rgb.png", (3, 4))
    Image.fromarray(np.full((3, 4), 200, np.uint8)).save(tmp_path / "grey8.png")  # 0.2 m at most: a mistake
    with pytest.raises(InputError, match="are a L PNG; expected a single-channel 16-bit PNG"):
        read_anchors(tmp_path / "grey8.png", (3, 4))


def test_csv_anchors_with_header_and_errors(tmp_path):
    (tmp_path / "a.csv").write_text("x,y,depth\n2,1,3.5\n0.4,2.6,1.25\n5,0,0\n")
    a = read_anchors(tmp_path / "a.csv", (4, 6))
    assert a[1, 2] == 3.5 and a[3, 0] == 1.25 and np.count_nonzero(a) == 2
    (tmp_path / "b.csv").write_text("x,y,depth\n9,1,3.5\n")
    with pytest.raises(InputError, match="b.csv line 2.*outside the 6x4"):
        read_anchors(tmp_path / "b.csv", (4, 6))
    (tmp_path / "c.csv").write_text("1,1,2\n1,one,2\n")
    with pytest.raises(InputError, match="c.csv line 2"):
        read_anchors(tmp_path / "c.csv", (4, 6))


def _kitti_calib(folder):
    folder.mkdir(parents=True, exist_ok=True)
    # velodyne (x forward, y left, z up) -> camera (x right, y down, z forward); f=10, c=(5,4), 12x10 frame
    (folder / "calib_velo_to_cam.txt").write_text("R: 0 -1 0 0 0 -1 1 0 0\nT: 0 0 0\n")
    (folder / "calib_cam_to_cam.txt").write_text(
        "R_rect_00: 1 0 0 0 1 0 0 0 1\nP_rect_02: 10 0 5 0 0 10 4 0 0 0 1 0\nS_rect_02: 12 10\n")


def test_velodyne_anchors_are_projected_with_the_kitti_calibration(tmp_path):
    date = tmp_path / "2011_09_26"
    _kitti_calib(date)
    scan = date / "drive" / "velodyne_points" / "data" / "0000000000.bin"
    scan.parent.mkdir(parents=True)
    # (10,0,0) -> u=5,v=4 -> pixel (col 4,row 3), depth 10; (5,-1,.5) -> cam (1,-.5,5) -> u=7,v=3 -> (6,2);
    # a point behind the camera is dropped
    np.array([[10, 0, 0, 1], [5, -1, 0.5, 1], [-3, 0, 0, 1]], np.float32).tofile(scan)
    a = read_anchors(scan, (10, 12))  # the calibration is found two folders up
    assert a[3, 4] == 10.0 and a[2, 6] == 5.0 and np.count_nonzero(a) == 2
    with pytest.raises(InputError, match="--calib"):
        read_anchors(scan, (10, 12), calib=tmp_path)


def test_anchor_files_are_matched_by_relative_name(tmp_path):
    (tmp_path / "sub").mkdir()
    np.save(tmp_path / "sub" / "x.npy", np.ones((2, 2)))
    assert find_anchor_file(tmp_path, "sub/x") == tmp_path / "sub" / "x.npy"
    assert find_anchor_file(tmp_path, "sub/y") is None
    (tmp_path / "sub" / "x.csv").write_text("0,0,1\n")
    with pytest.raises(InputError, match="several anchor files"):
        find_anchor_file(tmp_path, "sub/x")


# ------------------------------------------------------------------ diffdepth align
from diffdepth.io.sidecar import prediction_kind, write_sidecar  # noqa: E402


def test_align_cli_writes_metric_depth_report_and_sidecar_and_skips_bad_items(tmp_path, synth_depth, capsys):
    gt = synth_depth.astype(np.float32)
    preds, anchors, out = tmp_path / "preds", tmp_path / "anchors", tmp_path / "metric"
    (preds / "sub").mkdir(parents=True)
    (anchors / "sub").mkdir(parents=True)
    # a: affine-invariant depth (s=2, t=0.5) with anchors as a sparse .npy; b: the same with CSV anchors
    np.save(preds / "a.npy", ((gt - 0.5) / 2).astype(np.float32))
    np.save(preds / "sub" / "b.npy", ((gt - 0.5) / 2).astype(np.float32))
    np.save(preds / "c.npy", gt)  # no anchors -> skipped
    np.save(preds / "d.npy", gt)  # too few anchors -> skipped
    write_sidecar(preds, {"kind": "affine_invariant_depth", "method": "marigold", "checkpoint": "ck"})
    sparse, (ys, xs) = _sparse(gt.astype(np.float64), 40, seed=0)
    np.save(anchors / "a.npy", sparse.astype(np.float32))
    (anchors / "sub" / "b.csv").write_text("x,y,depth\n" + "".join(
        f"{x},{y},{float(gt[y, x])!r}\n" for y, x in zip(ys, xs)))
    (anchors / "d.csv").write_text("1,1,2.0\n2,2,3.0\n")
    rc = cli.main(["align", str(preds), str(anchors), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "2 prediction(s) skipped" in err and "no anchors for c" in err and "at least 5" in err
    for name in ("a", "sub/b"):
        m = np.load(out / f"{name}.npy")
        assert m.dtype == np.float32
        np.testing.assert_allclose(m[gt > 0], gt[gt > 0], rtol=1e-4)
    assert not (out / "c.npy").exists() and not (out / "d.npy").exists()
    assert prediction_kind(out) == "metric_depth"
    side = json.loads((out / "predictions.json").read_text())
    assert side["units"] == "m" and side["method"] == "marigold"
    assert side["alignment"]["source_kind"] == "affine_invariant_depth" and side["alignment"]["fit"] == "scale-shift"
    rep = json.loads((out / "alignment.json").read_text())
    rows = {r["name"]: r for r in rep["images"]}
    assert (rep["aligned"], rep["skipped"]) == (2, 2)
    assert rows["a"]["scale"] == pytest.approx(2.0, rel=1e-5) and rows["a"]["shift"] == pytest.approx(0.5, rel=1e-4)
    assert rows["a"]["n_anchors"] == 40 and rows["a"]["n_heldout"] == 8 and rows["a"]["heldout_absrel"] < 1e-5
    csv_text = (out / "alignment.csv").read_text().splitlines()
    assert csv_text[0].startswith("name,status,anchors_file,scale,shift") and len(csv_text) == 5
    # no recorded kind and no --kind: refused, nothing written
    (preds / "predictions.json").unlink()
    rc = cli.main(["align", str(preds), str(anchors), "--out", str(tmp_path / "x")])
    assert rc == 2 and "records no kind" in capsys.readouterr().err and not (tmp_path / "x").exists()


# ------------------------------------------------------------------ predict --align-to
import _toy_methods  # noqa: E402

_toy_methods.register()


def test_predict_align_to_a_file_and_a_folder(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    _toy_methods.MeanDepth(offset=1.0).save_pretrained(ckpt)
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "sub/b.png"):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(src / name)
    # test-mean predicts 1 + mean(RGB) (affine-invariant depth); anchors are 3·that + 2 at 12 pixels
    anchors = tmp_path / "anchors"
    (anchors / "sub").mkdir(parents=True)
    for name in ("a", "sub/b"):
        expected = 3 * (1 + np.asarray(Image.open(src / f"{name}.png"), np.float64).mean(-1) / 255) + 2
        a = np.zeros((32, 32), np.float32)
        a[rng.integers(0, 32, 12), rng.integers(0, 32, 12)] = 1  # duplicates are fine: >= 5 remain
        a[a > 0] = expected[a > 0]
        np.save(anchors / f"{name}.npy", a)
    out = tmp_path / "out"
    rc = cli.main(["predict", str(src), "--method", "test-mean", "--checkpoint", str(ckpt), "--out", str(out),
                   "--save", "npy", "--align-to", str(anchors)])
    assert rc == 0, capsys.readouterr().err
    for name in ("a", "sub/b"):
        rel = np.load(out / f"{name}.npy").astype(np.float64)
        np.testing.assert_allclose(np.load(out / "metric" / f"{name}.npy"), 3 * rel + 2, rtol=1e-5)
    assert prediction_kind(out / "metric") == "metric_depth"
    assert prediction_kind(out) == "affine_invariant_depth"  # the relative outputs keep their own record
    # one file for one image, into another folder; a file for two images is refused before predicting
    rc = cli.main(["predict", str(src / "a.png"), "--method", "test-mean", "--checkpoint", str(ckpt), "--out",
                   str(out), "--save", "npy", "--align-to", str(anchors / "a.npy"), "--align-out", str(tmp_path / "m1")])
    assert rc == 0 and (tmp_path / "m1" / "a.npy").is_file()
    rc = cli.main(["predict", str(src), "--method", "test-mean", "--checkpoint", str(ckpt), "--out",
                   str(tmp_path / "o2"), "--save", "npy", "--align-to", str(anchors / "a.npy")])
    assert rc == 2 and "one anchors file for 2 inputs" in capsys.readouterr().err and not (tmp_path / "o2").exists()
    rc = cli.main(["predict", str(src), "--method", "test-mean", "--checkpoint", str(ckpt), "--out",
                   str(tmp_path / "o3"), "--save", "color", "--align-to", str(anchors)])
    assert rc == 2 and "add npy to --save" in capsys.readouterr().err


# ------------------------------------------------------------------ eval --alignment sparse:N
def _synth_folder(tmp_path, n=2):
    data = tmp_path / "synth"
    assert cli.main(["synth", str(data), "--n", str(n), "--size", "40x48", "--seed", "2", "--quiet"]) == 0
    gts = {p.name[: -len("_depth.png")]: np.asarray(Image.open(p)).astype(np.float64) / 1000
           for p in sorted(data.glob("*_depth.png"))}
    return data, gts


def test_eval_sparse_alignment_fits_n_pixels_reproducibly_and_records_the_seed(tmp_path, capsys):
    data, gts = _synth_folder(tmp_path)
    preds = tmp_path / "preds"
    rng = np.random.default_rng(1)
    truth = {}
    preds.mkdir()
    for i, (name, g) in enumerate(gts.items()):
        s, t = 1.5 + i, 0.3 * (i + 1)
        noisy = g * (1 + 0.005 * rng.standard_normal(g.shape))
        np.save(preds / f"{name}.npy", ((noisy - t) / s).astype(np.float32))
        truth[name] = (s, t)
    (preds / "kind.txt").write_text("affine_invariant_depth\n")

    def run(out, *extra):
        assert cli.main(["eval", "--dataset", "folder", "--data-root", str(data), "--predictions", str(preds),
                         "--alignment", "sparse:100", "--out", str(out), "--no-progress", *extra]) == 0
        summary = json.loads((out / "summary.json").read_text())
        rows = (out / "per_sample.csv").read_text().splitlines()
        return summary, rows

    summary, rows = run(tmp_path / "e1")
    assert summary["alignment"] == "sparse:100" and summary["alignment_seed"] == 0
    assert summary["alignments"] == ["sparse:100"] and summary["counts"]["evaluated"] == 2
    header = rows[0].split(",")
    for line in rows[1:]:
        cells = dict(zip(header, line.split(",")))
        s, t = truth[cells["name"]]
        # 100 pixels of a prediction with 0.5 % noise: within 1 % of the truth
        assert float(cells["scale"]) == pytest.approx(s, rel=0.01)
        assert float(cells["shift"]) == pytest.approx(t, abs=0.05)
    assert summary["metrics"]["abs_rel"] < 0.01
    again, rows2 = run(tmp_path / "e2")
    assert rows2 == rows and again["metrics"] == summary["metrics"]  # the same pixels on a rerun
    other, rows3 = run(tmp_path / "e3", "--alignment-seed", "7")
    assert other["alignment_seed"] == 7 and rows3 != rows
    # the full least-squares alignment of the same predictions differs (it sees every pixel)
    assert cli.main(["eval", "--dataset", "folder", "--data-root", str(data), "--predictions", str(preds),
                     "--out", str(tmp_path / "e4"), "--no-progress"]) == 0
    full = json.loads((tmp_path / "e4" / "summary.json").read_text())
    assert "alignment_seed" not in full and full["metrics"]["abs_rel"] != summary["metrics"]["abs_rel"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:  # argparse refuses it
        cli.main(["eval", "--dataset", "folder", "--data-root", str(data), "--predictions", str(preds),
                  "--alignment", "sparse:0", "--out", str(tmp_path / "e5")])
    assert exc.value.code == 2
    assert "sparse:N" in capsys.readouterr().err
