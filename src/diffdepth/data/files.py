"""File decoding for every reader in ``data/`` (benchmarks, training sets, sequences, anchors,
the folder dataset): RGB images, depth maps in their stored encodings, split files, intrinsics,
KITTI calibration / poses / Velodyne scans, and the missing-file and missing-root errors.

Each reader takes an optional ``line`` (the :class:`SplitLine` a path came from); errors are
:class:`~diffdepth.errors.InputError` naming the file and that split-file line.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from ..errors import InputError
from ..utils import PathLike

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
#: depth file formats -> file extension
DEPTH_FORMATS = {"png16": ".png", "npy": ".npy", "pfm": ".pfm", "exr": ".exr", "tiff": ".tiff"}


# --------------------------------------------------------------------------- split files, errors
@dataclass(frozen=True)
class SplitLine:
    lineno: int  # 1-based line number in the split file
    text: str
    fields: Tuple[str, ...]
    source: str  # the split file's path (or the listed folder)

    def where(self) -> str:
        return f"split line {self.lineno} of {self.source}: {self.text!r}"


def where(path, line: Optional[SplitLine] = None) -> str:
    """``path`` (or an error) and, when given, the split line it came from (for error messages)."""
    return f"{path}" + (f" ({line.where()})" if line is not None else "")


def missing_file(path: PathLike, line: Optional[SplitLine] = None) -> InputError:
    return InputError(f"missing file {where(path, line)} — check the dataset root (--data-root) and the split file")


def require_file(path: PathLike, line: Optional[SplitLine] = None) -> Path:
    """``path`` as a Path, or the missing-file error naming it and its split line."""
    path = Path(path)
    if not path.is_file():
        raise missing_file(path, line)
    return path


def dataset_root(path: PathLike, what: str) -> Path:
    """The folder ``path`` (``~`` expanded), or an InputError naming it as ``what``."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise InputError(f"{what} {path} does not exist or is not a folder — check root: in the config "
                         f"(--data-root for eval)")
    return path


def read_split(path: PathLike, min_fields: int = 1, form: str = "") -> List[SplitLine]:
    """Non-empty, non-``#`` lines of a whitespace-separated split file, with their line numbers;
    a line of fewer than ``min_fields`` fields is an error showing the expected ``form``."""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"split file {path} does not exist — check --split-file (split_file: in a config)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read split file {path} ({type(err).__name__})") from None
    lines = [SplitLine(i, s, tuple(s.split()), str(path))
             for i, s in ((i, raw.strip()) for i, raw in enumerate(text.splitlines(), start=1))
             if s and not s.startswith("#")]
    if not lines:
        raise InputError(f"split file {path} lists no samples")
    for line in lines:
        if len(line.fields) < min_fields:
            raise InputError(f"expected {form or f'at least {min_fields} fields'}, got {len(line.fields)} "
                             f"field(s): {line.where()}")
    return lines


# --------------------------------------------------------------------------- images
def read_rgb(path: PathLike, line: Optional[SplitLine] = None) -> np.ndarray:
    """Image file -> float32 [3,H,W] in [0,1], decoded as :func:`diffdepth.io.images.read_image`
    does (8-bit /255, alpha on white) but without EXIF rotation: datasets store ground truth
    aligned with the stored pixels."""
    from ..io.images import read_image_with_meta

    path = require_file(path, line)
    try:
        rgb = read_image_with_meta(path, exif_orientation=False)[0]
    except InputError as err:
        raise InputError(where(err, line)) from None
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


# --------------------------------------------------------------------------- depth
def read_uint16_png(path: PathLike, line: Optional[SplitLine] = None) -> np.ndarray:
    """16-bit single-channel PNG -> its raw counts, uint16 [H,W] (no scaling; see :func:`decode_depth`).

    (:func:`diffdepth.io.export.read_png16` is the other contract: a prediction PNG written by
    ``predict``, decoded through its encoding chunk.)"""
    from PIL import Image

    path = require_file(path, line)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("I;16", "I;16B", "I;16L", "I", "L"):
                raise ValueError(f"expected a 16-bit single-channel PNG, got mode {im.mode}")
            arr = np.asarray(im)
    except Exception as err:  # PIL raises many kinds for corrupt files
        raise InputError(f"cannot read 16-bit depth PNG {where(path, line)}: {err}") from None
    if arr.dtype != np.uint16:
        if arr.min() < 0 or arr.max() > 65535:
            raise InputError(f"depth PNG {where(path, line)} has values outside uint16")
        arr = arr.astype(np.uint16)
    return arr


def read_npy(path: PathLike, line: Optional[SplitLine] = None) -> np.ndarray:
    path = require_file(path, line)
    try:
        return np.asarray(np.load(path, allow_pickle=False))
    except Exception as err:
        raise InputError(f"cannot read .npy file {where(path, line)}: {err}") from None


def read_pfm(path: PathLike, line: Optional[SplitLine] = None) -> np.ndarray:
    """Portable float map (``Pf`` grey or ``PF`` colour; first channel kept), top row first."""
    path = require_file(path, line)
    try:
        with open(path, "rb") as f:
            header = f.readline().strip()
            if header not in (b"PF", b"Pf"):
                raise ValueError("not a PFM file (header must be PF or Pf)")
            dims = f.readline().split()
            while not dims:
                dims = f.readline().split()
            w, h = int(dims[0]), int(dims[1])
            scale = float(f.readline().strip())
            ch = 3 if header == b"PF" else 1
            data = np.frombuffer(f.read(), dtype="<f4" if scale < 0 else ">f4", count=w * h * ch)
    except Exception as err:
        raise InputError(f"cannot read PFM file {where(path, line)}: {err}") from None
    return np.flipud(data.reshape(h, w, ch)[..., 0]).astype(np.float32)  # PFM stores the bottom row first


def read_depth_file(path: PathLike, depth_format: str, line: Optional[SplitLine] = None) -> np.ndarray:
    """Raw depth values [H,W] as stored (no scaling), for one of :data:`DEPTH_FORMATS`."""
    if depth_format == "png16":
        return read_uint16_png(path, line)
    if depth_format == "npy":
        arr = read_npy(path, line)
    elif depth_format == "pfm":
        arr = read_pfm(path, line)
    elif depth_format in ("exr", "tiff"):
        path = require_file(path, line)
        try:
            import imageio.v3 as iio

            arr = np.asarray(iio.imread(path))
        except Exception as err:
            raise InputError(f"cannot read {depth_format} depth {where(path, line)}: {err} "
                             f"(EXR needs an imageio plugin such as imageio[freeimage] or OpenEXR)") from None
    else:
        raise InputError(f"unknown depth format {depth_format!r}; use one of {', '.join(DEPTH_FORMATS)}")
    arr = np.squeeze(arr)
    if arr.ndim == 3:  # multi-channel float maps: first channel is depth
        arr = arr[..., 0] if arr.shape[-1] <= 4 else arr[0]
    if arr.ndim != 2:
        raise InputError(f"depth file {where(path, line)} has shape {arr.shape}; expected [H,W]")
    return arr


def decode_depth(raw: np.ndarray, scale: float, invalid_value: Optional[float] = 0,
                 max_depth: Optional[float] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Raw stored values -> (depth metres float32 [H,W] with 0 where invalid, valid bool [H,W]).

    ``scale``: metres per stored unit (1e-3 for millimetre PNGs, 1/256 for KITTI's, 1 for
    float maps); computed in float64 (for uint16 counts equal to float32 ``raw / (1/scale)``).
    Invalid: equal to ``invalid_value``, non-finite, <= 0 after scaling, or >= ``max_depth``.
    """
    raw_f = np.asarray(raw).astype(np.float64)
    valid = np.isfinite(raw_f)
    if invalid_value is not None:
        valid &= raw_f != invalid_value
    depth = np.where(valid, raw_f * scale, 0.0)
    valid &= depth > 0
    if max_depth is not None:
        valid &= depth < max_depth
    return np.where(valid, depth, 0.0).astype(np.float32), valid


# --------------------------------------------------------------------------- cameras
def read_matrix(path: PathLike, line: Optional[SplitLine] = None) -> np.ndarray:
    """A K file (9 numbers or ``fx fy cx cy``; :func:`diffdepth.io.intrinsics.read_k_file`) -> float64 [3,3]."""
    from ..io.intrinsics import read_k_file

    path = require_file(path, line)
    try:
        return read_k_file(path)
    except InputError as err:
        raise InputError(where(err, line)) from None


def read_kitti_calib(path: PathLike, line: Optional[SplitLine] = None) -> Dict[str, Union[np.ndarray, str]]:
    """KITTI calibration text (``key: v1 v2 …``); numeric values become float64 arrays, others stay text."""
    path = require_file(path, line)
    data: Dict[str, Union[np.ndarray, str]] = {}
    for raw in path.read_text().splitlines():
        if ":" not in raw:
            continue
        key, value = raw.split(":", 1)
        value = value.strip()
        try:
            data[key.strip()] = np.array([float(v) for v in value.split()], dtype=np.float64)
        except ValueError:
            data[key.strip()] = value
    return data


def kitti_intrinsics(calib: Union[PathLike, Dict], cam: int = 2) -> np.ndarray:
    """3x3 K of rectified camera ``cam`` = the left 3x3 block of ``P_rect_0{cam}`` of a
    ``calib_cam_to_cam.txt`` (its path or :func:`read_kitti_calib`'s dict)."""
    table = calib if isinstance(calib, dict) else read_kitti_calib(calib)
    key = f"P_rect_0{cam}"
    value = table.get(key)
    if not isinstance(value, np.ndarray) or value.size != 12:
        raise InputError(f"{calib if not isinstance(calib, dict) else 'the calibration'} has no 12-number {key} "
                         f"entry; is it a KITTI calib_cam_to_cam.txt?")
    return value.reshape(3, 4)[:, :3].copy()


#: KITTI split-file side -> camera (2: left colour ``image_02``, 3: right colour ``image_03``)
KITTI_SIDES = {"l": 2, "r": 3, "2": 2, "3": 3}


def kitti_frame(root: Path, folder: str, cam: int, index: int) -> Optional[Path]:
    """``<folder>/image_0<cam>/data/<index:010d>.png`` under ``root``, or ``.jpg`` (as Monodepth2
    converts them); None when neither exists."""
    for ext in (".png", ".jpg"):
        p = root / folder / f"image_0{cam}" / "data" / f"{index:010d}{ext}"
        if p.is_file():
            return p
    return None


def read_poses(path: PathLike) -> np.ndarray:
    """Poses file with one row-major 3x4 camera-to-world matrix per line -> [N,4,4] float64."""
    path = Path(path)
    try:
        rows = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except Exception as err:
        raise InputError(f"cannot read poses file {path}: {err}") from None
    if rows.shape[1] != 12:
        raise InputError(f"poses file {path} has {rows.shape[1]} numbers per line; expected 12 (a 3x4 matrix)")
    poses = np.tile(np.eye(4), (len(rows), 1, 1))
    poses[:, :3, :] = rows.reshape(-1, 3, 4)
    return poses


def load_velodyne(path: PathLike, line: Optional[SplitLine] = None) -> np.ndarray:
    """KITTI ``.bin`` scan → float32 [N,4] (x, y, z, reflectance)."""
    path = require_file(path, line)
    raw = np.fromfile(path, dtype=np.float32)
    if raw.size % 4:
        raise InputError(f"{path} has {raw.size} floats, not a multiple of 4 — not a KITTI Velodyne scan")
    return raw.reshape(-1, 4)
