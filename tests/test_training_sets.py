"""Training-set readers on tiny files written in the real formats: Hypersim (HDF5 and
Marigold's processed PNGs), Virtual KITTI 2, TartanAir, KITTI raw triplets, video folders,
and the generic folder with configurable depth encodings."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from diffdepth.data.folder import FolderDepthDataset, resize_sample
from diffdepth.data.sequences import KittiRawSequences, VideoFolderSequences
from diffdepth.data.training_sets import (HypersimDataset, TartanAirDataset, VirtualKitti2Dataset,
                                          hypersim_tone_map)
from diffdepth.errors import InputError

import h5py  # noqa: E402  (a declared dependency: an import error fails the module)

H, W = 12, 16


def _rgb(seed, h=H, w=W):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save_rgb(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _save16(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, dtype=np.uint16)).save(path)


def _h5(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("dataset", data=arr)


# --------------------------------------------------------------------------- Hypersim


def _hypersim_raw(root, z=3.0):
    """One frame of a fronto-parallel wall at planar depth z, stored as distance to the
    camera centre r = z * sqrt(u^2 + v^2 + f^2) / f (pixel centres about the image centre)."""
    f = 886.81 * W / 1024
    u = np.arange(W) - (W - 1) / 2
    v = np.arange(H) - (H - 1) / 2
    uu, vv = np.meshgrid(u, v)
    dist = (z * np.sqrt(uu ** 2 + vv ** 2 + f ** 2) / f).astype(np.float32)
    dist[0, 0] = np.nan  # no geometry
    ent = np.ones((H, W), np.int32)
    ent[1, 2] = -1  # no geometry either
    base = root / "ai_001_001" / "images"
    _h5(base / "scene_cam_00_geometry_hdf5" / "frame.0003.depth_meters.hdf5", dist.astype(np.float16))
    _h5(base / "scene_cam_00_geometry_hdf5" / "frame.0003.render_entity_id.hdf5", ent)
    rgb = np.full((H, W, 3), 0.37, np.float32)  # constant grey HDR
    _h5(base / "scene_cam_00_final_hdf5" / "frame.0003.color.hdf5", rgb.astype(np.float16))
    return f


def test_hypersim_raw_distance_to_planar(tmp_path):
    f = _hypersim_raw(tmp_path)
    ds = HypersimDataset(tmp_path)
    assert ds.layout == "raw" and len(ds) == 1
    s = ds[0]
    assert s["name"] == "ai_001_001/images/scene_cam_00_final_hdf5/frame.0003"
    d, v = s["depth"][0], s["valid"][0]
    assert not v[0, 0] and not v[1, 2] and d[0, 0] == 0 and d[1, 2] == 0
    assert v.sum() == H * W - 2
    # float16 storage: relative error <= 2^-11
    np.testing.assert_allclose(d[v], 3.0, rtol=1e-3)
    # (the corner distance is ~20 % larger than the centre one at this focal, so a missing conversion fails)
    assert np.abs(d[v] - 3.0).max() < 0.005
    K = s["intrinsics"]
    assert K[0, 0] == pytest.approx(f) and K[0, 2] == pytest.approx((W - 1) / 2)
    # tone mapping of a constant image: its 90th-percentile brightness maps to 0.8
    np.testing.assert_allclose(s["image"], 0.8, atol=1e-3)


def test_hypersim_tone_map_and_split_and_preview(tmp_path):
    rng = np.random.default_rng(0)
    hdr = rng.uniform(0, 5, (H, W, 3))
    out = hypersim_tone_map(hdr)
    bright = 0.3 * hdr[..., 0] + 0.59 * hdr[..., 1] + 0.11 * hdr[..., 2]
    scale = 0.8 ** 2.2 / np.percentile(bright, 90)
    np.testing.assert_allclose(out, np.clip((scale * hdr) ** (1 / 2.2), 0, 1), rtol=1e-5)
    _hypersim_raw(tmp_path)
    yy, xx = np.mgrid[0:H, 0:W]
    prev = np.stack([xx * 15, yy * 20, np.full_like(xx, 90)], -1).astype(np.uint8)  # smooth: JPEG-friendly
    _save_rgb(tmp_path / "ai_001_001/images/scene_cam_00_final_preview/frame.0003.tonemap.jpg", prev)
    split = tmp_path / "split.txt"
    split.write_text("ai_001_001 cam_00 3\n")
    s = HypersimDataset(tmp_path, split, rgb_source="preview")[0]
    assert np.abs(s["image"] * 255 - prev.transpose(2, 0, 1)).mean() < 4  # JPEG
    csv = tmp_path / "meta.csv"
    csv.write_text("scene_name,camera_name,frame_id,included_in_public_release,split_partition_name\n"
                   "ai_001_001,cam_00,3,True,train\nai_001_001,cam_00,4,False,train\nai_001_001,cam_00,5,True,val\n")
    assert len(HypersimDataset(tmp_path, csv, split="train")) == 1
    ds = HypersimDataset(tmp_path, csv, split="val")
    with pytest.raises(InputError, match=r"frame\.0005\.depth_meters\.hdf5"):
        ds[0]


def test_hypersim_processed_marigold_layout(tmp_path):
    root = tmp_path / "train"
    rgb = _rgb(2)
    depth_mm = np.random.default_rng(3).integers(0, 20000, (H, W))
    _save_rgb(root / "ai_002_003/rgb_cam_01_fr0007.png", rgb)
    _save16(root / "ai_002_003/depth_plane_cam_01_fr0007.png", depth_mm)
    split = tmp_path / "filename_list_train.txt"
    split.write_text("ai_002_003/rgb_cam_01_fr0007.png ai_002_003/depth_plane_cam_01_fr0007.png\n")
    for ds in (HypersimDataset(root, split), HypersimDataset(root)):
        assert ds.layout == "processed" and len(ds) == 1
        s = ds[0]
        assert s["name"] == "ai_002_003/rgb_cam_01_fr0007"
        np.testing.assert_array_equal(s["depth"][0], (depth_mm * 1e-3).astype(np.float32))
        np.testing.assert_array_equal(s["valid"][0], depth_mm > 0)
        np.testing.assert_array_equal(np.round(s["image"] * 255).astype(np.uint8), rgb.transpose(2, 0, 1))
    split.write_text("ai_002_003/rgb_cam_01_fr0008.png ai_002_003/depth_plane_cam_01_fr0008.png\n")
    with pytest.raises(InputError, match=r"rgb_cam_01_fr0008\.png.*split line"):
        HypersimDataset(root, split)[0]


# --------------------------------------------------------------------------- Virtual KITTI 2


def test_vkitti2_centimetres_sky_and_intrinsics(tmp_path):
    rgb_rel = "vkitti_2.0.3_rgb/Scene02/clone/frames/rgb/Camera_0/rgb_00001.jpg"
    dep_rel = "vkitti_2.0.3_depth/Scene02/clone/frames/depth/Camera_0/depth_00001.png"
    _save_rgb(tmp_path / rgb_rel, _rgb(4))
    cm = np.full((H, W), 1234, np.uint16)
    cm[:3] = 65535  # sky (655.35 m)
    cm[5, 5] = 1
    _save16(tmp_path / dep_rel, cm)
    txt = tmp_path / "vkitti_2.0.3_textgt/Scene02/clone/intrinsic.txt"
    txt.parent.mkdir(parents=True)
    txt.write_text("frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]\n0 0 725.0087 725.0087 620.5 187\n"
                   "0 1 725.0087 725.0087 620.5 187\n1 0 700.0 701.0 600.5 180\n1 1 1 1 1 1\n")
    for ds in (VirtualKitti2Dataset(tmp_path), ):
        s = ds[0]
        assert s["name"] == rgb_rel[:-4]
        d, v = s["depth"][0], s["valid"][0]
        assert not v[:3].any() and (d[:3] == 0).all()
        assert d[6, 6] == pytest.approx(12.34) and d[5, 5] == pytest.approx(0.01) and v[3:].all()
        np.testing.assert_allclose(s["intrinsics"], [[700.0, 0, 600.5], [0, 701.0, 180.0], [0, 0, 1]])
    split = tmp_path / "vkitti_train.txt"
    split.write_text(f"{rgb_rel} {dep_rel}\nrgb/Scene01/x.jpg None\n")
    ds = VirtualKitti2Dataset(tmp_path, split, size=(6, 8))
    assert len(ds) == 1  # the 'None' line is skipped as Marigold does
    s = ds[0]
    assert s["image"].shape == (3, 6, 8) and s["depth"].shape == (1, 6, 8)
    np.testing.assert_allclose(s["intrinsics"][0], [350.0, 0, 300.25])


# --------------------------------------------------------------------------- TartanAir


def test_tartanair_npy_and_fixed_intrinsics(tmp_path):
    base = tmp_path / "abandonedfactory/Easy/P001"
    _save_rgb(base / "image_left/000010_left.png", _rgb(5, 48, 64))
    depth = np.random.default_rng(6).uniform(0.5, 50, (48, 64)).astype(np.float32)
    depth[0, 0] = np.inf
    (base / "depth_left").mkdir()
    np.save(base / "depth_left/000010_left_depth.npy", depth)
    ds = TartanAirDataset(tmp_path)
    s = ds[0]
    assert s["name"] == "abandonedfactory/Easy/P001/image_left/000010_left"
    assert not s["valid"][0, 0, 0] and s["valid"].sum() == 48 * 64 - 1
    np.testing.assert_array_equal(s["depth"][0][1:], depth[1:])
    # 640x480 -> 64x48: f = 32, cx = 32, cy = 24
    np.testing.assert_allclose(s["intrinsics"], [[32, 0, 32], [0, 32, 24], [0, 0, 1]])
    (base / "depth_left/000010_left_depth.npy").write_bytes(b"not a numpy file")
    with pytest.raises(InputError, match="000010_left_depth.npy"):
        ds[0]


# --------------------------------------------------------------------------- KITTI raw triplets

KITTI_CALIB = """calib_time: 09-Jan-2012 13:57:47
corner_dist: 9.950000e-02
S_rect_02: 1.242000e+03 3.750000e+02
R_rect_02: 9.998817e-01 1.511453e-02 -2.841595e-03 -1.511724e-02 9.998853e-01 -9.338510e-04 2.827154e-03 9.766976e-04 9.999955e-01
P_rect_02: 7.215377e+02 0.000000e+00 6.095593e+02 4.485728e+01 0.000000e+00 7.215377e+02 1.728540e+02 2.163791e-01 0.000000e+00 0.000000e+00 1.000000e+00 2.745884e-03
P_rect_03: 7.215377e+02 0.000000e+00 6.095593e+02 -3.395242e+02 0.000000e+00 7.215377e+02 1.728540e+02 2.199936e+00 0.000000e+00 0.000000e+00 1.000000e+00 2.729905e-03
"""


def _kitti_raw(root, n=4, h=25, w=83):
    date = root / "2011_09_26"
    date.mkdir(parents=True)
    (date / "calib_cam_to_cam.txt").write_text(KITTI_CALIB)
    drive = date / "2011_09_26_drive_0001_sync"
    for i in range(n):
        img = np.full((h, w, 3), 10 * i, np.uint8)  # frame i is the constant 10 i
        _save_rgb(drive / "image_02/data" / f"{i:010d}.png", img)
    gt = np.zeros((h, w), np.uint16)
    gt[5, 7] = 2560  # 10 m
    _save16(drive / "proj_depth/groundtruth/image_02/0000000002.png", gt)
    return drive


def test_kitti_raw_triplets_intrinsics_and_split(tmp_path):
    _kitti_raw(tmp_path)
    split = tmp_path / "train_files.txt"
    split.write_text("2011_09_26/2011_09_26_drive_0001_sync 2 l\n2011_09_26/2011_09_26_drive_0001_sync 1 l\n")
    ds = KittiRawSequences(tmp_path, split, size=(24, 80))
    s = ds[0]
    assert s["frame_ids"] == [0, -1, 1] and s["frames"].shape == (3, 3, 24, 80)
    # target 2, then 1, then 3 (constant images 20, 10, 30)
    np.testing.assert_allclose(s["frames"].mean(axis=(1, 2, 3)) * 255, [20, 10, 30], atol=1e-3)
    K = np.array([[721.5377, 0, 609.5593], [0, 721.5377, 172.8540], [0, 0, 1]])
    K[0] *= 80 / 83
    K[1] *= 24 / 25
    np.testing.assert_allclose(s["intrinsics"], K, rtol=1e-6)
    assert s["name"] == "2011_09_26/2011_09_26_drive_0001_sync/image_02/data/0000000002"
    assert s["depth"].shape == (1, 24, 80) and s["depth"].max() == pytest.approx(10.0)
    assert s["valid"].sum() == 1 and "poses" not in s
    assert "depth" not in ds[1]
    # without a split: frames 1 and 2 have both neighbours
    assert len(KittiRawSequences(tmp_path)) == 2
    split.write_text("2011_09_26/2011_09_26_drive_0001_sync 3 l\n")
    with pytest.raises(InputError, match=r"0000000004\.png.*split line"):
        KittiRawSequences(tmp_path, split)[0]
    split.write_text("2011_09_26/2011_09_26_drive_0001_sync 2 r\n")
    with pytest.raises(InputError, match=r"image_03/data/0000000002\.png"):
        KittiRawSequences(tmp_path, split)[0]


def test_kitti_raw_missing_calib_and_corrupt_frame(tmp_path):
    drive = _kitti_raw(tmp_path)
    (drive / "image_02/data/0000000001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = KittiRawSequences(tmp_path, size=None)
    with pytest.raises(InputError, match=r"0000000001\.png"):
        ds[0]
    _save_rgb(drive / "image_02/data/0000000001.png", np.zeros((25, 83, 3), np.uint8))
    assert ds[0]["frames"].shape == (3, 3, 25, 83)
    ds = KittiRawSequences(tmp_path, size=None)  # calibration is cached per date: start afresh
    (tmp_path / "2011_09_26/calib_cam_to_cam.txt").unlink()
    with pytest.raises(InputError, match="calib_cam_to_cam.txt"):
        ds[1]


def test_video_folder_sequences(tmp_path):
    clip = tmp_path / "clip"
    for i in range(5):
        _save_rgb(clip / f"frame_{i}.png", np.full((20, 30, 3), 40 * i, np.uint8))
    _save_rgb(clip / "frame_10.png", np.full((20, 30, 3), 250, np.uint8))  # natural sort: after frame_4
    kf = tmp_path / "K.txt"
    kf.write_text("30 31 15 10\n")
    ds = VideoFolderSequences(clip, kf, size=(10, 15))
    assert len(ds) == 4
    s = ds[3]
    assert s["name"] == "frame_4"
    np.testing.assert_allclose(s["frames"].mean(axis=(1, 2, 3)) * 255, [160, 120, 250], atol=1e-3)
    np.testing.assert_allclose(s["intrinsics"], [[15, 0, 7.5], [0, 15.5, 5], [0, 0, 1]])
    kf.write_text("30 0 15\n0 31 10\n0 0 1\n")
    s = VideoFolderSequences(clip, kf, stride=2)[0]
    np.testing.assert_allclose(s["frames"].mean(axis=(1, 2, 3)) * 255, [80, 0, 160], atol=1e-3)
    np.testing.assert_allclose(s["intrinsics"], [[30, 0, 15], [0, 31, 10], [0, 0, 1]])
    kf.write_text("30 31 15\n")
    with pytest.raises(InputError, match="K.txt"):
        VideoFolderSequences(clip, kf)


# --------------------------------------------------------------------------- generic folder


def test_folder_encodings(tmp_path):
    depth = np.random.default_rng(7).uniform(1, 60, (H, W))
    depth[2, 3] = 0
    _save_rgb(tmp_path / "a/s1.png", _rgb(8))
    np.save(tmp_path / "a/s1_depth.npy", depth.astype(np.float32))
    s = FolderDepthDataset(tmp_path, depth_format="npy")[0]
    assert s["name"] == "a/s1" and "intrinsics" not in s
    np.testing.assert_array_equal(s["depth"][0], np.where(depth > 0, depth, 0).astype(np.float32))
    assert not s["valid"][0, 2, 3] and s["valid"].sum() == H * W - 1
    # KITTI-style uint16 / 256, with 65535 as the invalid code and a max depth
    raw = np.round(depth * 256).astype(np.uint16)
    raw[0, 0] = 65535
    _save16(tmp_path / "b/s2_gt.png", raw)
    _save_rgb(tmp_path / "b/s2.jpg", _rgb(9))
    s = FolderDepthDataset(tmp_path / "b", depth_suffix="_gt", depth_scale=1 / 256, invalid_value=65535,
                           max_depth=50.0)[0]
    expect = raw / 256.0
    ok = (raw != 65535) & (raw > 0) & (expect < 50)
    np.testing.assert_array_equal(s["valid"][0], ok)
    np.testing.assert_array_equal(s["depth"][0], np.where(ok, expect, 0).astype(np.float32))
    # PFM (bottom row first on disk)
    pfm = tmp_path / "c/s3_depth.pfm"
    pfm.parent.mkdir()
    pfm.write_bytes(f"Pf\n{W} {H}\n-1.0\n".encode() + np.flipud(depth).astype("<f4").tobytes())
    _save_rgb(tmp_path / "c/s3.png", _rgb(10))
    s = FolderDepthDataset(tmp_path / "c", depth_format="pfm")[0]
    np.testing.assert_array_equal(s["depth"][0], np.where(depth > 0, depth, 0).astype(np.float32))


def test_folder_write_read_and_errors(tmp_path):
    from diffdepth.data.folder import write_folder_sample

    depth = np.random.default_rng(1).uniform(0.2, 70, (H, W)).astype(np.float32)
    K = np.array([[20.0, 0, 8], [0, 20, 6], [0, 0, 1]])
    write_folder_sample(tmp_path, "x/y", _rgb(3), depth, K)
    s = FolderDepthDataset(tmp_path)[0]
    np.testing.assert_array_equal(s["valid"][0], depth <= 65.535)  # beyond uint16 mm: invalid
    ok = s["valid"][0]
    assert np.abs(s["depth"][0][ok] - depth[ok]).max() <= 0.0005 + 1e-6
    np.testing.assert_allclose(s["intrinsics"], K)
    # split file naming a missing sample
    split = tmp_path / "split.txt"
    split.write_text("x/y\nx/missing\n")
    ds = FolderDepthDataset(tmp_path, split)
    assert ds[0]["name"] == "x/y"
    with pytest.raises(InputError, match=r"missing file .*x/missing\.png \(split line 2 of .*split\.txt: 'x/missing'\)"):
        ds[1]
    # corrupt depth PNG
    (tmp_path / "x/y_depth.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(InputError, match=r"y_depth\.png"):
        FolderDepthDataset(tmp_path)[0]
    # an 8-bit RGB 'depth' is refused
    Image.fromarray(_rgb(4)).save(tmp_path / "x/y_depth.png")
    with pytest.raises(InputError, match="16-bit"):
        FolderDepthDataset(tmp_path)[0]
    with pytest.raises(InputError, match="does not exist"):
        FolderDepthDataset(tmp_path / "nope")


def test_short_split_line_shows_the_expected_form(tmp_path):
    (tmp_path / "s.txt").write_text("a.png b.png\nc.png\n")
    with pytest.raises(InputError, match=r"expected '<rgb> <depth>', got 1 field\(s\): split line 2 of .*s\.txt: 'c\.png'"):
        VirtualKitti2Dataset(tmp_path, tmp_path / "s.txt")
    with pytest.raises(InputError, match=r"expected '<folder> <frame_index> \[l\|r\]', got 1 field\(s\): split line 2"):
        KittiRawSequences(tmp_path, tmp_path / "s.txt")


@pytest.mark.parametrize("cls", [FolderDepthDataset, HypersimDataset, VirtualKitti2Dataset, TartanAirDataset,
                                 KittiRawSequences])
def test_missing_root_names_it_and_the_config_key(tmp_path, cls):
    (tmp_path / "file").write_text("not a folder")
    for root in (tmp_path / "nope", tmp_path / "file"):
        with pytest.raises(InputError, match=f"{root} does not exist or is not a folder — check root: in the config"):
            cls(root)


def test_one_folder_reader_for_training_and_eval(tmp_path):
    """``eval --dataset folder`` opens the training reader; split lines may name a depth file;
    errors name the file and the split file's line."""
    from diffdepth.data.benchmarks import open_benchmark
    from diffdepth.data.folder import write_folder_sample

    depth = np.random.default_rng(2).uniform(0.5, 9, (H, W)).astype(np.float32)
    write_folder_sample(tmp_path, "s/a.v1", _rgb(5), depth)
    _save16(tmp_path / "other/gt.png", np.full((H, W), 2500, np.uint16))
    split = tmp_path / "split.txt"
    split.write_text("# comment\ns/a.v1\n\ns/a.v1.png other/gt.png\ns/b\n")
    ds = open_benchmark("folder", tmp_path, split)
    assert type(ds) is FolderDepthDataset and len(ds) == 3
    assert [item[0] for item in ds.items] == ["s/a.v1", "s/a.v1", "s/b"]  # only an image extension is dropped
    train = FolderDepthDataset(tmp_path, split)[0]
    for key in ("image", "depth", "valid"):
        np.testing.assert_array_equal(ds[0][key], train[key])
    np.testing.assert_array_equal(ds[1]["depth"], np.full((1, H, W), 2.5, np.float32))  # the listed depth file
    with pytest.raises(InputError, match=r"missing file .*s/b\.png \(split line 5 of .*split\.txt: 's/b'\)"):
        ds[2]
    split.write_text("# nothing\n")
    with pytest.raises(InputError, match="lists no samples"):
        open_benchmark("folder", tmp_path, split)


def test_decode_depth_equals_float32_division_for_every_uint16():
    """Benchmarks decoded PNGs as float32 ``v / 1000`` (``v / 256``); the one decoder computes
    ``v * scale`` in float64: equal for every 16-bit count, so eval values did not move."""
    from diffdepth.data.files import decode_depth

    v = np.arange(65536, dtype=np.uint16)
    for units in (1000.0, 256.0, 100.0):
        depth, valid = decode_depth(v, 1.0 / units)
        np.testing.assert_array_equal(depth, v.astype(np.float32) / np.float32(units))
        assert depth.dtype == np.float32 and valid.tolist() == (v > 0).tolist()


def test_resize_is_valid_aware_and_scales_intrinsics():
    depth = np.zeros((1, 8, 8), np.float32)
    depth[0, :4] = 2.0
    depth[0, 4:] = 6.0
    depth[0, 0, 0] = 0.0
    sample = {"image": np.random.default_rng(0).random((3, 8, 8), dtype=np.float32), "depth": depth,
              "valid": depth > 0, "intrinsics": np.array([[8.0, 0, 4], [0, 8, 4], [0, 0, 1]], np.float32)}
    out = resize_sample(dict(sample), (4, 2))
    # nearest on pixel centres: rows 1,3,5,7 and columns 2,6 -> no mixing of 2 m and 6 m, no blur of 0
    np.testing.assert_array_equal(out["depth"][0], [[2, 2], [2, 2], [6, 6], [6, 6]])
    assert out["valid"].all() and out["image"].shape == (3, 4, 2)
    np.testing.assert_allclose(out["intrinsics"], [[2, 0, 1], [0, 4, 2], [0, 0, 1]])
    out = resize_sample(dict(sample), (16, 16))
    assert out["depth"][0, 0, 0] == 0 and not out["valid"][0, 1, 1] and out["valid"][0, 2, 2]
    assert set(np.unique(out["depth"])) == {0.0, 2.0, 6.0}
