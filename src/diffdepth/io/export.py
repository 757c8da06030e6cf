"""Writing depth predictions: .npy, 16-bit PNG, colourised PNG, side-by-side, PLY point cloud.

Every file goes through :func:`diffdepth.utils.atomic_path` (temporary name, then rename),
so an interrupted run never leaves a half-written output.

Depth maps are ``[H,W]`` arrays (numpy, or tensors that are moved to numpy; leading
singleton axes are dropped) in the units of their ``kind`` (see :mod:`diffdepth.types`).

16-bit PNG encodings (recorded in the PNG text chunk ``diffdepth:encoding``):

* ``metric_depth``: millimetres, rounded, valid values clipped to 1..65535 (0.001–65.535 m);
  0 = invalid (non-finite or <= 0). Text: ``metric_depth; value = millimetres (uint16); 0 = invalid``.
* relative kinds: min–max over finite values mapped linearly to 0..65535; the range is
  written into the text (``min=..; max=..``) so :func:`read_png16` can undo it; non-finite
  pixels are written as 0.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, PngImagePlugin

from ..errors import InputError
from ..geometry import (DEFAULT_FOV_DEG, depth_to_points, intrinsics_from_focal, intrinsics_from_fov,
                        scale_intrinsics)
from ..types import AFFINE_DISPARITY, DEPTH_KINDS, METRIC_DEPTH, RELATIVE_DEPTH, DepthMap
from ..utils import atomic_path
from .colormaps import COLORMAPS, WARM_END
from .images import to_float_rgb

PathLike = Union[str, os.PathLike]

#: PNG text-chunk key that records how a 16-bit depth PNG is encoded
PNG16_KEY = "diffdepth:encoding"
#: output format name -> file name suffix appended to the output base
OUTPUT_SUFFIXES: Dict[str, str] = {
    "npy": ".npy",
    "png16": "_depth16.png",
    "color": "_color.png",
    "side": "_side.png",
    "ply": ".ply",
    "uncertainty": "_uncertainty.npy",
    "seg": "_seg.png",
    "seg_ids": "_seg_ids.png",
    "points": "_points.npz",
    "glb": ".glb",
}
OUTPUT_FORMATS = tuple(OUTPUT_SUFFIXES)
#: percentiles used by the robust colour normalisation
ROBUST_PERCENTILES = (2.0, 98.0)


# ----------------------------------------------------------------------------- helpers

def as_depth_2d(depth: Any, name: str = "depth") -> np.ndarray:
    """numpy/tensor ``[H,W]``, ``[1,H,W]`` or ``[1,1,H,W]`` -> float32 numpy ``[H,W]``."""
    if hasattr(depth, "detach"):  # torch tensor
        depth = depth.detach().float().cpu().numpy()
    arr = np.asarray(depth)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.size == 0:
        raise InputError(f"{name} must be a 2-D map [H,W], got shape {np.shape(depth)}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr.astype(np.float32, copy=False)


def _check_kind(kind: str) -> str:
    if kind not in DEPTH_KINDS:
        raise InputError(f"unknown depth kind {kind!r}; expected one of {', '.join(DEPTH_KINDS)}")
    return kind


def valid_mask(depth: np.ndarray, kind: str) -> np.ndarray:
    """Pixels that carry a value: finite, and > 0 for kinds that are true depths."""
    mask = np.isfinite(depth)
    if kind in (METRIC_DEPTH, RELATIVE_DEPTH):
        mask &= depth > 0
    return mask


def _save_png(path: PathLike, img: np.ndarray, pnginfo: Optional[PngImagePlugin.PngInfo] = None) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            Image.fromarray(img).save(f, format="PNG", pnginfo=pnginfo)
    return path


# ----------------------------------------------------------------------------- npy

def save_npy(path: PathLike, depth: Any) -> Path:
    """Write ``depth`` as float32 ``.npy`` in the model's units."""
    path = Path(path)
    arr = np.asarray(depth.detach().float().cpu().numpy() if hasattr(depth, "detach") else depth,
                     dtype=np.float32)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.save must not add a suffix
            np.save(f, arr)
    return path


# ----------------------------------------------------------------------------- 16-bit PNG

def encode_png16(depth: Any, kind: str) -> Tuple[np.ndarray, str]:
    """depth ``[H,W]`` -> (uint16 ``[H,W]``, encoding text). See the module docstring."""
    _check_kind(kind)
    d = as_depth_2d(depth).astype(np.float64)
    if kind == METRIC_DEPTH:
        valid = np.isfinite(d) & (d > 0)
        mm = np.zeros(d.shape, dtype=np.uint16)
        mm[valid] = np.clip(np.round(d[valid] * 1000.0), 1, 65535).astype(np.uint16)
        return mm, "metric_depth; value = millimetres (uint16); 0 = invalid"
    finite = np.isfinite(d)
    out = np.zeros(d.shape, dtype=np.uint16)
    if finite.any():
        lo, hi = float(d[finite].min()), float(d[finite].max())
        if hi > lo:
            out[finite] = np.round((d[finite] - lo) / (hi - lo) * 65535.0).astype(np.uint16)
    else:
        lo = hi = float("nan")
    text = (f"{kind}; min-max normalised to 0..65535; min={lo!r}; max={hi!r}; "
            "value = min + v/65535*(max-min); non-finite written as 0")
    return out, text


def save_png16(path: PathLike, depth: Any, kind: str) -> Path:
    """Write a 16-bit grayscale PNG with the encoding in the ``diffdepth:encoding`` text chunk."""
    arr, text = encode_png16(depth, kind)
    info = PngImagePlugin.PngInfo()
    info.add_text(PNG16_KEY, text)
    return _save_png(path, arr, info)


def read_png16(path: PathLike) -> Tuple[np.ndarray, Optional[str]]:
    """Read a 16-bit depth PNG -> (float32 ``[H,W]``, encoding text or None).

    diffdepth metric PNGs decode to metres (0 -> NaN); relative ones back to the model's
    values through the recorded min/max. Files without our text chunk come back as raw
    counts (float32) with ``None``.
    """
    name = os.fspath(path)
    try:
        with Image.open(path) as im:
            im.load()
            text = im.info.get(PNG16_KEY)
            raw = np.asarray(im).astype(np.float64)
    except FileNotFoundError:
        raise InputError(f"cannot read depth PNG {name}: no such file") from None
    except Exception as err:  # PIL raises many types for corrupt files
        raise InputError(f"cannot read depth PNG {name}: {err}") from None
    if raw.ndim != 2:
        raise InputError(f"{name} is not a single-channel depth PNG (shape {raw.shape})")
    if text is None:
        return raw.astype(np.float32), None
    if text.startswith(METRIC_DEPTH):
        out = raw / 1000.0
        out[raw == 0] = np.nan
        return out.astype(np.float32), text
    m_lo, m_hi = re.search(r"min=([^;]+)", text), re.search(r"max=([^;]+)", text)
    if not (m_lo and m_hi):
        raise InputError(f"{name}: cannot parse depth encoding {text!r}")
    lo, hi = float(m_lo.group(1)), float(m_hi.group(1))
    return (lo + raw / 65535.0 * (hi - lo)).astype(np.float32), text


# ----------------------------------------------------------------------------- colour

def depth_range(depth: Any, kind: str, robust: bool = True,
                percentiles: Optional[Tuple[float, float]] = None) -> Tuple[float, float]:
    """(lo, hi) used to normalise ``depth`` for colouring: the 2nd/98th percentiles (or
    ``percentiles``) of the valid values when ``robust`` (outliers do not wash out the map),
    else their min/max. Returns (nan, nan) when nothing is valid."""
    d = as_depth_2d(depth)
    v = d[valid_mask(d, _check_kind(kind))].astype(np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    if robust:
        lo, hi = np.percentile(v, percentiles or ROBUST_PERCENTILES)
        return float(lo), float(hi)
    return float(v.min()), float(v.max())


def color_range(depth: Any, kind: str, vmin: Optional[float] = None, vmax: Optional[float] = None,
                percentiles: Optional[Tuple[float, float]] = None) -> Optional[Tuple[float, float]]:
    """The colour range for ``--vmin/--vmax/--percentiles``: fixed ends where given, the
    percentiles of the valid values for the others; None: the default (2nd/98th percentiles)."""
    if vmin is None and vmax is None and percentiles is None:
        return None
    lo, hi = depth_range(depth, kind, True, percentiles) if vmin is None or vmax is None else (vmin, vmax)
    return (float(vmin) if vmin is not None else lo, float(vmax) if vmax is not None else hi)


def _colormap(name: str):
    key = name.lower()
    if key not in COLORMAPS:
        raise InputError(f"unknown colour map {name!r}; choose one of {', '.join(COLORMAPS)}")
    return COLORMAPS[key], WARM_END[key]


def colorize(depth: Any, kind: str, cmap: str = "Spectral", near_warm: bool = True,
             value_range: Optional[Tuple[float, float]] = None, robust: bool = True) -> np.ndarray:
    """Colour a depth/disparity map -> uint8 ``[H,W,3]``.

    Normalisation: linear between ``value_range`` if given, else :func:`depth_range`
    (2nd–98th percentile of valid values when ``robust``, min–max otherwise); values
    outside are clipped. With ``near_warm`` the near end is drawn warm (red): for depth
    kinds small values, for ``affine_invariant_disparity`` large values. Invalid pixels
    (non-finite; also <= 0 for metric/relative depth) are black.
    """
    _check_kind(kind)
    fn, warm_end = _colormap(cmap)
    d = as_depth_2d(depth).astype(np.float64)
    valid = valid_mask(d, kind)
    lo, hi = value_range if value_range is not None else depth_range(d, kind, robust)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return np.zeros(d.shape + (3,), dtype=np.uint8)
    if hi > lo:
        n = np.clip((d - lo) / (hi - lo), 0.0, 1.0)
    else:
        n = np.full(d.shape, 0.5)
    near = n if kind == AFFINE_DISPARITY else 1.0 - n  # 1 = nearest
    if not near_warm:
        near = 1.0 - near
    t = near if warm_end == 1.0 else 1.0 - near
    t = np.where(valid, t, 0.0)
    rgb = fn(t)
    rgb[~valid] = 0.0
    return np.round(rgb * 255.0).astype(np.uint8)


def save_color(path: PathLike, depth: Any, kind: str, cmap: str = "Spectral", near_warm: bool = True,
               value_range: Optional[Tuple[float, float]] = None) -> Path:
    """Write :func:`colorize` output as an 8-bit RGB PNG."""
    return _save_png(path, colorize(depth, kind, cmap, near_warm, value_range))


def _rgb_uint8_like(rgb: Any, shape: Tuple[int, int]) -> np.ndarray:
    """Any image input -> uint8 [H,W,3] resized (bilinear) to ``shape`` if needed."""
    f = to_float_rgb(rgb, name="rgb")
    u8 = np.round(f * 255.0).astype(np.uint8)
    if u8.shape[:2] != tuple(shape):
        u8 = np.asarray(Image.fromarray(u8).resize((shape[1], shape[0]), Image.BILINEAR))
    return u8


def side_by_side(rgb: Any, depth: Any, kind: str, cmap: str = "Spectral", near_warm: bool = True,
                 value_range: Optional[Tuple[float, float]] = None) -> np.ndarray:
    """uint8 ``[H, 2W, 3]``: the image (resized to the depth's size if needed) | colour depth."""
    d = as_depth_2d(depth)
    color = colorize(d, kind, cmap, near_warm, value_range)
    return np.concatenate([_rgb_uint8_like(rgb, d.shape), color], axis=1)


def save_side_by_side(path: PathLike, rgb: Any, depth: Any, kind: str, cmap: str = "Spectral",
                      near_warm: bool = True, value_range: Optional[Tuple[float, float]] = None) -> Path:
    return _save_png(path, side_by_side(rgb, depth, kind, cmap, near_warm, value_range))


def label_palette(n: int = 256) -> np.ndarray:
    """Distinct colours for class labels: uint8 ``[n,3]``; label 0 is black.

    Spreads the label's bits over the three channels, most significant colour bit first
    (bit 3k+c of the label -> bit 7-k of channel c), so neighbouring ids differ strongly.
    """
    labels = np.arange(n)
    pal = np.zeros((n, 3), dtype=np.int64)
    for k in range(8):
        for c in range(3):
            bit = (labels >> (3 * k + c)) & 1
            pal[:, c] |= bit << (7 - k)
    return pal.astype(np.uint8)


def segmentation_labels(seg: Any) -> np.ndarray:
    """Labels ``[H,W]`` (ints) or scores ``[C,H,W]`` (argmax over C) -> int64 ``[H,W]``."""
    arr = seg.detach().float().cpu().numpy() if hasattr(seg, "detach") else np.asarray(seg)
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3:
        arr = arr.argmax(axis=0)  # [C,H,W] -> [H,W]
    if arr.ndim != 2:
        raise InputError(f"segmentation must be [H,W] labels or [C,H,W] scores, got shape {np.shape(seg)}")
    return np.rint(np.asarray(arr, dtype=np.float64)).astype(np.int64)


def colorize_segmentation(seg: Any) -> np.ndarray:
    """Labels ``[H,W]`` (ints) or scores ``[C,H,W]`` (argmax over C) -> uint8 ``[H,W,3]``.
    Negative labels are drawn black; labels wrap modulo 256 colours."""
    labels = segmentation_labels(seg)
    out = label_palette()[np.mod(labels, 256)]
    out[labels < 0] = 0
    return out


# ----------------------------------------------------------------------------- PLY

def segmentation_ids(seg: Any) -> np.ndarray:
    """Class ids ``[H,W]`` as uint8 (uint16 when an id exceeds 255) for a PNG of raw ids."""
    ids = segmentation_labels(seg)
    if ids.min(initial=0) < 0 or ids.max(initial=0) > 65535:
        raise InputError(f"segmentation ids must lie in 0..65535, got {ids.min()}..{ids.max()}")
    return ids.astype(np.uint8 if ids.max(initial=0) < 256 else np.uint16)


def intrinsics_for(width: int, height: int, focal: Optional[float] = None, fov: Optional[float] = None,
                   exif_focal_px: Optional[float] = None, K_file: Optional[np.ndarray] = None,
                   K_file_source: Optional[str] = None, exif_source: Optional[str] = None,
                   K_file_size: Optional[Tuple[int, int]] = None) -> Tuple[np.ndarray, str]:
    """Pick K (precedence of :mod:`diffdepth.io.intrinsics`): ``focal`` (px, --focal), else ``fov``
    (horizontal degrees, --fov), else ``K_file`` (a ``NAME_K.txt`` or folder file, in pixels of an image
    of ``K_file_size`` (width, height), rescaled to ``width x height`` when that differs), else the EXIF
    focal length in px, else :data:`diffdepth.geometry.DEFAULT_FOV_DEG`.
    Returns (K 3x3, a one-line description of where it came from)."""
    try:
        if focal is not None:
            return intrinsics_from_focal(width, height, float(focal)), f"focal {float(focal):g} px (--focal)"
        if fov is not None:
            return intrinsics_from_fov(width, height, float(fov)), f"fov {float(fov):g} deg (--fov)"
    except ValueError as err:
        raise InputError(f"bad camera intrinsics: {err}") from None
    if K_file is not None:
        K = np.array(K_file, dtype=np.float64)
        src = K_file_source or "K file"
        if K_file_size is not None and tuple(K_file_size) != (width, height):
            K = scale_intrinsics(K, width / K_file_size[0], height / K_file_size[1])
            src += f" (rescaled from {K_file_size[0]}x{K_file_size[1]})"
        return K, src
    if exif_focal_px is not None and math.isfinite(exif_focal_px) and exif_focal_px > 0:
        label = exif_source if exif_source and exif_source.startswith("exif") else "exif"
        return intrinsics_from_focal(width, height, float(exif_focal_px)), f"focal {exif_focal_px:.6g} px ({label})"
    return intrinsics_from_fov(width, height, DEFAULT_FOV_DEG), f"fov {DEFAULT_FOV_DEG:g} deg (default)"


def intrinsics_kind(source: str) -> str:
    """The short name of an intrinsics source line: flag, K file, folder file, exif or default."""
    for key, name in (("(--focal)", "flag"), ("(--fov)", "flag"), ("folder file", "folder_file"),
                      ("K file", "k_file"), ("(exif", "exif"), ("(default)", "default")):
        if key in source:
            return name
    return "given"


def ply_depth(depth: Any, kind: str) -> Tuple[np.ndarray, List[str]]:
    """Planar depth to back-project for ``kind`` + PLY comments describing its scale.

    Disparity (affine-invariant) is turned into depth by 1/x on positive values; other
    values become invalid (0). Affine/relative depths are used as they are."""
    d = as_depth_2d(depth).astype(np.float64)
    _check_kind(kind)
    comments = [f"depth kind: {kind}"]
    if kind == METRIC_DEPTH:
        comments.append("units: metres")
    elif kind == AFFINE_DISPARITY:
        pos = np.isfinite(d) & (d > 0)
        out = np.zeros_like(d)
        out[pos] = 1.0 / d[pos]
        d = out
        comments.append("depth = 1/disparity on positive values; scale (and shift) arbitrary")
    else:
        comments.append("scale arbitrary (not metric)" if kind == RELATIVE_DEPTH
                        else "scale and shift arbitrary (affine-invariant depth, not metric)")
    return d, comments


def _cloud_depth(depth: Any, kind: Optional[str], K: Any, stride: int = 1,
                 max_depth: Optional[float] = None) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """The PLY / point-cloud selection: (planar depth to back-project, pixels kept, comments)."""
    comments: List[str] = []
    if kind is not None:
        d, comments = ply_depth(depth, kind)
    else:
        d = as_depth_2d(depth).astype(np.float64)
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise InputError(f"intrinsics K must be 3x3, got shape {K.shape}")
    keep = np.isfinite(d) & (d > 0)
    if stride > 1:
        grid = np.zeros_like(keep)
        grid[::stride, ::stride] = True
        keep &= grid
        comments.append(f"subsampled: every {stride}th pixel in each direction")
    if max_depth is not None:
        keep &= d <= max_depth
        comments.append(f"points with depth > {max_depth:g} left out")
    return d, keep, comments


def save_points_npz(path: PathLike, depth: Any, rgb: Any, K: np.ndarray, kind: str, k_source: str = "",
                    stride: int = 1, max_depth: Optional[float] = None) -> Path:
    """The PLY's points as ``.npz``: ``points`` float32 ``[N,3]`` (OpenCV camera axes, x right, y down,
    z forward; metres for ``metric_depth``), ``colors`` uint8 ``[N,3]`` (zeros without ``rgb``),
    ``pixels`` int32 ``[N,2]`` (row, column of each point), ``K`` float64 ``[3,3]``, and the strings
    ``K_source``, ``kind``, ``units`` (``m`` or ``arbitrary``), ``notes`` (the PLY header comments)."""
    d, keep, notes = _cloud_depth(depth, kind, K, stride, max_depth)
    K = np.asarray(K, dtype=np.float64)
    pts = depth_to_points(d, K, mask=keep)
    rows, cols_ = np.nonzero(keep)
    colors = (_rgb_uint8_like(rgb, d.shape)[keep] if rgb is not None
              else np.zeros((len(pts), 3), dtype=np.uint8))
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.savez must not add a suffix
            np.savez(f, points=pts.astype(np.float32), colors=colors.astype(np.uint8),
                     pixels=np.stack([rows, cols_], 1).astype(np.int32), K=K, K_source=np.str_(k_source),
                     kind=np.str_(kind), units=np.str_("m" if kind == METRIC_DEPTH else "arbitrary"),
                     notes=np.str_("; ".join(notes)))
    return path


def save_ply(path: PathLike, depth: Any, rgb: Any, K: np.ndarray, comments: Sequence[str] = (),
             kind: Optional[str] = None, stride: int = 1, max_depth: Optional[float] = None) -> Path:
    """Binary little-endian PLY: ``x y z`` float32 + ``red green blue`` uchar per valid pixel.

    ``depth`` is planar depth ``[H,W]`` (pixels with depth <= 0 or non-finite are left out),
    back-projected with ``K`` (:func:`diffdepth.geometry.depth_to_points`, OpenCV axes).
    ``rgb`` (any image input, resized to the depth if needed) colours the points; ``None``
    writes points only. With ``kind``, the depth is first converted by :func:`ply_depth`
    and its comments are added. ``comments`` go into the header (one line each).
    ``stride``: keep every stride-th pixel in each direction; ``max_depth``: leave out points
    farther than it (in the back-projected depth's units).
    """
    header_comments = ["generated by diffdepth"] + [str(c) for c in comments]
    d, kept, extra = _cloud_depth(depth, kind, K, stride, max_depth)
    header_comments += extra
    K = np.asarray(K, dtype=np.float64)
    keep = kept
    pts = depth_to_points(d, K, mask=keep)  # [N,3], row-major order of `keep`
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if rgb is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    verts = np.empty(len(pts), dtype=fields)
    verts["x"], verts["y"], verts["z"] = pts[:, 0], pts[:, 1], pts[:, 2]
    if rgb is not None:
        cols = _rgb_uint8_like(rgb, d.shape)[keep]  # [N,3]
        verts["red"], verts["green"], verts["blue"] = cols[:, 0], cols[:, 1], cols[:, 2]
    lines = ["ply", "format binary_little_endian 1.0"]
    lines += ["comment " + c.replace("\n", " ").replace("\r", " ") for c in header_comments]
    lines.append(f"element vertex {len(verts)}")
    type_names = {"<f4": "float", "u1": "uchar"}
    lines += [f"property {type_names[t]} {n}" for n, t in fields]
    lines.append("end_header")
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(("\n".join(lines) + "\n").encode("ascii", errors="replace"))
            f.write(verts.tobytes())
    return path


@dataclass
class PlyData:
    points: np.ndarray  # [N,3] float32
    colors: Optional[np.ndarray]  # [N,3] uint8 or None
    comments: List[str]


_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "<i2", "int16": "<i2",
              "ushort": "<u2", "uint16": "<u2", "int": "<i4", "int32": "<i4", "uint": "<u4",
              "uint32": "<u4", "float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8"}


def read_ply(path: PathLike) -> PlyData:
    """Read a binary little-endian PLY with one ``vertex`` element of scalar properties."""
    name = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise InputError(f"cannot read PLY {name}: {err.strerror or err}") from None
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise InputError(f"{name} is not a PLY file")
    header = data[:end].decode("ascii", errors="replace").splitlines()
    comments, fields, n, fmt = [], [], None, None
    for line in header[1:]:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "comment":
            comments.append(line[len("comment "):])
        elif parts[0] == "format":
            fmt = parts[1]
        elif parts[0] == "element":
            if parts[1] != "vertex" or n is not None:
                raise InputError(f"{name}: only a single 'vertex' element is supported")
            n = int(parts[2])
        elif parts[0] == "property":
            if parts[1] == "list" or parts[1] not in _PLY_TYPES:
                raise InputError(f"{name}: unsupported PLY property {line!r}")
            fields.append((parts[2], _PLY_TYPES[parts[1]]))
    if fmt != "binary_little_endian" or n is None:
        raise InputError(f"{name}: only binary_little_endian PLY with a vertex element is supported")
    body = data[end + len(b"end_header\n"):]
    dt = np.dtype(fields)
    if len(body) < n * dt.itemsize:
        raise InputError(f"{name}: PLY is truncated ({len(body)} bytes for {n} vertices)")
    verts = np.frombuffer(body, dtype=dt, count=n)
    pts = np.stack([verts["x"], verts["y"], verts["z"]], 1).astype(np.float32)
    names = dt.names or ()
    cols = (np.stack([verts["red"], verts["green"], verts["blue"]], 1).astype(np.uint8)
            if {"red", "green", "blue"} <= set(names) else None)
    return PlyData(points=pts, colors=cols, comments=comments)


# ----------------------------------------------------------------------------- all outputs

def parse_formats(formats: Union[str, Iterable[str]]) -> set:
    """``"npy,png16"`` or an iterable of names -> validated set; unknown names -> InputError."""
    if isinstance(formats, str):
        formats = [f for f in formats.split(",")]
    names = {str(f).strip().lower() for f in formats if str(f).strip()}
    bad = sorted(names - set(OUTPUT_FORMATS))
    if bad:
        raise InputError(f"unknown output format(s) {', '.join(bad)}; allowed: {', '.join(OUTPUT_FORMATS)}")
    return names


def output_path(out_base: PathLike, fmt: str) -> Path:
    """``<base><suffix>`` for a format name (the base has no extension of its own)."""
    base = Path(out_base)
    return base.parent / (base.name + OUTPUT_SUFFIXES[fmt])


@dataclass
class SaveResult:
    written: List[Path] = field(default_factory=list)
    #: existing files kept because overwrite was False
    skipped: List[Path] = field(default_factory=list)
    #: requested formats the prediction cannot provide (no uncertainty / no segmentation)
    unavailable: List[str] = field(default_factory=list)
    #: the intrinsics the point clouds (and the image's record) use: K 3x3 and where it came from
    K: Optional[np.ndarray] = None
    K_source: Optional[str] = None
    #: (min, max) of the valid values (see :func:`valid_mask`), None when no pixel is valid
    valid_range: Optional[Tuple[float, float]] = None


def save_outputs(out_base: PathLike, prediction: DepthMap, rgb: Any, formats: Union[str, Iterable[str]],
                 overwrite: bool = False, focal: Optional[float] = None, fov: Optional[float] = None,
                 exif_focal_px: Optional[float] = None, cmap: str = "Spectral",
                 near_warm: bool = True, vmin: Optional[float] = None, vmax: Optional[float] = None,
                 percentiles: Optional[Tuple[float, float]] = None, ply_stride: int = 1,
                 ply_max_depth: Optional[float] = None, K_file: Optional[np.ndarray] = None,
                 K_file_source: Optional[str] = None, K_file_size: Optional[Tuple[int, int]] = None,
                 exif_source: Optional[str] = None) -> SaveResult:
    """Write the requested outputs of one prediction next to ``out_base``:

    ``npy`` -> ``<base>.npy``, ``png16`` -> ``<base>_depth16.png``, ``color`` ->
    ``<base>_color.png``, ``side`` -> ``<base>_side.png``, ``ply`` -> ``<base>.ply``,
    ``uncertainty`` -> ``<base>_uncertainty.npy`` (if the prediction has one), ``seg`` ->
    ``<base>_seg.png`` (palette colours) and ``seg_ids`` -> ``<base>_seg_ids.png`` (class ids,
    uint8, or uint16 beyond 255 classes) if ``prediction.extras["segmentation"]`` exists,
    ``points`` -> ``<base>_points.npz`` (:func:`save_points_npz`), ``glb`` -> ``<base>.glb`` (the same
    points as binary glTF, thinned to at most 250k). Intrinsics: :func:`intrinsics_for` (``focal``,
    ``fov``, ``K_file``, ``exif_focal_px``); the result carries ``K``, ``K_source`` and ``valid_range``.
    Colour range: :func:`color_range` (``vmin``/``vmax``/``percentiles``). PLY: ``ply_stride``,
    ``ply_max_depth`` (see :func:`save_ply`).
    Existing files are kept (listed in ``skipped``) unless ``overwrite``.
    """
    fmts = parse_formats(formats)
    kind = _check_kind(prediction.kind)
    depth = as_depth_2d(prediction.depth)
    h, w = depth.shape
    res = SaveResult()
    res.K, res.K_source = intrinsics_for(w, h, focal, fov, exif_focal_px, K_file, K_file_source, exif_source,
                                         K_file_size)
    vals = depth[valid_mask(depth, kind)]
    res.valid_range = (float(vals.min()), float(vals.max())) if vals.size else None
    rng = color_range(depth, kind, vmin, vmax, percentiles) if fmts & {"color", "side"} else None
    seg = prediction.extras.get("segmentation")
    for fmt in (f for f in OUTPUT_FORMATS if f in fmts):  # fixed order, so reports are stable
        if (fmt == "uncertainty" and prediction.uncertainty is None) or (fmt in ("seg", "seg_ids") and seg is None):
            res.unavailable.append(fmt)
            continue
        path = output_path(out_base, fmt)
        if path.exists() and not overwrite:
            res.skipped.append(path)
            continue
        if fmt == "npy":
            save_npy(path, depth)
        elif fmt == "png16":
            save_png16(path, depth, kind)
        elif fmt == "color":
            save_color(path, depth, kind, cmap, near_warm, rng)
        elif fmt == "side":
            if rgb is None:
                raise InputError("the 'side' output needs the input image (rgb is None)")
            save_side_by_side(path, rgb, depth, kind, cmap, near_warm, rng)
        elif fmt == "ply":
            K = res.K
            k_line = f"K: fx={K[0, 0]:.6g} fy={K[1, 1]:.6g} cx={K[0, 2]:.6g} cy={K[1, 2]:.6g}"
            save_ply(path, depth, rgb, K, [f"intrinsics: {res.K_source}", k_line], kind=kind, stride=ply_stride,
                     max_depth=ply_max_depth)
        elif fmt == "points":
            save_points_npz(path, depth, rgb, res.K, kind, res.K_source, stride=ply_stride, max_depth=ply_max_depth)
        elif fmt == "glb":
            from ..demo.glb import save_glb

            save_glb(path, depth, rgb if rgb is not None else np.zeros(depth.shape + (3,), np.float32), res.K, kind)
        elif fmt == "uncertainty":
            save_npy(path, as_depth_2d(prediction.uncertainty, "uncertainty"))
        elif fmt == "seg":
            _save_png(path, colorize_segmentation(seg))
        elif fmt == "seg_ids":
            _save_png(path, segmentation_ids(seg))
        res.written.append(path)
    return res


__all__ = [
    "PNG16_KEY", "OUTPUT_FORMATS", "color_range", "segmentation_ids", "OUTPUT_SUFFIXES", "ROBUST_PERCENTILES", "as_depth_2d", "valid_mask",
    "save_npy", "encode_png16", "save_png16", "read_png16", "depth_range", "colorize", "save_color",
    "side_by_side", "save_side_by_side", "label_palette", "colorize_segmentation", "intrinsics_for",
    "ply_depth", "save_ply", "save_points_npz", "intrinsics_kind", "PlyData", "read_ply", "parse_formats", "output_path", "SaveResult",
    "save_outputs",
]
