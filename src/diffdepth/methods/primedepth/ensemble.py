"""Pixel-wise average of PrimeDepth with an external prediction (PrimeDepth Tab. 2, "Pixel-wise-Average").

The paper averages PrimeDepth's and Depth Anything's affine-invariant disparities pixel by
pixel. Here the external map is first brought into PrimeDepth's disparity space: depth
predictions are inverted, the map is resized to ours (bilinear) and aligned to ours by a
least-squares scale and shift over the pixels where both are finite; then the two maps are
averaged. The result is an affine-invariant disparity in the scale of ``pred_disparity``.

``--ensemble-with DIR`` (``diffdepth predict``): :func:`find_external` locates
``DIR/<stem>.npy`` (or ``.npz`` / 16-bit ``.png``) and :func:`external_kind_of` reads
``DIR/kind.txt`` (the evaluator's predictions-folder format) when the kind is not given.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import InputError
from ...evaluation.alignment import fit_scale_shift
from ...geometry import depth_to_disparity
from ...types import AFFINE_DEPTH, AFFINE_DISPARITY, DEPTH_KINDS

Array = Union[np.ndarray, torch.Tensor]
EXTENSIONS = (".npy", ".npz", ".png")


def _to_numpy_2d(x: Array, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    x = np.squeeze(x)
    if x.ndim != 2:
        raise InputError(f"{what} must be a single [H,W] map, got shape {x.shape}")
    return x


def ensemble_with(pred_disparity: Array, external: Array, external_kind: str = AFFINE_DISPARITY,
                  weight: float = 0.5) -> np.ndarray:
    """Average ``pred_disparity [H,W]`` with ``external`` (any size) after aligning it to ours.

    ``external_kind``: one of :data:`diffdepth.types.DEPTH_KINDS` or ``"disparity"``/``"depth"``;
    depth-like kinds are inverted (values <= 0 are invalid). ``weight`` is the external map's
    share (paper: 0.5). Pixels where the external map is invalid keep our value.
    Returns float32 ``[H,W]``.
    """
    ours = _to_numpy_2d(pred_disparity, "pred_disparity")
    ext = _to_numpy_2d(external, "external prediction")
    kind = {"disparity": AFFINE_DISPARITY, "depth": AFFINE_DEPTH}.get(external_kind, external_kind)
    if kind not in DEPTH_KINDS:
        raise InputError(f"unknown external kind {external_kind!r}; use one of {', '.join(DEPTH_KINDS)}")
    if not 0.0 <= weight <= 1.0:
        raise InputError(f"ensemble weight must be in [0, 1], got {weight}")
    valid_ext = np.isfinite(ext)
    if kind != AFFINE_DISPARITY:
        valid_ext &= ext > 0
        ext = depth_to_disparity(np.where(valid_ext, ext, 0.0))
    if ext.shape != ours.shape:
        t = torch.from_numpy(np.stack([np.where(valid_ext, ext, 0.0), valid_ext.astype(np.float64)]))[None]
        t = F.interpolate(t, size=ours.shape, mode="bilinear", align_corners=False)[0].numpy()
        valid_ext = t[1] > 0.999  # only pixels whose whole footprint was valid
        ext = np.where(valid_ext, t[0] / np.maximum(t[1], 1e-12), 0.0)
    both = valid_ext & np.isfinite(ours)
    if both.sum() < 2:
        raise InputError("the external prediction has fewer than 2 valid pixels overlapping ours")
    scale, shift = fit_scale_shift(ext, ours, both)
    aligned = scale * ext + shift
    out = np.where(valid_ext, (1.0 - weight) * ours + weight * aligned, ours)
    return out.astype(np.float32)


def find_external(folder: Union[str, Path], stem: str) -> Path:
    """``folder/<stem>.npy`` (or .npz/.png); :class:`InputError` naming what was looked for."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--ensemble-with {folder}: not a folder of predictions")
    for ext in EXTENSIONS:
        p = folder / f"{stem}{ext}"
        if p.exists():
            return p
    raise InputError(f"no external prediction for {stem!r} in {folder} (looked for {stem}.npy/.npz/.png)")


def read_external(path: Union[str, Path]) -> np.ndarray:
    """A prediction map: ``.npy``, ``.npz`` (key ``depth``/``disparity``/first array) or 16-bit ``.png`` (/65535)."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False).astype(np.float32)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                key = next((k for k in ("depth", "disparity", "pred") if k in z.files), z.files[0])
                return z[key].astype(np.float32)
        from PIL import Image

        with Image.open(path) as im:
            arr = np.asarray(im)
        scale = 65535.0 if arr.dtype == np.uint16 or arr.max() > 255 else 255.0
        return arr.astype(np.float32) / scale
    except (OSError, ValueError, StopIteration) as err:
        raise InputError(f"cannot read external prediction {path} ({err})") from None


def external_kind_of(folder: Union[str, Path], default: str = AFFINE_DISPARITY) -> str:
    """The kind recorded in ``folder`` (``predictions.json`` or ``kind.txt``), else ``default``."""
    from ...io.sidecar import prediction_kind

    return prediction_kind(folder) or default
