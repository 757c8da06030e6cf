"""Reading sparse metric anchors (known depths at a few pixels) for ``diffdepth align`` and
``predict --align-to``. Every reader returns a float32 map [H,W] in metres, 0 = no anchor.

Formats (by extension):

``.npy``   a float map [H,W] of depths in metres; 0, NaN and ±inf mean "no anchor".
``.png``   a 16-bit single-channel PNG; value / 1000 (millimetres, the default) or value / 256
           (KITTI depth annotations: ``png_scale=256``); 0 = no anchor.
``.csv``   rows ``x,y,depth`` (pixel column, pixel row, metres; an optional header line);
           coordinates are rounded to the nearest pixel of the prediction; the last row wins.
``.bin``   a KITTI Velodyne scan (float32 x,y,z,reflectance), projected into camera 2 with
           ``calib_cam_to_cam.txt`` and ``calib_velo_to_cam.txt`` exactly as the KITTI
           evaluation does (:func:`diffdepth.data.benchmarks.velodyne_depth_map`); the calibration
           folder is ``calib`` or, by default, the nearest parent folder of the scan holding both files.

A map of another size than the prediction has its anchor pixels moved to the prediction's grid
(pixel centres scaled, nearest pixel; the nearest anchor wins where two land on one pixel).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from ..errors import InputError
from ..utils import PathLike
from .files import decode_depth, load_velodyne, read_kitti_calib, read_npy, read_uint16_png

ANCHOR_EXTENSIONS = (".npy", ".png", ".csv", ".bin")
PNG_SCALES = {"mm": 1000.0, "kitti": 256.0}
KITTI_CALIB = ("calib_cam_to_cam.txt", "calib_velo_to_cam.txt")


def _clean(depth: np.ndarray) -> np.ndarray:
    d = np.asarray(depth, dtype=np.float32)
    return np.where(np.isfinite(d) & (d > 0), d, np.float32(0))


def read_npy_anchors(path: PathLike) -> np.ndarray:
    arr = np.squeeze(read_npy(path))
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"anchors {path} hold a {arr.dtype} array of shape {arr.shape}; expected a float map [H,W]")
    return _clean(arr)


def read_png_anchors(path: PathLike, scale: float = 1000.0) -> np.ndarray:
    """16-bit PNG: depth in mm (``scale`` 1000) or KITTI's depth×256 (``--png-scale kitti``);
    8-bit PNGs (which dataset readers accept) are refused: they cannot hold depths in mm."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            mode = im.mode
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read anchors {path} ({err})") from None
    if mode not in ("I;16", "I;16B", "I;16L", "I"):
        raise InputError(f"anchors {path} are a {mode} PNG; expected a single-channel 16-bit PNG "
                         f"(depth in mm, or KITTI's depth×256 with --png-scale kitti)")
    return decode_depth(read_uint16_png(path), 1.0 / scale)[0]


def read_csv_anchors(path: PathLike, shape: Tuple[int, int]) -> np.ndarray:
    path = Path(path)
    h, w = shape
    out = np.zeros((h, w), np.float32)
    try:
        rows = list(csv.reader(path.read_text().splitlines()))
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read anchors {path} ({err})") from None
    for i, row in enumerate(rows, 1):
        cells = [c.strip() for c in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        try:
            x, y, d = (float(c) for c in cells[:3]) if len(cells) >= 3 else (None, None, None)
        except ValueError:
            if i == 1:  # a header line
                continue
            raise InputError(f"{path} line {i}: {','.join(row)!r} is not x,y,depth numbers") from None
        if x is None:
            raise InputError(f"{path} line {i}: expected x,y,depth, got {len(cells)} value(s)")
        c, r = int(round(x)), int(round(y))
        if not (0 <= c < w and 0 <= r < h):
            raise InputError(f"{path} line {i}: pixel ({x}, {y}) lies outside the {w}x{h} prediction")
        if np.isfinite(d) and d > 0:
            out[r, c] = d
    return out


def find_kitti_calib(scan: Path, calib: Optional[PathLike] = None) -> Path:
    if calib is not None:
        folder = Path(calib).expanduser()
        if not all((folder / n).is_file() for n in KITTI_CALIB):
            raise InputError(f"--calib {folder} lacks {' or '.join(KITTI_CALIB)}")
        return folder
    for parent in list(scan.resolve().parents)[:5]:
        if all((parent / n).is_file() for n in KITTI_CALIB):
            return parent
    raise InputError(f"no {KITTI_CALIB[0]} + {KITTI_CALIB[1]} found above {scan}; give the folder with --calib")


def read_velodyne_anchors(path: PathLike, calib: Optional[PathLike] = None) -> np.ndarray:
    from .benchmarks import velodyne_depth_map

    path = Path(path)
    folder = find_kitti_calib(path, calib)
    cam2cam = read_kitti_calib(folder / KITTI_CALIB[0])
    velo2cam = read_kitti_calib(folder / KITTI_CALIB[1])
    try:
        return _clean(velodyne_depth_map(load_velodyne(path), cam2cam, velo2cam, cam=2, velo_depth=True))
    except KeyError as err:
        raise InputError(f"calibration in {folder} lacks the key {err}") from None


def to_shape(anchors: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """Move the anchor pixels of a map of another size onto a ``shape`` grid (pixel centres scaled)."""
    a = np.asarray(anchors, dtype=np.float32)
    if a.shape == tuple(shape):
        return a
    h, w = a.shape
    H, W = shape
    ys, xs = np.nonzero(a > 0)
    d = a[ys, xs]
    r = np.clip(np.floor((ys + 0.5) * H / h).astype(np.int64), 0, H - 1)
    c = np.clip(np.floor((xs + 0.5) * W / w).astype(np.int64), 0, W - 1)
    out = np.full(H * W, np.inf, np.float32)
    np.minimum.at(out, r * W + c, d)
    out[~np.isfinite(out)] = 0
    return out.reshape(H, W)


def read_anchors(path: PathLike, shape: Tuple[int, int], *, png_scale: float = 1000.0,
                 calib: Optional[PathLike] = None) -> np.ndarray:
    """Anchors from ``path`` as a float32 map of ``shape`` (the prediction's), metres, 0 = none."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"anchors file {path} does not exist")
    ext = path.suffix.lower()
    if ext == ".npy":
        a = read_npy_anchors(path)
    elif ext == ".png":
        a = read_png_anchors(path, png_scale)
    elif ext == ".csv":
        return read_csv_anchors(path, shape)
    elif ext == ".bin":
        a = read_velodyne_anchors(path, calib)
    else:
        raise InputError(f"anchors {path}: unknown format {ext or '(no extension)'}; use "
                         f"{', '.join(ANCHOR_EXTENSIONS)}")
    return to_shape(a, shape)


def find_anchor_file(folder: Path, rel: str) -> Optional[Path]:
    """The anchors of the prediction ``rel`` (relative path without extension): ``folder/rel.<ext>``;
    None when there is none. Two candidates are an error (which one is meant is unclear)."""
    found = [folder / f"{rel}{ext}" for ext in ANCHOR_EXTENSIONS if (folder / f"{rel}{ext}").is_file()]
    if len(found) > 1:
        raise InputError(f"several anchor files for {rel}: {', '.join(p.name for p in found)}; keep one")
    return found[0] if found else None
