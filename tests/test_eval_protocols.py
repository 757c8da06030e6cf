"""Benchmark readers on tiny files written in the real formats; crops; Velodyne projection."""
import math
import urllib.request

import numpy as np
import pytest
from PIL import Image

from diffdepth.data import benchmarks as B
from diffdepth.data.files import read_kitti_calib
from diffdepth.errors import InputError
from diffdepth.evaluation.protocols import (get_protocol, kb_crop_box, kitti_eigen_crop_mask, kitti_garg_crop_mask,
                                            nyu_eigen_crop_mask)


def _rgb(path, h, w, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def _png16(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, dtype=np.uint16)).save(path)


# ------------------------------------------------------------------ crops on known shapes
def _box(mask):
    rows, cols = np.nonzero(mask)
    return rows.min(), rows.max() + 1, cols.min(), cols.max() + 1, int(mask.sum())


def test_nyu_eigen_crop_on_480x640():
    assert _box(nyu_eigen_crop_mask((480, 640))) == (45, 471, 41, 601, 426 * 560)


def test_kitti_crops_on_known_shapes():
    # Garg on the raw 375x1242 frame: Monodepth2's 153:371, 44:1197
    assert _box(kitti_garg_crop_mask((375, 1242)))[:4] == (153, 371, 44, 1197)
    # Eigen on the KB-cropped 352x1216 frame: int(.3324324*352)=117, int(.91351351*352)=321,
    # int(.0359477*1216)=43, int(.96405229*1216)=1172
    assert _box(kitti_eigen_crop_mask((352, 1216)))[:4] == (117, 321, 43, 1172)
    # KB crop: top = H - 352, left = (W - 1216) // 2
    assert kb_crop_box(375, 1242) == (23, 375, 13, 1229)
    assert kb_crop_box(100, 200) is None


def test_kitti_eigen_garg_protocol_as_vpd_evaluates():
    """VPD / ECoDepth ``cropping_img``: KB crop, then the Garg fractions on the 352x1216 ground truth,
    valid where 1e-3 < gt < 80 (strict)."""
    p = get_protocol("kitti_eigen_garg")
    assert (p.reader, p.crop, p.min_depth, p.max_depth, p.num_samples) == ("KittiEigen", "kitti_garg", 1e-3, 80.0, 652)
    assert p.alignment == "auto" and p.processing_res == 0
    depth = np.full((352, 1216), 10.0)
    # int(.40810811*352)=143, int(.99189189*352)=349, int(.03594771*1216)=43, int(.96405229*1216)=1172
    assert _box(p.eval_mask(depth))[:4] == (143, 349, 43, 1172)
    depth[200, 100], depth[200, 101], depth[200, 102], depth[200, 103] = 5e-4, 2e-3, 80.0, 79.99
    mask = p.eval_mask(depth)
    assert mask[200, 100:104].tolist() == [False, True, False, True]
    assert not mask[142, 600] and mask[143, 600] and mask[348, 600] and not mask[349, 600]


def test_make3d_crops_on_real_shapes():
    assert B.make3d_image_rows(2272, 1704) == (710, 1562)
    assert B.make3d_depth_rows(55) == (17, 38)


def test_protocol_eval_mask_combines_range_crop_and_validity():
    p = get_protocol("nyu")
    depth = np.full((480, 640), 5.0)
    depth[100, 100] = 12.0  # beyond 10 m
    depth[101, 100] = 0.0
    valid = np.ones_like(depth, bool)
    valid[102, 100] = False
    mask = p.eval_mask(depth, valid)
    assert mask.sum() == 426 * 560 - 3
    assert not mask[0, 0] and mask[45, 41] and not mask[471, 601]


# ------------------------------------------------------------------ Velodyne projection
CAM2CAM = """calib_time: 09-Jan-2012 13:57:47
corner_dist: 9.950000e-02
S_rect_02: 8.000000e+00 6.000000e+00
R_rect_00: 1.0 0.0 0.0 0.0 1.0 0.0 0.0 0.0 1.0
P_rect_02: 2.0 0.0 4.0 0.0 0.0 2.0 3.0 0.0 0.0 0.0 1.0 0.0
"""
# velo (x fwd, y left, z up) -> cam (x right, y down, z fwd), camera 0.5 m behind the scanner
VELO2CAM = """calib_time: 15-Mar-2012 11:37:16
R: 0.0 -1.0 0.0 0.0 0.0 -1.0 1.0 0.0 0.0
T: 0.0 0.0 0.5
"""
POINTS = np.array([
    [4.0, -0.5, 0.25, 0.9],   # cam (0.5,-0.25,4.5): u=2*.5/4.5+4=4.22->4-1=3, v=2*-.25/4.5+3=2.89->3-1=2
    [2.0, -0.2, 0.1, 0.9],    # cam (0.2,-0.1,2.5): u=4.16->3, v=2.92->2: same pixel, nearer -> wins
    [-3.0, 0.0, 0.0, 0.9],    # behind the scanner: dropped
    [1.0, -5.0, 0.0, 0.9],    # cam (5,0,1.5): u=10.67->10 >= W=8: dropped
    [4.0, 3.375, 0.0, 0.9],   # cam (-3.375,0,4.5): u=2.5 exactly -> round-half-even 2 -> 1; v=3 -> 2
], dtype=np.float32)


def _write_calib(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "calib_cam_to_cam.txt").write_text(CAM2CAM)
    (folder / "calib_velo_to_cam.txt").write_text(VELO2CAM)


def test_velodyne_projection_hand_computed(tmp_path):
    _write_calib(tmp_path)
    cam2cam = read_kitti_calib(tmp_path / "calib_cam_to_cam.txt")
    velo2cam = read_kitti_calib(tmp_path / "calib_velo_to_cam.txt")
    assert cam2cam["calib_time"] == "09-Jan-2012 13:57:47"
    depth = B.velodyne_depth_map(POINTS, cam2cam, velo2cam)
    expected = np.zeros((6, 8), np.float32)
    expected[2, 3] = 2.0  # nearest of the two points (Velodyne forward x)
    expected[2, 1] = 4.0
    np.testing.assert_array_equal(depth, expected)
    # camera z instead of the Velodyne x: 2.5 and 4.5
    depth_z = B.velodyne_depth_map(POINTS, cam2cam, velo2cam, velo_depth=False)
    assert depth_z[2, 3] == pytest.approx(2.5) and depth_z[2, 1] == pytest.approx(4.5)
    assert (depth_z > 0).sum() == 2


def test_kitti_velodyne_reader(tmp_path):
    drive = "2011_09_26/2011_09_26_drive_0002_sync"
    _write_calib(tmp_path / "2011_09_26")
    img = _rgb(tmp_path / drive / "image_02/data/0000000069.png", 6, 8)
    velo = tmp_path / drive / "velodyne_points/data/0000000069.bin"
    velo.parent.mkdir(parents=True)
    POINTS.tofile(velo)
    split = tmp_path / "test_files.txt"
    split.write_text(f"{drive} 0000000069 l\n")
    ds = B.KittiVelodyne(tmp_path, split)
    s = ds[0]
    assert s["name"] == f"{drive}/image_02/data/0000000069"
    np.testing.assert_allclose(s["image"], img.transpose(2, 0, 1) / 255.0, atol=1e-7)
    assert s["depth"][0, 2, 3] == 2.0 and s["depth"][0, 2, 1] == 4.0 and s["valid"].sum() == 2
    np.testing.assert_array_equal(s["intrinsics"], [[2, 0, 4], [0, 2, 3], [0, 0, 1]])
    # a missing scan names the file and the split line
    split.write_text(f"{drive} 0000000069 l\n{drive} 70 l\n")
    (tmp_path / drive / "image_02/data/0000000070.png").write_bytes(
        (tmp_path / drive / "image_02/data/0000000069.png").read_bytes())
    with pytest.raises(InputError, match=r"0000000070\.bin.*line 2"):
        B.KittiVelodyne(tmp_path, split)[1]
    # the third field picks the camera: r -> image_03 (its own pixels); an unknown side names the line
    img3 = _rgb(tmp_path / drive / "image_03/data/0000000069.png", 6, 8, seed=1)
    split.write_text(f"{drive} 69 r\n{drive} 69 x\n")
    ds = B.KittiVelodyne(tmp_path, split)
    assert ds.names[0] == f"{drive}/image_03/data/0000000069" == ds[0]["name"]
    assert ds[0]["image_path"] == f"{drive}/image_03/data/0000000069.png"
    np.testing.assert_allclose(ds[0]["image"], img3.transpose(2, 0, 1) / 255.0, atol=1e-7)
    with pytest.raises(InputError, match=r"unknown side 'x'.*line 2"):
        ds[1]


# ------------------------------------------------------------------ readers
def test_nyuv2_reader_and_missing_file(tmp_path):
    img = _rgb(tmp_path / "test/kitchen_0004/rgb_0001.png", 12, 16)
    mm = np.random.default_rng(1).integers(0, 12000, size=(12, 16)).astype(np.uint16)
    mm[0, 0] = 0
    _png16(tmp_path / "test/kitchen_0004/depth_0001.png", mm)
    split = tmp_path / "split.txt"
    split.write_text("test/kitchen_0004/rgb_0001.png test/kitchen_0004/depth_0001.png test/kitchen_0004/filled_0001.png\n"
                     "\ntest/office/rgb_0002.png test/office/depth_0002.png x\n")
    ds = B.open_benchmark("nyu", tmp_path, split)
    assert len(ds) == 2 and ds.names == ["test/kitchen_0004/rgb_0001", "test/office/rgb_0002"]
    s = ds[0]
    assert s["image"].shape == (3, 12, 16) and s["image"].dtype == np.float32
    np.testing.assert_allclose(s["image"], img.transpose(2, 0, 1) / 255.0, atol=1e-7)
    np.testing.assert_allclose(s["depth"][0], mm / 1000.0, rtol=1e-6)
    assert s["depth"].dtype == np.float32 and s["valid"].shape == (1, 12, 16)
    np.testing.assert_array_equal(s["valid"][0], mm > 0)
    with pytest.raises(InputError, match=r"rgb_0002\.png.*line 3.*test/office/rgb_0002\.png"):
        ds[1]


def test_nyuv2_labeled_hdf5(tmp_path):
    import h5py  # a declared dependency: an import error must fail, not skip
    n, h, w = 3, 6, 8
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
    raw = rng.uniform(0.5, 9.0, size=(n, h, w)).astype(np.float32)
    with h5py.File(tmp_path / "nyu_depth_v2_labeled.mat", "w") as f:
        # MATLAB v7.3 stores column-major: h5py sees images [N,3,W,H], depths [N,W,H]
        f["images"] = images.transpose(0, 3, 2, 1)
        f["rawDepths"] = raw.transpose(0, 2, 1)
    (tmp_path / "idx.txt").write_text("3\n1\n")
    ds = B.open_benchmark("nyuv2", tmp_path / "nyu_depth_v2_labeled.mat", tmp_path / "idx.txt")
    assert isinstance(ds, B.NYUv2Labeled) and len(ds) == 2
    s = ds[0]  # 1-based index 3
    np.testing.assert_allclose(s["image"], images[2].transpose(2, 0, 1) / 255.0, atol=1e-7)
    np.testing.assert_array_equal(s["depth"][0], raw[2])
    assert s["name"] == "0003"


def test_kitti_eigen_reader_kb_crop_and_none_lines(tmp_path):
    h, w = 355, 1220  # KB crop: top 3, left 2
    img = _rgb(tmp_path / "2011_09_26/d_sync/image_02/data/0000000005.png", h, w)
    raw = np.random.default_rng(3).integers(0, 80 * 256, size=(h, w)).astype(np.uint16)
    _png16(tmp_path / "d_sync/proj_depth/groundtruth/image_02/0000000005.png", raw)
    split = tmp_path / "eigen.txt"
    split.write_text("2011_09_26/d_sync/image_02/data/0000000005.png "
                     "d_sync/proj_depth/groundtruth/image_02/0000000005.png 721.5377\n"
                     "2011_09_26/d_sync/image_02/data/0000000006.png None 721.5377\n")
    ds = B.KittiEigen(tmp_path, split)
    assert ds.num_listed == 2 and len(ds) == 1
    s = ds[0]
    assert s["image"].shape == (3, 352, 1216) and s["depth"].shape == (1, 352, 1216)
    np.testing.assert_allclose(s["depth"][0], raw[3:355, 2:1218] / 256.0, rtol=1e-6)
    np.testing.assert_allclose(s["image"][:, 0, 0], img[3, 2] / 255.0, atol=1e-7)
    assert s["focal"] == pytest.approx(721.5377)
    # saved full-frame predictions are KB-cropped like the sample, never resized onto the crop
    from diffdepth.evaluation.runner import PredictionFolder

    pred_dir = tmp_path / "pred"
    full = np.random.default_rng(4).random((h, w)).astype(np.float32) + 1
    (pred_dir / s["name"]).parent.mkdir(parents=True)
    np.save(pred_dir / f"{s['name']}.npy", full)
    got, _ = PredictionFolder(pred_dir)(s)
    np.testing.assert_array_equal(got, full[3:355, 2:1218])


def test_kitti_improved_gt_reader(tmp_path):
    drive = "2011_09_26/2011_09_26_drive_0002_sync"
    _rgb(tmp_path / drive / "image_02/data/0000000069.jpg", 5, 7)
    raw = np.arange(35, dtype=np.uint16).reshape(5, 7) * 100
    _png16(tmp_path / drive / "proj_depth/groundtruth/image_02/0000000069.png", raw)
    split = tmp_path / "bench.txt"
    split.write_text(f"{drive} 69 l\n")
    s = B.KittiImprovedGT(tmp_path, split)[0]
    assert s["image_path"].endswith("0000000069.jpg")
    np.testing.assert_allclose(s["depth"][0], raw / 256.0)
    assert not s["valid"][0, 0, 0] and s["valid"].sum() == 34


def test_eth3d_raw_float32(tmp_path):
    _rgb(tmp_path / "rgb/office/images/dslr_images/DSC_0219.JPG", 4, 5)
    depth = np.random.default_rng(4).uniform(1, 20, size=(4, 5)).astype("<f4")
    depth[1, 2] = np.inf
    d_rel = "depth/office_dslr_depth/office/ground_truth_depth/dslr_images/DSC_0219.JPG"
    (tmp_path / d_rel).parent.mkdir(parents=True)
    depth.tofile(tmp_path / d_rel)
    split = tmp_path / "eth3d.txt"
    split.write_text(f"rgb/office/images/dslr_images/DSC_0219.JPG {d_rel}\n")
    s = B.ETH3D(tmp_path, split, shape=(4, 5))[0]
    assert s["depth"][0, 1, 2] == 0 and not s["valid"][0, 1, 2] and s["valid"].sum() == 19
    np.testing.assert_array_equal(s["depth"][0][s["valid"][0]], depth[np.isfinite(depth)])
    with pytest.raises(InputError, match="expected 4x6"):
        B.ETH3D(tmp_path, split, shape=(4, 6))[0]


def test_scannet_reader(tmp_path):
    _rgb(tmp_path / "scene0406_02/color/000300.jpg", 6, 8)
    mm = np.full((6, 8), 2500, np.uint16)
    _png16(tmp_path / "scene0406_02/depth/000300.png", mm)
    split = tmp_path / "scannet.txt"
    split.write_text("scene0406_02/color/000300.jpg scene0406_02/depth/000300.png\n")
    s = B.open_benchmark("scannet", tmp_path, split)[0]
    assert s["name"] == "scene0406_02/color/000300"
    np.testing.assert_allclose(s["depth"], 2.5)


def test_diode_reader_uses_file_mask(tmp_path):
    base = "outdoor/scene_00022/scan_00196/00022_00196_outdoor_350_020"
    _rgb(tmp_path / f"{base}.png", 4, 6)
    depth = np.random.default_rng(5).uniform(0.7, 300, size=(4, 6, 1)).astype(np.float32)
    mask = np.ones((4, 6), np.float32)
    mask[0, :3] = 0
    np.save(tmp_path / f"{base}_depth.npy", depth)
    np.save(tmp_path / f"{base}_depth_mask.npy", mask)
    split = tmp_path / "diode.txt"
    split.write_text(f"{base}.png {base}_depth.npy {base}_depth_mask.npy\n")
    s = B.open_benchmark("diode_outdoor", tmp_path, split)[0]
    np.testing.assert_array_equal(s["valid"][0], mask.astype(bool))
    np.testing.assert_allclose(s["depth"][0][mask > 0], depth[..., 0][mask > 0])


def test_make3d_reader_mat_and_crops(tmp_path):
    from scipy.io import savemat

    _rgb(tmp_path / "Test134/img-10.21op2-p-139t000.jpg", 16, 8)
    grid = np.zeros((55, 305, 4), np.float64)
    grid[:, :, 3] = np.arange(55)[:, None] + np.arange(305)[None, :] / 1000.0 + 1.0
    (tmp_path / "Gridlaserdata").mkdir()
    savemat(tmp_path / "Gridlaserdata/depth_sph_corr-10.21op2-p-139t000.mat", {"Position3DGrid": grid})
    ds = B.open_benchmark("make3d", tmp_path)  # no split file: every image in Test134
    s = ds[0]
    assert s["name"] == "Test134/img-10.21op2-p-139t000"
    # image 16x8: 2:1 band height int(8/2) = 4 -> rows 6:10
    assert s["image"].shape == (3, 4, 8)
    assert s["depth"].shape == (1, 21, 305)
    np.testing.assert_allclose(s["depth"][0], grid[17:38, :, 3], rtol=1e-6)


def test_missing_root_and_bad_split(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        B.ScanNet(tmp_path / "nope", tmp_path / "split.txt")
    (tmp_path / "split.txt").write_text("only_one_field.jpg\n")
    with pytest.raises(InputError, match=r"expected at least 2 fields, got 1 field\(s\): split line 1 of .*split\.txt"):
        B.ScanNet(tmp_path, tmp_path / "split.txt")
    with pytest.raises(InputError, match="split file"):
        B.ScanNet(tmp_path, tmp_path / "absent.txt")


def test_split_download_offline_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFDEPTH_CACHE", str(tmp_path / "cache"))

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(InputError, match="--split-file"):
        B.ScanNet(tmp_path, None)
    # a cached copy is used without the network
    cached = tmp_path / "cache/splits/prs-eth/Marigold/main/data_split/scannet_depth/scannet_val_sampled_list_800_1.txt"
    cached.parent.mkdir(parents=True)
    cached.write_text("a/color/1.jpg a/depth/1.png\n")
    assert B.ScanNet(tmp_path, None).names == ["a/color/1"]


def test_protocol_overrides_and_table_facts():
    p = get_protocol("kitti").with_overrides(crop="kitti_garg", max_depth=50.0, min_depth=None)
    assert p.name == "kitti_eigen" and p.crop == "kitti_garg" and p.max_depth == 50.0 and p.min_depth == 1e-5
    assert get_protocol("kitti").with_overrides(crop="none").crop is None
    assert (get_protocol("nyuv2").num_samples, get_protocol("kitti_mono2").num_samples,
            get_protocol("eth3d").num_samples, get_protocol("scannet").num_samples,
            get_protocol("diode").num_samples, get_protocol("make3d").num_samples) == (654, 697, 454, 800, 771, 134)
    assert get_protocol("eth3d").processing_res == 756 and math.isinf(get_protocol("eth3d").max_depth)
    assert get_protocol("kitti_mono2").alignment == "median" and get_protocol("make3d").alignment == "median"
    # DIODE ground truth validity comes from the file mask, not the 0.6-350 range
    d = np.array([[0.3, 400.0]])
    assert get_protocol("diode").eval_mask(d).all()
    assert not get_protocol("scannet").eval_mask(np.array([[0.0, 10.0]])).any()  # strict bounds
    with pytest.raises(InputError, match="unknown dataset"):
        get_protocol("nope")
