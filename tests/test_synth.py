"""diffdepth synth: exact ray-cast depth, layouts that round-trip through the readers,
determinism, and geometric/photometric consistency of camera sequences."""
from __future__ import annotations

import argparse
import hashlib
import math
import time
from pathlib import Path

import numpy as np
import pytest

from diffdepth.data import synth as S
from diffdepth.data.files import kitti_intrinsics, read_rgb, read_uint16_png
from diffdepth.data.folder import FolderDepthDataset
from diffdepth.data.sequences import KittiRawSequences
from diffdepth.errors import InputError


def _K(f, cx, cy):
    return np.array([[f, 0, cx], [0, f, cy], [0, 0, 1.0]])


def _quant(depth, scale):
    """The value a reader must return for a float depth stored as round(depth * scale)."""
    q = np.round(depth.astype(np.float64) * scale)
    q[(q < 1) | (q > 65535)] = 0
    return (q * (1.0 / scale)).astype(np.float32)


# --------------------------------------------------------------------------- exact geometry


def test_ground_plane_and_wall_depth_hand_computed():
    h_cam, f, wall = 1.5, 100.0, 10.0
    scene = S.Scene([S.Plane((0, -1, 0), -h_cam), S.Plane((0, 0, -1), -wall)], [], ambient=1.0)
    cam = S.Camera(_K(f, 32.0, 32.0), np.eye(4), 64, 64)
    r = S.render(scene, cam)
    d = r["depth"]
    # below the horizon the ground: z = h f / (v - cy); otherwise the wall at z = 10
    assert d[63, 5] == pytest.approx(1.5 * 100 / 31, rel=1e-6)
    assert d[50, 40] == pytest.approx(1.5 * 100 / 18, rel=1e-6)
    assert d[40, 0] == pytest.approx(10.0, rel=1e-6)  # ground would be 18.75 m, behind the wall
    assert d[20, 10] == pytest.approx(10.0, rel=1e-6)
    assert d[32, 32] == pytest.approx(10.0, rel=1e-6)  # the horizon row: the ray is parallel to the ground
    assert r["valid"].all()


def test_pitched_camera_and_primitives_hand_computed():
    # camera pitched down by 0.3 rad: the centre ray (0, sin, cos) meets the ground y = 1.5 at t = 1.5 / sin(0.3)
    scene = S.Scene([S.Plane((0, -1, 0), -1.5)], [])
    pose = S.make_pose((0, 0, 0), pitch=0.3)
    r = S.render(scene, S.Camera(_K(50.0, 16.0, 16.0), pose, 33, 33))
    assert r["depth"][16, 16] == pytest.approx(1.5 / math.sin(0.3), rel=1e-6)
    assert not r["valid"][0].any()  # the top row sees the sky: invalid, depth 0
    assert (r["depth"][0] == 0).all()
    # centre ray of an unrotated camera hits the front of each primitive
    K = _K(50.0, 16.0, 16.0)
    for prim, z in [(S.Sphere((0, 0, 5), 1.0), 4.0), (S.Box((-1, -1, 3), (1, 1, 4)), 3.0),
                    (S.Cylinder(0.0, 6.0, 0.5, -1.0, 1.0), 5.5)]:
        rr = S.render(S.Scene([prim], []), S.Camera(K, np.eye(4), 33, 33))
        assert rr["depth"][16, 16] == pytest.approx(z, rel=1e-6), type(prim).__name__
    # a box seen off-centre: its front face z = 3 spans x in [-1, 1], i.e. |u - cx| <= f/3 = 16.7 px;
    # the side faces are invisible from the origin
    box = S.Scene([S.Box((-1, -1, 3), (1, 1, 4))], [])
    rr = S.render(box, S.Camera(_K(50.0, 20.0, 16.0), np.eye(4), 33, 41))
    assert rr["depth"][16, 36] == pytest.approx(3.0, rel=1e-6)  # x = 0.96 at z = 3
    assert rr["depth"][16, 4] == pytest.approx(3.0, rel=1e-6)  # x = -0.96
    assert not rr["valid"][16, 37] and not rr["valid"][16, 3]  # x = +-1.02: misses
    assert rr["depth"][16, 37] == 0


def test_culling_matches_brute_force():
    """Screen-space culling must not change a single pixel."""
    scene, pose = S.make_outdoor_scene(np.random.default_rng([3, 1]))
    K = S.default_intrinsics("outdoor", 40, 96)
    cam = S.Camera(K, pose, 40, 96)
    full = S.render(scene, cam)
    brute = S.render(scene, cam, cull=False)
    np.testing.assert_array_equal(brute["depth"], full["depth"])
    np.testing.assert_array_equal(brute["image"], full["image"])
    v, u = np.mgrid[0:40, 0:96]
    pix = np.stack([u.ravel(), v.ravel()], 1).astype(float) + 0.37  # sub-pixel positions, culled vs not
    pts = S.render(scene, cam, pixels=pix)
    pts_brute = S.render(scene, cam, pixels=pix, cull=False)
    np.testing.assert_array_equal(pts["depth"], pts_brute["depth"])
    assert (pts["depth"] > 0).mean() > 0.5


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("kind", ["indoor", "outdoor"])
def test_folder_layout_roundtrip_exact(tmp_path, kind):
    size, seed = (36, 48), 11
    S.write_dataset(tmp_path, kind, 2, size, seed, "folder")
    ds = FolderDepthDataset(tmp_path)
    assert len(ds) == 2
    for i in range(2):
        ref = S.render_sample(kind, i, seed, size)
        s = ds[i]
        assert s["name"] == f"{kind}_{i:05d}"
        assert s["image"].shape == (3, *size) and s["image"].dtype == np.float32
        d, v = s["depth"][0], s["valid"][0]
        expect = _quant(ref["depth"], 1000.0)
        np.testing.assert_array_equal(d, expect)
        np.testing.assert_array_equal(v, expect > 0)
        # within half a millimetre of the renderer's float depth wherever it is stored
        assert np.abs(d[v] - ref["depth"][v]).max() <= 0.0005 + 1e-6
        # invalid only where the renderer says so or the depth does not fit in uint16 mm
        np.testing.assert_array_equal(v, ref["valid"] & (np.round(ref["depth"] * 1000.0) <= 65535))
        np.testing.assert_array_equal(s["intrinsics"], S.default_intrinsics(kind, *size).astype(np.float32))
        np.testing.assert_array_equal(np.round(s["image"] * 255), np.round(ref["image"].transpose(2, 0, 1) * 255))
    if kind == "outdoor":  # the sky and far street are invalid
        assert not ds[0]["valid"].all()


def test_nyu_layout_files_and_split(tmp_path):
    size, seed = (30, 40), 5
    S.write_dataset(tmp_path, "indoor", 2, size, seed, "nyu")
    lines = (tmp_path / "filename_list_test.txt").read_text().split("\n")
    lines = [ln.split() for ln in lines if ln]
    assert lines[1] == ["test/indoor_0001/rgb_0001.png", "test/indoor_0001/depth_0001.png",
                        "test/indoor_0001/filled_0001.png"]
    for i, (rgb, dep, fil) in enumerate(lines):
        ref = S.render_sample("indoor", i, seed, size)
        raw = read_uint16_png(tmp_path / dep)
        np.testing.assert_array_equal((raw * 1e-3).astype(np.float32), _quant(ref["depth"], 1000.0))
        np.testing.assert_array_equal(read_uint16_png(tmp_path / fil), raw)
        assert read_rgb(tmp_path / rgb).shape == (3, *size)
    K = np.loadtxt(tmp_path / "intrinsics.txt")
    np.testing.assert_allclose(K, S.default_intrinsics("indoor", *size), rtol=1e-9)


def test_kitti_layout_files_and_split(tmp_path):
    size, seed = (30, 100), 6
    S.write_dataset(tmp_path, "outdoor", 2, size, seed, "kitti")
    lines = [ln.split() for ln in (tmp_path / "eigen_test_files_with_gt.txt").read_text().splitlines() if ln]
    d = S.SYNTH_DATE
    assert lines[0][:2] == [f"{d}/{d}_drive_0000_sync/image_02/data/0000000000.png",
                            f"{d}_drive_0000_sync/proj_depth/groundtruth/image_02/0000000000.png"]
    K = S.default_intrinsics("outdoor", *size)
    assert float(lines[0][2]) == pytest.approx(K[0, 0], abs=1e-4)
    np.testing.assert_allclose(kitti_intrinsics(tmp_path / d / "calib_cam_to_cam.txt"), K, rtol=1e-11)
    for i, (rgb, dep, _) in enumerate(lines):
        ref = S.render_sample("outdoor", i, seed, size)
        raw = read_uint16_png(tmp_path / dep)
        np.testing.assert_array_equal((raw / 256.0).astype(np.float32), _quant(ref["depth"], 256.0))
        ok = raw > 0
        assert np.abs(raw[ok] / 256.0 - ref["depth"][ok]).max() <= 1 / 512 + 1e-6


def test_layouts_read_by_benchmark_readers(tmp_path):
    """The NYUv2 / KittiEigen / folder benchmark readers consume synth output."""
    import diffdepth.data.benchmarks as bm
    size, seed = (30, 40), 2
    S.write_dataset(tmp_path / "nyu", "indoor", 2, size, seed, "nyu")
    S.write_dataset(tmp_path / "kitti", "outdoor", 2, size, seed, "kitti")
    S.write_dataset(tmp_path / "folder", "indoor", 2, size, seed, "folder")
    nyu = bm.NYUv2(tmp_path / "nyu", tmp_path / "nyu" / "filename_list_test.txt")
    kit = bm.KittiEigen(tmp_path / "kitti", tmp_path / "kitti" / "eigen_test_files_with_gt.txt")
    fol = bm.open_benchmark("folder", tmp_path / "folder")
    for i in range(2):
        ref_in = S.render_sample("indoor", i, seed, size)["depth"]
        ref_out = S.render_sample("outdoor", i, seed, size)["depth"]
        np.testing.assert_allclose(nyu[i]["depth"][0], _quant(ref_in, 1000.0), rtol=1e-6)
        np.testing.assert_allclose(fol[i]["depth"][0], _quant(ref_in, 1000.0), rtol=1e-6)
        np.testing.assert_allclose(kit[i]["depth"][0], _quant(ref_out, 256.0), rtol=1e-6)


# --------------------------------------------------------------------------- determinism, speed, CLI


def _digest(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_from_seed(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        S.write_dataset(tmp_path / name / "still", "outdoor", 2, (24, 40), seed, "folder")
        S.write_dataset(tmp_path / name / "seq", "sequence", 3, (24, 64), seed)
    a, b, c = (_digest(tmp_path / n) for n in "abc")
    assert a == b and len(a) == 6 + 9 + 7  # 2x(png, depth, K); 3x(rgb, depth, scan); 2 calib, poses, 4 splits
    assert a.keys() == c.keys()
    differ = [k for k in a if a[k] != c[k] and k.endswith(".png")]
    assert len(differ) == sum(k.endswith(".png") for k in a)  # every image differs with another seed


def test_speed_256_frame_reported():
    for kind in ("indoor", "outdoor"):
        S.render_sample(kind, 0, 0, (64, 64))  # warm up imports
        t0, c0 = time.perf_counter(), time.process_time()
        r = S.render_sample(kind, 1, 0, (256, 256))
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        print(f"\nsynth {kind} 256x256 frame: {dc * 1000:.0f} ms CPU, {dt * 1000:.0f} ms wall (shared machine)")
        # the same scene at 4x resolution: K scales by 4 (exact in floating point), so pixel
        # (4i, 4j) of the 256 frame casts the very ray of pixel (i, j) of the 64 frame
        small = S.render_sample(kind, 1, 0, (64, 64))
        for key in ("depth", "image", "valid", "ids"):
            np.testing.assert_array_equal(r[key][::4, ::4], small[key], err_msg=key)
        assert len(np.unique(r["ids"][r["valid"]])) >= 5  # a scene, not a blank frame
        d = r["depth"][r["valid"]]
        assert d.min() > 0.5 and d.max() / d.min() > 3 and r["valid"].mean() > 0.8


def test_command_runs_and_rejects_bad_layout(tmp_path, capsys):
    from diffdepth.commands import synth as cmd

    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    assert cmd.run(p.parse_args([str(tmp_path / "o"), "--kind", "indoor", "--n", "1", "--size", "16x24",
                                 "--quiet"])) == 0
    assert (tmp_path / "o" / "indoor_00000_depth.png").is_file()
    assert '"seconds_per_frame"' in capsys.readouterr().out
    with pytest.raises(InputError):
        cmd.run(p.parse_args([str(tmp_path / "s"), "--kind", "sequence", "--layout", "nyu", "--quiet"]))
    with pytest.raises(SystemExit):
        p.parse_args([str(tmp_path), "--size", "12by4"])


# --------------------------------------------------------------------------- sequences


def _bilinear(img, u, v):
    """img [H,W] or [H,W,C] sampled at float (u, v) with integer pixel centres."""
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    a, b = (u - u0), (v - v0)
    if img.ndim == 3:
        a, b = a[:, None], b[:, None]
    return ((1 - a) * (1 - b) * img[v0, u0] + a * (1 - b) * img[v0, u0 + 1]
            + (1 - a) * b * img[v0 + 1, u0] + a * b * img[v0 + 1, u0 + 1])


def _warp(depth, K, T_src_to_dst):
    """Pixels with depth > 0 of one frame -> (u, v) and z in another frame."""
    v, u = np.nonzero(depth > 0)
    z = depth[v, u].astype(np.float64)
    X = np.linalg.inv(K) @ np.stack([u, v, np.ones_like(u)]).astype(np.float64) * z  # [3,N]
    Y = T_src_to_dst[:3, :3] @ X + T_src_to_dst[:3, 3:]
    p = K @ Y
    return (u, v), p[0] / p[2], p[1] / p[2], Y[2]


def test_sequence_frames_are_geometrically_consistent():
    """Back-project frame t with K, move by the known relative pose, project into t+1: a
    re-rendered ray through that sub-pixel position has exactly the predicted depth
    (except where the point is occluded or leaves the view)."""
    n, (h, w) = 4, (48, 160)
    scene, poses = S.make_sequence(np.random.default_rng([9, 0]), n)
    np.testing.assert_array_equal(poses[0], np.eye(4))
    K = S.default_intrinsics("outdoor", h, w)
    for t in range(n - 1):
        r = S.render(scene, S.Camera(K, poses[t], h, w))
        T = np.linalg.inv(poses[t + 1]) @ poses[t]
        _, u2, v2, z2 = _warp(np.where(r["valid"], r["depth64"], 0), K, T)
        inside = (z2 > 0) & (u2 >= 0) & (u2 <= w - 1) & (v2 >= 0) & (v2 <= h - 1)
        rr = S.render(scene, S.Camera(K, poses[t + 1], h, w), pixels=np.stack([u2[inside], v2[inside]], 1))
        rel = np.abs(rr["depth64"] - z2[inside]) / z2[inside]
        assert inside.mean() > 0.7
        assert (rel < 1e-6).mean() > 0.9, (t, (rel < 1e-6).mean())
        # reading the poses as world-to-camera (moving the wrong way) breaks it
        if t == 0:
            # the shared torch geometry (used by the self-supervised warping) agrees with this warp
            import torch

            from diffdepth.geometry import backproject, project

            dep = torch.from_numpy(np.where(r["valid"], r["depth64"], 0.0))[None, None]
            X = backproject(dep, torch.from_numpy(np.linalg.inv(K))[None])
            pix, zt = project(X, torch.from_numpy(K)[None], torch.from_numpy(T)[None], eps=0.0)
            m = torch.from_numpy(r["valid"].reshape(-1))
            np.testing.assert_allclose(pix[0, 0, m].numpy(), u2, rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(zt[0, 0, m].numpy(), z2, rtol=1e-12)
            _, u3, v3, z3 = _warp(np.where(r["valid"], r["depth64"], 0), K, np.linalg.inv(T))
            ok3 = (z3 > 0) & (u3 >= 0) & (u3 <= w - 1) & (v3 >= 0) & (v3 <= h - 1)
            r3 = S.render(scene, S.Camera(K, poses[t + 1], h, w), pixels=np.stack([u3[ok3], v3[ok3]], 1))
            assert (np.abs(r3["depth64"] - z3[ok3]) / z3[ok3] < 1e-6).mean() < 0.5


def test_sequence_on_disk_consistent_through_reader(tmp_path):
    """Same check through the files: KittiRawSequences (frames, K, poses, depth of t) and
    the stored depth of t+1 (uint16 / 256); inverse depth is affine in pixels on planes,
    so its bilinear interpolation is exact away from edges. Colours match too (Lambertian,
    world-space textures)."""
    n, (h, w), seed = 5, (48, 160), 21
    S.write_dataset(tmp_path, "sequence", n, (h, w), seed)
    d = S.SYNTH_DATE
    drive = f"{d}/{d}_drive_0000_sync"
    train = (tmp_path / "train_files.txt").read_text().split()
    val = (tmp_path / "val_files.txt").read_text().split()
    assert train[:3] == [drive, "1", "l"] and len(train) + len(val) == 3 * (n - 2)
    ds = KittiRawSequences(tmp_path, tmp_path / "train_files.txt", size=None)
    s = ds[0]
    assert s["frame_ids"] == [0, -1, 1] and s["frames"].shape == (3, 3, h, w)
    K = s["intrinsics"].astype(np.float64)
    np.testing.assert_allclose(K, S.default_intrinsics("outdoor", h, w), rtol=1e-6)
    _, ref_poses = S.make_sequence(np.random.default_rng([seed, 0]), n)
    np.testing.assert_allclose(s["poses"], np.stack([ref_poses[1], ref_poses[0], ref_poses[2]]), atol=1e-6)
    scene, _ = S.make_sequence(np.random.default_rng([seed, 0]), n)
    ref = S.render(scene, S.Camera(S.default_intrinsics("outdoor", h, w), ref_poses[1], h, w))
    np.testing.assert_array_equal(s["depth"][0], _quant(ref["depth"], 256.0))
    # frame t = 1 -> t + 1 = 2
    T = np.linalg.inv(s["poses"][2].astype(np.float64)) @ s["poses"][0].astype(np.float64)
    (u1, v1), u2, v2, z2 = _warp(s["depth"][0], K, T)
    depth2 = read_uint16_png(tmp_path / drive / "proj_depth/groundtruth/image_02/0000000002.png") / 256.0
    inside = (z2 > 0) & (u2 >= 0) & (u2 < w - 1) & (v2 >= 0) & (v2 < h - 1)
    u1, v1, u2, v2, z2 = u1[inside], v1[inside], u2[inside], v2[inside], z2[inside]
    u0, v0 = np.floor(u2).astype(int), np.floor(v2).astype(int)
    nb = np.stack([depth2[v0, u0], depth2[v0, u0 + 1], depth2[v0 + 1, u0], depth2[v0 + 1, u0 + 1]], 1)
    smooth = (nb.min(1) > 0) & (nb.max(1) < nb.min(1) * 1.05)
    inv = np.where(depth2 > 0, 1.0 / np.maximum(depth2, 1e-9), 0.0)
    z_disk = 1.0 / _bilinear(inv, u2[smooth], v2[smooth])
    rel = np.abs(z_disk - z2[smooth]) / z2[smooth]
    assert smooth.mean() > 0.6
    assert np.median(rel) < 2e-3 and (rel < 0.01).mean() > 0.9
    # photometric consistency of the stored frames on the same pixels
    img1 = s["frames"][0].transpose(1, 2, 0)
    img2 = s["frames"][2].transpose(1, 2, 0)
    diff = np.abs(_bilinear(img2, u2[smooth], v2[smooth]) - img1[v1[smooth], u1[smooth]]).mean(1)
    assert np.median(diff) < 0.03
    # ... and a frame that is not the neighbour does not match as well
    diff_wrong = np.abs(_bilinear(img1, u2[smooth], v2[smooth]) - img1[v1[smooth], u1[smooth]]).mean(1)
    assert np.median(diff_wrong) > np.median(diff)


def test_sequence_velodyne_scans_lie_on_the_scene(tmp_path):
    """The simulated scans, projected with the written calibration files exactly as the KITTI
    devkit does (P_rect_02 R_rect_00 [R|T]), land on the rendered surfaces of image_02."""
    from diffdepth.data.sequences import read_kitti_calib

    n, (h, w), seed = 3, (48, 160), 4
    S.write_dataset(tmp_path, "sequence", n, (h, w), seed)
    d = S.SYNTH_DATE
    drive = f"{d}/{d}_drive_0000_sync"
    assert (tmp_path / "test_files.txt").read_text().splitlines()[2] == f"{drive} 2 l"
    c2c = read_kitti_calib(tmp_path / d / "calib_cam_to_cam.txt")
    v2c = read_kitti_calib(tmp_path / d / "calib_velo_to_cam.txt")
    RT = np.eye(4)
    RT[:3, :3], RT[:3, 3] = v2c["R"].reshape(3, 3), v2c["T"]
    Rr = np.eye(4)
    Rr[:3, :3] = c2c["R_rect_00"].reshape(3, 3)
    P = c2c["P_rect_02"].reshape(3, 4) @ Rr @ RT
    pts = np.fromfile(tmp_path / drive / "velodyne_points/data/0000000001.bin", dtype="<f4").reshape(-1, 4)
    assert len(pts) > 3000 and (np.linalg.norm(pts[:, :3], axis=1) <= 120.0 + 1e-3).all()
    proj = np.concatenate([pts[:, :3].astype(np.float64), np.ones((len(pts), 1))], 1) @ P.T
    u, v, z = proj[:, 0] / proj[:, 2], proj[:, 1] / proj[:, 2], proj[:, 2]
    np.testing.assert_allclose(z, pts[:, 0], rtol=1e-5)  # velodyne x is camera-2 depth
    scene, poses = S.make_sequence(np.random.default_rng([seed, 0]), n)
    rr = S.render(scene, S.Camera(S.default_intrinsics("outdoor", h, w), poses[1], h, w),
                  pixels=np.stack([u, v], 1))
    rel = np.abs(rr["depth64"] - z) / z
    assert (rel < 1e-4).mean() > 0.99  # (float32 storage; a few grazing rays may slip off an edge)
    inside = (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1)
    assert inside.mean() > 0.5
    # the evaluation engineer's Monodepth2-protocol reader consumes the same files
    import diffdepth.data.benchmarks as bm
    sample = bm.KittiVelodyne(tmp_path, tmp_path / "test_files.txt")[1]
    gt = sample["depth"][0]
    dense = read_uint16_png(tmp_path / drive / "proj_depth/groundtruth/image_02/0000000001.png") / 256.0
    r, c = np.nonzero(gt)
    ok = (r + 1 < h) & (c + 1 < w)
    ref = dense[r[ok] + 1, c[ok] + 1]  # the devkit stores the point at round(u) - 1, round(v) - 1
    good = ref > 0
    assert good.sum() > 300
    assert np.median(np.abs(gt[r[ok], c[ok]][good] - ref[good]) / ref[good]) < 0.01


def test_impossible_requests_are_one_line_input_errors_and_value_errors(tmp_path):
    for kwargs, message in ((dict(kind="sequence", n=2), "--n 2 is too small (need >= 3)"),
                            (dict(kind="indoor", n=0), "--n 0 is too small (need >= 1)"),
                            (dict(kind="sequence", n=3, layout="pseudo"),
                             "--kind sequence is written in the KITTI-raw-like layout only; drop --layout pseudo")):
        with pytest.raises(InputError) as err:
            S.write_dataset(tmp_path, size=(16, 16), seed=0, **kwargs)
        assert str(err.value) == message and isinstance(err.value, ValueError)  # the trainer's ConfigError path
    assert not any(tmp_path.iterdir())
