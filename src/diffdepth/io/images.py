"""Reading images from disk or memory into float32 RGB arrays.

Everything returns ``float32`` arrays ``[H,W,3]`` in ``[0,1]``:

* 8-bit data is divided by 255, 16-bit data (``I;16`` PNG/TIFF, uint16 arrays) by 65535;
* grayscale is replicated to three channels, palette images are expanded;
* alpha (RGBA, LA, PA, palette transparency) is composited on **white**;
* CMYK / YCbCr / LAB / HSV are converted to RGB by Pillow;
* files get their EXIF orientation applied (``ImageOps.exif_transpose``).

Pillow reads 16-bit-per-channel *colour* PNG/TIFF files at 8-bit precision; such files
load fine but :attr:`ImageMeta.bit_depth` then says 8. 16-bit grayscale keeps 16 bits.

Unreadable files (missing, empty, truncated, corrupt, not an image) raise
:class:`diffdepth.errors.InputError` with a one-line message naming the file.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageOps

from ..errors import InputError

PathLike = Union[str, os.PathLike]

#: file extensions (lower case, with dot) the CLI treats as images when walking folders
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
#: file extensions the CLI treats as videos
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".avi")



def is_image_path(path: PathLike) -> bool:
    """True when the file name ends in one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def is_video_path(path: PathLike) -> bool:
    """True when the file name ends in one of :data:`VIDEO_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


# EXIF tag numbers (EXIF 2.32, table 4/7)
_EXIF_IFD = 0x8769
_TAG_ORIENTATION = 0x0112
_TAG_FOCAL_LENGTH = 0x920A
_TAG_FOCAL_PLANE_XRES = 0xA20E
_TAG_FOCAL_PLANE_UNIT = 0xA210
_TAG_FOCAL_35MM = 0xA405
_TAG_PIXEL_X_DIMENSION = 0xA002
#: FocalPlaneResolutionUnit -> millimetres per unit (1 = no unit, assumed inch as the spec's default)
_UNIT_MM = {1: 25.4, 2: 25.4, 3: 10.0, 4: 1.0, 5: 1e-3}
#: diagonal of the 36 x 24 mm full frame; the 35 mm-equivalent focal length is defined by it
_FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)


@dataclass
class ImageMeta:
    """What was learnt about an image while reading it.

    ``width``/``height`` are after EXIF orientation (the returned array's size);
    ``bit_depth`` is the precision of the decoded samples (8, 16, or 32 for float/int32
    files); ``focal_px`` is the focal length in pixels of the *returned* image derived from
    EXIF (``None`` when the file has none), ``focal_source`` says how it was derived.
    """

    path: Optional[Path]
    width: int
    height: int
    mode: str
    format: Optional[str]
    bit_depth: int
    has_alpha: bool
    orientation: int = 1
    focal_px: Optional[float] = None
    focal_source: Optional[str] = None


def _name(path: PathLike) -> str:
    return os.fspath(path)


def check_file(path: PathLike, what: str) -> Path:
    """``path`` as a Path if it is a non-empty file; else an InputError "cannot read <what> <path>: why"."""
    p = Path(path)
    why = ("no such file" if not p.exists() else "it is a folder, not a file" if p.is_dir()
           else "file is empty (0 bytes)" if p.stat().st_size == 0 else None)
    if why:
        raise InputError(f"cannot read {what} {_name(path)}: {why}")
    return p


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as float32 ``[H,W,3]`` RGB in ``[0,1]`` (EXIF orientation applied)."""
    return read_image_with_meta(path)[0]


def read_image_with_meta(path: PathLike, exif_orientation: bool = True) -> Tuple[np.ndarray, ImageMeta]:
    """Read an image file; return ``(rgb float32 [H,W,3] in [0,1], ImageMeta)``.
    ``exif_orientation=False`` keeps the stored pixel order (dataset readers)."""
    name = _name(path)
    p = check_file(path, "image")
    try:
        with warnings.catch_warnings():
            # Pillow warns (not raises) on some malformed EXIF blocks; they are not fatal
            warnings.simplefilter("ignore")
            with Image.open(p) as im:
                im.load()  # decode now, inside the try, so truncation is caught here
                fmt = im.format
                raw_size = im.size
                exif = im.getexif()
                orientation = int(exif.get(_TAG_ORIENTATION, 1) or 1)
                if exif_orientation:
                    im = ImageOps.exif_transpose(im)
                rgb, bit_depth, has_alpha, mode = _pil_to_float_rgb(im)
    except InputError as err:
        raise InputError(f"cannot read image {name}: {err}") from None
    except Image.DecompressionBombError as err:
        raise InputError(f"cannot read image {name}: too large ({err})") from None
    except Image.UnidentifiedImageError:
        raise InputError(f"cannot read image {name}: not an image file (or an unsupported format)") from None
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError, KeyError) as err:
        raise InputError(f"cannot read image {name}: file is truncated or corrupt ({err})") from None
    h, w = rgb.shape[:2]
    focal_px, focal_src = _exif_focal_px(exif, raw_size, (w, h))
    meta = ImageMeta(path=p, width=w, height=h, mode=mode, format=fmt, bit_depth=bit_depth,
                     has_alpha=has_alpha, orientation=orientation, focal_px=focal_px,
                     focal_source=focal_src)
    return rgb, meta


def _exif_rational(value: Any) -> Optional[float]:
    try:
        v = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _exif_focal_px(exif: Image.Exif, raw_size: Tuple[int, int],
                   size: Tuple[int, int]) -> Tuple[Optional[float], Optional[str]]:
    """Focal length in pixels from EXIF, or ``(None, None)``.

    Preferred: ``FocalLengthIn35mmFilm`` — the 35 mm-equivalent focal length is defined
    over the full-frame diagonal (43.27 mm), so ``f_px = f35 * diag_px / 43.27``; it does
    not depend on the sensor size and survives resizing. Otherwise ``FocalLength`` (mm) times
    ``FocalPlaneXResolution`` (pixels per unit, unit from ``FocalPlaneResolutionUnit``),
    rescaled by ``width / PixelXDimension`` when the image was resized after capture.
    """
    try:
        sub = exif.get_ifd(_EXIF_IFD)
    except Exception:  # malformed EXIF: treat as absent
        return None, None
    if not sub:
        return None, None
    w, h = size
    f35 = _exif_rational(sub.get(_TAG_FOCAL_35MM))
    if f35 is not None:
        return f35 * math.hypot(w, h) / _FULL_FRAME_DIAGONAL_MM, "exif FocalLengthIn35mmFilm"
    f_mm = _exif_rational(sub.get(_TAG_FOCAL_LENGTH))
    xres = _exif_rational(sub.get(_TAG_FOCAL_PLANE_XRES))
    if f_mm is None or xres is None:
        return None, None
    unit = sub.get(_TAG_FOCAL_PLANE_UNIT, 2)
    mm_per_unit = _UNIT_MM.get(int(unit) if isinstance(unit, (int, np.integer)) else 2, 25.4)
    f_px = f_mm * xres / mm_per_unit
    pix_x = _exif_rational(sub.get(_TAG_PIXEL_X_DIMENSION))
    if pix_x is not None and abs(pix_x - raw_size[0]) > 0.5:
        f_px *= raw_size[0] / pix_x  # image was resized since capture
    return f_px, "exif FocalLength x FocalPlaneXResolution"


def _composite_on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """rgb [H,W,3], alpha [H,W] both in [0,1] -> rgb*a + 1*(1-a)."""
    a = alpha[..., None]
    return rgb * a + (1.0 - a)


def _pil_to_float_rgb(im: Image.Image) -> Tuple[np.ndarray, int, bool, str]:
    """A loaded PIL image -> (float32 [H,W,3] in [0,1], bit depth, had alpha, original mode)."""
    mode = im.mode
    if mode == "P" or mode == "PA":
        has_t = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_t else "RGB")
    elif mode == "1":
        im = im.convert("L")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        im = im.convert("RGB")
    elif mode in ("RGBa", "La"):  # premultiplied alpha: un-premultiply first
        im = im.convert("RGBA" if mode == "RGBa" else "LA")
    m = im.mode
    if m.startswith("I;16"):
        arr = np.asarray(im).astype(np.float32) / 65535.0  # [H,W]
        return _gray3(arr), 16, False, mode
    if m == "I":
        arr = np.asarray(im).astype(np.float64)
        # 32-bit integer images (e.g. 16-bit PNGs through some paths); values beyond 16 bits
        # are scaled by the 32-bit maximum instead.
        scale = 65535.0 if arr.size == 0 or arr.max() <= 65535 else 4294967295.0
        return _gray3(np.clip(arr / scale, 0, 1).astype(np.float32)), (16 if scale == 65535.0 else 32), False, mode
    if m == "F":
        arr = np.asarray(im).astype(np.float32)
        if not np.isfinite(arr).all():
            raise InputError("float image contains NaN or infinity")
        return _gray3(np.clip(arr, 0, 1)), 32, False, mode
    if m == "L":
        return _gray3(np.asarray(im).astype(np.float32) / 255.0), 8, False, mode
    if m == "LA":
        arr = np.asarray(im).astype(np.float32) / 255.0  # [H,W,2]
        return _gray3(_composite_on_white(arr[..., :1], arr[..., 1])[..., 0]), 8, True, mode
    if m == "RGBA":
        arr = np.asarray(im).astype(np.float32) / 255.0  # [H,W,4]
        return _composite_on_white(arr[..., :3], arr[..., 3]).astype(np.float32), 8, True, mode
    if m != "RGB":
        im = im.convert("RGB")
    return np.asarray(im).astype(np.float32) / 255.0, 8, False, mode


def _gray3(arr: np.ndarray) -> np.ndarray:
    """[H,W] -> [H,W,3] float32 (a copy, writeable)."""
    return np.repeat(arr[..., None], 3, axis=2).astype(np.float32)


def to_float_rgb(x: Any, name: str = "image") -> np.ndarray:
    """Convert an in-memory image to float32 ``[H,W,3]`` RGB in ``[0,1]``.

    Accepts a PIL image (any mode; EXIF orientation is *not* applied to in-memory images)
    or a numpy array ``[H,W]``, ``[H,W,1]``, ``[H,W,3]`` or ``[H,W,4]`` (alpha composited on
    white) of dtype uint8 (/255), uint16 (/65535), bool, or float (assumed in ``[0,1]``;
    values within 0.01 outside are clipped, anything further is an error). ``name`` is
    used in error messages.
    """
    if isinstance(x, Image.Image):
        try:
            x.load()
            return _pil_to_float_rgb(x)[0]
        except InputError as err:
            raise InputError(f"{name}: {err}") from None
        except (OSError, SyntaxError, ValueError, EOFError) as err:  # lazily opened corrupt file
            raise InputError(f"{name}: cannot decode PIL image ({err})") from None
    if not isinstance(x, np.ndarray):
        raise InputError(f"{name}: unsupported image type {type(x).__name__}; "
                         "pass a file path, a PIL image or a numpy array [H,W,3]")
    arr = x
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[2] not in (1, 2, 3, 4):
        raise InputError(f"{name}: array of shape {arr.shape} looks channels-first; "
                         "pass [H,W,C] (e.g. arr.transpose(1, 2, 0))")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise InputError(f"{name}: expected an array [H,W], [H,W,1], [H,W,3] or [H,W,4], got shape {x.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{name}: image is empty (shape {x.shape})")
    if arr.dtype == np.uint8:
        f = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        f = arr.astype(np.float32) / 65535.0
    elif arr.dtype == np.bool_:
        f = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.floating):
        f = arr.astype(np.float32)
        if not np.isfinite(f).all():
            raise InputError(f"{name}: float image contains NaN or infinity")
        lo, hi = float(f.min()), float(f.max())
        if lo < -0.01 or hi > 1.01:
            hint = " (divide by 255?)" if hi > 1.01 else ""
            raise InputError(f"{name}: float image values must be in [0,1], got [{lo:g}, {hi:g}]{hint}")
        f = np.clip(f, 0.0, 1.0)
    else:
        raise InputError(f"{name}: unsupported dtype {arr.dtype}; use uint8, uint16 or float in [0,1]")
    c = f.shape[2]
    if c == 1:
        return np.repeat(f, 3, axis=2)
    if c == 2:  # gray + alpha
        return np.repeat(_composite_on_white(f[..., :1], f[..., 1]), 3, axis=2).astype(np.float32)
    if c == 4:
        return _composite_on_white(f[..., :3], f[..., 3]).astype(np.float32)
    return np.ascontiguousarray(f)
