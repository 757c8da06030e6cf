"""Writers of the dataset layouts of ``diffdepth synth`` (folder, NYUv2, KITTI Eigen, pseudo-label
folder, KITTI-raw-like sequence); see :func:`write_dataset`."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np
from PIL import Image

from ...errors import InputError
from ...utils import atomic_path
from ..folder import encode_depth_uint16, write_folder_sample, write_matrix, write_png16, write_rgb, write_text
from .geometry import Camera
from .rendering import lidar_scan, render
from .scenes import default_intrinsics, make_sequence, render_sample

#: date folder used for KITTI-like layouts (an obviously synthetic date in KITTI's pattern)
SYNTH_DATE = "2000_01_01"
KINDS = ("indoor", "outdoor", "sequence")
LAYOUTS = ("folder", "nyu", "kitti", "pseudo")
#: default image size per layout (NYUv2 and KITTI raw sizes, so the protocol crops apply)
DEFAULT_SIZES = {"folder": (256, 256), "pseudo": (256, 256), "nyu": (480, 640), "kitti": (375, 1242), "sequence": (192, 640)}
#: KITTI stereo rig offsets (metres, along camera x) written into calib_cam_to_cam.txt for
#: cameras 0-3 (grey left/right, colour left/right), approximately those of the real rig
_KITTI_CAM_X = (0.0, -0.54, 0.06, -0.47)


def drive_name(index: int, date: str = SYNTH_DATE) -> str:
    return f"{date}_drive_{index:04d}_sync"


def _fmt(values) -> str:
    return " ".join(f"{float(v):.12e}" for v in np.asarray(values).ravel())


def kitti_calib_text(K: np.ndarray, width: int, height: int) -> str:
    """``calib_cam_to_cam.txt`` in the KITTI raw format for a rectified rig whose four
    cameras share ``K`` (R = R_rect = I, D = 0); P_rect_0i = K [I | t_i], with
    t_i = (x_i, 0, 0) so that P_rect_0i[0,3] = fx * x_i as in KITTI."""
    lines = ["calib_time: 01-Jan-2000 00:00:00", f"corner_dist: {_fmt([0.0995])}"]
    K = np.asarray(K, dtype=np.float64)
    for i, x in enumerate(_KITTI_CAM_X):
        P = np.zeros((3, 4))
        P[:, :3] = K
        P[:, 3] = K @ np.array([x, 0.0, 0.0])
        lines += [f"S_{i:02d}: {_fmt([width, height])}", f"K_{i:02d}: {_fmt(K)}", f"D_{i:02d}: {_fmt(np.zeros(5))}",
                  f"R_{i:02d}: {_fmt(np.eye(3))}", f"T_{i:02d}: {_fmt([x, 0.0, 0.0])}",
                  f"S_rect_{i:02d}: {_fmt([width, height])}", f"R_rect_{i:02d}: {_fmt(np.eye(3))}",
                  f"P_rect_{i:02d}: {_fmt(P)}"]
    return "\n".join(lines) + "\n"


#: Velodyne -> camera-0 rotation: velodyne x forward, y left, z up; camera x right, y down, z forward
VELO_TO_CAM_R = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])


def kitti_velo_calib_text() -> str:
    """``calib_velo_to_cam.txt`` for a scanner at the centre of camera 2 (the rendered camera):
    X_cam0 = R X_velo + T with T = -(camera-2 offset), so that P_rect_02 R_rect_00 [R|T]
    maps a scan point to its pixel in image_02 and velodyne x equals camera-2 depth."""
    T = np.array([-_KITTI_CAM_X[2], 0.0, 0.0])
    return (f"calib_time: 01-Jan-2000 00:00:00\nR: {_fmt(VELO_TO_CAM_R)}\nT: {_fmt(T)}\n"
            f"delta_f: {_fmt([0, 0])}\ndelta_c: {_fmt([0, 0])}\n")


def write_dataset(out, kind: str, n: int, size: Optional[Tuple[int, int]], seed: int, layout: Optional[str] = None,
                  progress: bool = False) -> Dict:
    """Render ``n`` samples (``sequence``: ``n`` frames) of ``size`` (None: :data:`DEFAULT_SIZES`)
    and write them under ``out``.

    Layouts (paths relative to ``out``):

    ``folder`` (default for indoor/outdoor; read by :class:`diffdepth.data.folder.FolderDepthDataset`)
        ``<kind>_<i:05d>.png``, ``<kind>_<i:05d>_depth.png`` (uint16 mm, 0 = invalid, depths
        above 65.535 m invalid), ``<kind>_<i:05d>_K.txt``.
    ``nyu`` (Marigold's NYUv2 extraction)
        ``test/<kind>_<i:04d>/rgb_<i:04d>.png``, ``depth_<i:04d>.png`` (uint16 mm),
        ``filled_<i:04d>.png`` (same as depth: the synthetic depth is complete); split file
        ``filename_list_test.txt`` with lines ``<rgb> <depth> <filled>``; ``intrinsics.txt``.
    ``pseudo`` (a pseudo-label folder for PrimeDepth pre-training, read by
    :class:`diffdepth.data.pseudo.PseudoLabelDataset`; the exact depth plays the teacher)
        ``images/<kind>_<i:05d>.png``, ``depth/<kind>_<i:05d>.npy`` (float32 metres, 0 = invalid),
        ``segmentation/<kind>_<i:05d>.png`` (8-bit primitive index as class id, 255 = sky or index
        >= 150), ``captions/<kind>_<i:05d>.txt``, ``labels.json`` (``depth_kind: depth``).
    ``kitti`` (Marigold's KITTI Eigen layout)
        ``<date>/<date>_drive_0000_sync/image_02/data/<i:010d>.png``,
        ``<date>_drive_0000_sync/proj_depth/groundtruth/image_02/<i:010d>.png`` (uint16, m x 256),
        ``<date>/calib_cam_to_cam.txt``; split ``eigen_test_files_with_gt.txt`` with lines
        ``<rgb> <depth> <focal>``; ``intrinsics.txt``.
    ``sequence`` (always KITTI-raw-like; read by :class:`diffdepth.data.sequences.KittiRawSequences`)
        ``<date>/calib_cam_to_cam.txt``, ``<date>/<drive>/image_02/data/<i:010d>.png``,
        ``<date>/<drive>/proj_depth/groundtruth/image_02/<i:010d>.png`` (dense, uint16, m x 256,
        0 = invalid/sky/> 80 m; where the KITTI depth benchmark's annotated depth is found),
        ``<date>/<drive>/velodyne_points/data/<i:010d>.bin`` (simulated 64-beam scan, float32
        x,y,z,reflectance) with ``<date>/calib_velo_to_cam.txt``,
        ``<date>/<drive>/poses.txt`` (camera-to-world 3x4 per frame, row-major, frame 0 = I);
        Monodepth2 splits ``train_files.txt``/``val_files.txt`` (``<date>/<drive> <i> l``,
        frames with both neighbours; the 3rd of every 5 such frames goes to val), ``test_files.txt``
        (every frame, same format: Monodepth2's Velodyne and improved-GT protocols) and
        ``test_files_with_gt.txt`` (Marigold KITTI format ``<rgb> <depth> <focal>``, every frame).

    Returns a summary dict (paths, counts, seconds per frame).
    """
    layout = _check_request(kind, n, layout)
    size = tuple(size or DEFAULT_SIZES["sequence" if kind == "sequence" else layout])
    out = Path(out)
    summary: Dict = {"out": str(out), "kind": kind, "layout": layout, "n": n, "size": list(size), "seed": seed}
    frames = _Frames(n, f"synth {kind}", progress)
    try:
        if kind == "sequence":
            summary.update(_write_sequence(out, n, size, seed, frames))
        else:
            summary.update(_write_stills(out, kind, n, size, seed, layout, frames))
    finally:
        frames.bar.close()
    summary["seconds_per_frame"] = frames.seconds / n
    return summary


class RequestError(InputError, ValueError):
    """An impossible ``write_dataset`` request (a one-line CLI error; a ValueError to callers)."""


def _check_request(kind: str, n: int, layout: Optional[str]) -> str:
    """The layout to write (the kind's default when None); :class:`RequestError` for an impossible request."""
    if kind not in KINDS:
        raise RequestError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    if layout is None:
        layout = "kitti" if kind == "sequence" else "folder"
    if layout not in LAYOUTS:
        raise RequestError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if kind == "sequence" and layout != "kitti":
        raise RequestError(f"--kind sequence is written in the KITTI-raw-like layout only; drop --layout {layout}")
    if n < (3 if kind == "sequence" else 1):  # a sequence: a target frame and its two neighbours
        raise RequestError(f"--n {n} is too small (need >= {3 if kind == 'sequence' else 1})")
    return layout


class _Frames:
    """``frames(render_one)`` yields ``(i, render_one(i))`` for i < n, timing the rendering (not the
    writing) in ``seconds`` and advancing a progress bar once each sample is written."""

    def __init__(self, n: int, desc: str, progress: bool):
        from tqdm import tqdm

        self.n, self.seconds = n, 0.0
        # disable=None: no bar when stderr is not a terminal
        self.bar = tqdm(total=n, desc=desc, disable=None if progress else True, leave=False)

    def __call__(self, render_one: Callable[[int], Dict[str, np.ndarray]]):
        for i in range(self.n):
            t0 = time.perf_counter()
            r = render_one(i)
            self.seconds += time.perf_counter() - t0
            yield i, r
            self.bar.update(1)


def _write_sequence(out: Path, n: int, size: Tuple[int, int], seed: int, frames: _Frames) -> Dict:
    """The ``sequence`` layout (see :func:`write_dataset`); returns the split sizes."""
    h, w = size
    date, drive = SYNTH_DATE, drive_name(0)
    scene, poses = make_sequence(np.random.default_rng([int(seed), 0]), n)
    K = default_intrinsics("outdoor", h, w)
    write_text(out / date / "calib_cam_to_cam.txt", kitti_calib_text(K, w, h))
    write_text(out / date / "calib_velo_to_cam.txt", kitti_velo_calib_text())
    drive_dir = out / date / drive
    cameras = [Camera(K, pose, h, w) for pose in poses]
    gt_lines = []
    for i, r in frames(lambda i: render(scene, cameras[i])):
        write_rgb(drive_dir / "image_02" / "data" / f"{i:010d}.png", r["image"])
        gt_rel = f"{date}/{drive}/proj_depth/groundtruth/image_02/{i:010d}.png"
        write_png16(out / gt_rel, encode_depth_uint16(r["depth"], 256.0))
        with atomic_path(drive_dir / "velodyne_points" / "data" / f"{i:010d}.bin") as tmp:
            lidar_scan(scene, cameras[i]).astype("<f4").tofile(tmp)
        gt_lines.append(f"{date}/{drive}/image_02/data/{i:010d}.png {gt_rel} {K[0, 0]:.4f}")
    write_text(drive_dir / "poses.txt", "".join(_fmt(P[:3]) + "\n" for P in poses))
    inner = list(range(1, n - 1))
    val = [i for j, i in enumerate(inner) if j % 5 == 2]
    train = [i for i in inner if i not in set(val)]
    for name, ids in (("train_files.txt", train), ("val_files.txt", val), ("test_files.txt", range(n))):
        write_text(out / name, "".join(f"{date}/{drive} {i} l\n" for i in ids))
    write_text(out / "test_files_with_gt.txt", "\n".join(gt_lines) + "\n")
    return {"train": len(train), "val": len(val)}


def _write_stills(out: Path, kind: str, n: int, size: Tuple[int, int], seed: int, layout: str,
                  frames: _Frames) -> Dict:
    """The still-scene layouts (folder, nyu, kitti, pseudo); returns the split file, if any."""
    h, w = size
    K = default_intrinsics(kind, h, w)
    if layout == "kitti":
        write_text(out / SYNTH_DATE / "calib_cam_to_cam.txt", kitti_calib_text(K, w, h))
    write_sample, split_name = _STILL_LAYOUTS[layout]
    lines = [write_sample(out, kind, i, r) for i, r in frames(lambda i: render_sample(kind, i, seed, (h, w)))]
    if layout == "pseudo":
        write_text(out / "labels.json", json.dumps({"depth_kind": "depth", "teacher": "diffdepth synth (exact depth)"}) + "\n")
    if split_name is None:
        return {}
    write_text(out / split_name, "\n".join(lines) + "\n")
    write_matrix(out / "intrinsics.txt", K)
    return {"split_file": str(out / split_name)}


def _folder_sample(out: Path, kind: str, i: int, r: Dict[str, np.ndarray]) -> None:
    write_folder_sample(out, f"{kind}_{i:05d}", r["image"], r["depth"], r["K"])


def _pseudo_sample(out: Path, kind: str, i: int, r: Dict[str, np.ndarray]) -> None:
    name = f"{kind}_{i:05d}"
    write_rgb(out / "images" / f"{name}.png", r["image"])
    with atomic_path(out / "depth" / f"{name}.npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.where(r["valid"], r["depth"], 0.0).astype(np.float32))
    ids = r["ids"]
    seg = np.where((ids >= 0) & (ids < 150), ids, 255).astype(np.uint8)
    with atomic_path(out / "segmentation" / f"{name}.png") as tmp:
        Image.fromarray(seg, "L").save(tmp)
    n_obj = len(np.unique(ids[ids >= 0]))
    what = "room" if kind == "indoor" else "street"
    write_text(out / "captions" / f"{name}.txt", f"a rendered {what} with {n_obj} visible surfaces\n")


def _nyu_sample(out: Path, kind: str, i: int, r: Dict[str, np.ndarray]) -> str:
    rgb, dep, fil = (f"test/{kind}_{i:04d}/{p}_{i:04d}.png" for p in ("rgb", "depth", "filled"))
    write_rgb(out / rgb, r["image"])
    q = encode_depth_uint16(r["depth"], 1000.0)
    write_png16(out / dep, q)
    write_png16(out / fil, q)
    return f"{rgb} {dep} {fil}"


def _kitti_sample(out: Path, kind: str, i: int, r: Dict[str, np.ndarray]) -> str:
    drive = drive_name(0)
    rgb = f"{SYNTH_DATE}/{drive}/image_02/data/{i:010d}.png"
    dep = f"{drive}/proj_depth/groundtruth/image_02/{i:010d}.png"
    write_rgb(out / rgb, r["image"])
    write_png16(out / dep, encode_depth_uint16(r["depth"], 256.0))
    return f"{rgb} {dep} {r['K'][0, 0]:.4f}"


#: still layout -> (writer of one sample ``(out, kind, index, rendering) -> split line``, split file)
_STILL_LAYOUTS = {"folder": (_folder_sample, None), "pseudo": (_pseudo_sample, None),
                  "nyu": (_nyu_sample, "filename_list_test.txt"),
                  "kitti": (_kitti_sample, "eigen_test_files_with_gt.txt")}
