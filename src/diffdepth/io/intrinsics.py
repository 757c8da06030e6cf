"""Camera intrinsics for an image: flags, K files, EXIF, or the default field of view.

Precedence (the first that applies wins; the chosen source is recorded in the PLY header,
the ``_points.npz`` and the image's record in ``predictions.json``):

1. ``--focal PX`` (pixels) or ``--fov DEG`` (horizontal field of view) given on the command line;
2. a per-image K file ``NAME_K.txt`` beside the image ``NAME.<ext>``;
3. a folder file ``intrinsics.txt`` (or ``K.txt``) in the image's folder, for every image in it;
4. the EXIF focal length (:func:`diffdepth.io.images.read_image_with_meta`): ``FocalLengthIn35mmFilm``
   (35 mm-equivalent, defined over the 36x24 mm diagonal: ``f_px = f35 * diag_px / 43.27``), else
   ``FocalLength`` (mm) times ``FocalPlaneXResolution`` (pixels per ``FocalPlaneResolutionUnit``);
5. :data:`diffdepth.geometry.DEFAULT_FOV_DEG` (60 degrees horizontal).

A K file holds the 3x3 matrix ``[[fx,0,cx],[0,fy,cy],[0,0,1]]`` in pixels of the image as read
(after EXIF orientation), as 9 numbers (3 rows, or one row; spaces or commas; ``#`` comments), or
4 numbers ``fx fy cx cy``. Zero skew and a last row ``0 0 1`` are required.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

from ..errors import InputError

PathLike = Union[str, os.PathLike]
#: per-image K file: ``<stem>`` + this, beside the image
K_FILE_SUFFIX = "_K.txt"
#: folder intrinsics files, looked for in this order in the image's folder
FOLDER_K_FILES = ("intrinsics.txt", "K.txt")


def read_k_file(path: PathLike) -> np.ndarray:
    """A K file -> float64 ``[3,3]``; a malformed file stops with an error naming it."""
    name = os.fspath(path)
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read intrinsics file {name}: {err}") from None
    values = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].replace(",", " ").replace("[", " ").replace("]", " ").replace(";", " ")
        for tok in line.split():
            try:
                values.append(float(tok))
            except ValueError:
                raise InputError(f"intrinsics file {name}: {tok!r} is not a number; write 9 numbers "
                                 f"(3x3 K) or 4 (fx fy cx cy)") from None
    if len(values) == 4:
        fx, fy, cx, cy = values
        K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    elif len(values) == 9:
        K = np.array(values, dtype=np.float64).reshape(3, 3)
    else:
        raise InputError(f"intrinsics file {name} holds {len(values)} numbers; write 9 (3x3 K) or 4 (fx fy cx cy)")
    if not np.all(np.isfinite(K)) or not (K[0, 0] > 0 and K[1, 1] > 0):
        raise InputError(f"intrinsics file {name}: fx and fy must be finite and > 0, got {K[0, 0]:g}, {K[1, 1]:g}")
    if K[0, 1] != 0 or K[1, 0] != 0 or not np.allclose(K[2], [0.0, 0.0, 1.0]):
        raise InputError(f"intrinsics file {name}: expected [[fx,0,cx],[0,fy,cy],[0,0,1]] (no skew), got "
                         f"{K.tolist()}")
    return K


def find_k_file(image: PathLike) -> Tuple[Optional[Path], Optional[str]]:
    """The K file that applies to ``image``: ``(path, "K file")`` for ``NAME_K.txt``,
    ``(path, "folder file")`` for the folder's ``intrinsics.txt``/``K.txt``, else ``(None, None)``."""
    image = Path(image)
    own = image.with_name(image.stem + K_FILE_SUFFIX)
    if own.is_file():
        return own, "K file"
    for name in FOLDER_K_FILES:
        f = image.parent / name
        if f.is_file():
            return f, "folder file"
    return None, None


def k_from_file(image: PathLike, size: Tuple[int, int]) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """``(K, source)`` from the K file of ``image`` (:func:`find_k_file`), else ``(None, None)``.
    ``size`` (width, height) is only used to name a principal point that lies outside the image."""
    path, what = find_k_file(image)
    if path is None:
        return None, None
    K = read_k_file(path)
    w, h = size
    if not (0 <= K[0, 2] <= w and 0 <= K[1, 2] <= h):
        raise InputError(f"intrinsics file {path}: principal point ({K[0, 2]:g}, {K[1, 2]:g}) lies outside the "
                         f"{w}x{h} image {Path(image).name}; K must be in pixels of that image")
    return K, f"{what} {path.name}"


__all__ = ["K_FILE_SUFFIX", "FOLDER_K_FILES", "read_k_file", "find_k_file", "k_from_file"]
