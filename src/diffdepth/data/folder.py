"""The generic folder of RGB-D pairs (one dataset class for training and evaluation), the
shared sample dict and its resizing, and the folder writers.

Folder format (written by ``diffdepth synth --layout folder``)::

    ROOT/<name>.png            8-bit RGB
    ROOT/<name>_depth.png      uint16, depth in millimetres (metres x 1000), 0 = invalid
    ROOT/<name>_K.txt          optional, 3x3 intrinsics in pixels, whitespace separated

``<name>`` may contain sub-folders. The depth encoding is configurable
(:class:`FolderDepthDataset` ``depth_format``/``depth_scale``/``invalid_value``) so
folders written by other tools (``.npy`` metres, KITTI-style PNG /256, PFM) read too.

Every training reader yields the same sample dict::

    {"name": str,                      # relative path of the image without extension
     "image": float32 [3,H,W] in [0,1],
     "depth": float32 [1,H,W] metres, 0 where invalid,
     "valid": bool [1,H,W],
     "intrinsics": float32 [3,3]}      # only when known
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InputError
from ..geometry import scale_intrinsics
from ..utils import PathLike, atomic_path
from .files import (DEPTH_FORMATS, IMAGE_EXTS, SplitLine, dataset_root, decode_depth, read_depth_file, read_matrix,
                    read_rgb, read_split)

# --------------------------------------------------------------------------- resizing


def resize_sample(sample: Dict, size: Optional[Sequence[int]]) -> Dict:
    """Resize a sample to ``size=(H,W)`` in place.

    Image: bilinear with antialiasing. Depth, valid and segmentation: nearest neighbour on pixel centres,
    so no invalid pixel is mixed into a valid one (valid-aware). Intrinsics scaled by
    (W'/W, H'/H) with :func:`diffdepth.geometry.scale_intrinsics`.
    """
    if size is None:
        return sample
    th, tw = int(size[0]), int(size[1])
    key = "image" if "image" in sample else "frames"
    h, w = sample[key].shape[-2:]
    if (h, w) == (th, tw):
        return sample
    import torch.nn.functional as F

    def _img(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x))
        t4 = t.unsqueeze(0) if t.ndim == 3 else t  # [N,3,H,W]
        out = F.interpolate(t4, size=(th, tw), mode="bilinear", align_corners=False,
                            antialias=(th < h or tw < w)).clamp_(0.0, 1.0)
        out = out[0] if t.ndim == 3 else out
        return out.numpy().astype(np.float32)

    sample[key] = _img(sample[key])
    for k in ("depth", "valid", "segmentation"):
        if k in sample:
            sample[k] = resize_nearest(sample[k], (th, tw))
    if "intrinsics" in sample:
        sample["intrinsics"] = scale_intrinsics(sample["intrinsics"], tw / w, th / h).astype(np.float32)
    return sample


def resize_nearest(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """``x [..., h, w]`` at ``size`` (H, W), nearest on pixel centres: output pixel i samples input
    floor((i + 0.5) * h / H), so no invalid pixel is mixed into a valid one."""
    h, w = x.shape[-2:]
    ys = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64), h - 1)
    xs = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64), w - 1)
    return np.ascontiguousarray(x[..., ys[:, None], xs[None, :]])


def make_sample(name: str, image: np.ndarray, depth: Optional[np.ndarray], valid: Optional[np.ndarray],
                K: Optional[np.ndarray], size: Optional[Sequence[int]]) -> Dict:
    """Assemble the shared sample dict (adding the channel axis to depth/valid) and resize."""
    sample: Dict = {"name": name, "image": image.astype(np.float32, copy=False)}
    if depth is not None:
        if depth.shape != image.shape[-2:]:
            raise InputError(f"sample {name}: depth is {depth.shape[0]}x{depth.shape[1]} but the image is "
                             f"{image.shape[1]}x{image.shape[2]}")
        sample["depth"] = depth.astype(np.float32, copy=False)[None]
        sample["valid"] = valid.astype(bool, copy=False)[None]
    if K is not None:
        sample["intrinsics"] = np.asarray(K, dtype=np.float32)
    return resize_sample(sample, size)


# --------------------------------------------------------------------------- writing


def write_rgb(path: PathLike, image: np.ndarray) -> None:
    """float [H,W,3] or [3,H,W] in [0,1] (or uint8) -> 8-bit PNG/JPEG, written atomically."""
    from PIL import Image

    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:
        img = img.transpose(1, 2, 0)
    if img.dtype != np.uint8:
        img = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(img), "RGB").save(tmp)


def encode_depth_uint16(depth: np.ndarray, scale: float) -> np.ndarray:
    """Metres -> uint16 ``round(depth * scale)``; invalid, non-finite or unrepresentable -> 0."""
    d = np.asarray(depth, dtype=np.float64)
    q = np.round(np.where(np.isfinite(d), d, 0.0) * scale)
    q[(q < 1) | (q > 65535)] = 0
    return q.astype(np.uint16)


def write_png16(path: PathLike, values: np.ndarray) -> None:
    from PIL import Image

    arr = np.asarray(values)
    if arr.dtype != np.uint16:
        raise ValueError(f"write_png16 needs uint16, got {arr.dtype}")
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(arr)).save(tmp)


def write_matrix(path: PathLike, K: np.ndarray) -> None:
    K = np.asarray(K, dtype=np.float64).reshape(3, 3)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(" ".join(f"{v:.10g}" for v in row) for row in K) + "\n")


def write_text(path: PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_folder_sample(root: PathLike, name: str, image: np.ndarray, depth: np.ndarray,
                        K: Optional[np.ndarray] = None, depth_suffix: str = "_depth") -> Dict[str, Path]:
    """Write one sample in the folder format: ``<name>.png``, ``<name>_depth.png`` (mm), ``<name>_K.txt``.

    ``depth`` is metres [H,W] (0/non-finite = invalid); values above 65.535 m cannot be
    stored in millimetres and are written as 0 (invalid). Returns the written paths.
    """
    root = Path(root)
    paths = {"image": root / f"{name}.png", "depth": root / f"{name}{depth_suffix}.png"}
    write_rgb(paths["image"], image)
    write_png16(paths["depth"], encode_depth_uint16(depth, 1000.0))
    if K is not None:
        paths["intrinsics"] = root / f"{name}_K.txt"
        write_matrix(paths["intrinsics"], K)
    return paths


# --------------------------------------------------------------------------- dataset


class FolderDepthDataset(Dataset):
    """Image/depth pairs in one folder tree (see module docstring for the layout): the
    ``type: folder`` training reader and the ``eval --dataset folder`` benchmark reader.

    Args:
        root: dataset folder.
        split_file: optional list of samples, one per line: ``<name>`` or ``<image path>``,
            optionally followed by ``<depth path>``, relative to ``root``. Without it every
            image under ``root`` that has a depth file is used.
        depth_suffix: depth file = image stem + suffix + extension of the format.
        depth_format: ``png16`` | ``npy`` | ``pfm`` | ``exr`` | ``tiff``.
        depth_scale: metres per stored unit; default 1/1000 for ``png16`` (millimetres),
            1 for the float formats. KITTI-style PNGs: 1/256.
        invalid_value: stored value meaning "no depth" (0 by default; None: only
            non-finite and non-positive values are invalid).
        max_depth: values at or beyond it are invalid (e.g. 655.35 m sky codes).
        intrinsics_suffix: ``<stem><suffix>.txt`` holds a 3x3 K (optional file).
        size: optional (H, W) to resize to.
    """

    split_key = None  # evaluation: no published split list

    def __init__(self, root: PathLike, split_file: Optional[PathLike] = None, depth_suffix: str = "_depth",
                 depth_format: str = "png16", depth_scale: Optional[float] = None,
                 invalid_value: Optional[float] = 0, max_depth: Optional[float] = None,
                 intrinsics_suffix: str = "_K", size: Optional[Sequence[int]] = None) -> None:
        self.root = dataset_root(root, "dataset folder")
        if depth_format not in DEPTH_FORMATS:
            raise InputError(f"unknown depth format {depth_format!r}; use one of {', '.join(DEPTH_FORMATS)}")
        self.depth_suffix = depth_suffix
        self.depth_format = depth_format
        self.depth_scale = float(depth_scale) if depth_scale is not None else (
            1e-3 if depth_format == "png16" else 1.0)
        self.invalid_value = invalid_value
        self.max_depth = max_depth
        self.intrinsics_suffix = intrinsics_suffix
        self.size = size
        self.depth_ext = DEPTH_FORMATS[depth_format]
        # items: (name, image path, depth path, split line or None)
        self.items: List[Tuple[str, Path, Path, Optional[SplitLine]]] = []
        if split_file is not None:
            for line in read_split(split_file):
                rel = line.fields[0]
                has_ext = Path(rel).suffix.lower() in IMAGE_EXTS
                name = rel[:-len(Path(rel).suffix)] if has_ext else rel
                depth = self.root / line.fields[1] if len(line.fields) > 1 else self._depth_path(name)
                self.items.append((name, self.root / rel if has_ext else self._image_path(name), depth, line))
        else:
            for path in sorted(self.root.rglob("*")):
                if path.suffix.lower() not in IMAGE_EXTS or not path.is_file():
                    continue
                if path.stem.endswith(self.depth_suffix) or path.name.startswith("."):
                    continue
                name = path.relative_to(self.root).with_suffix("").as_posix()
                depth = self._depth_path(name)
                if depth.is_file():
                    self.items.append((name, path, depth, None))
            if not self.items:
                raise InputError(f"no image with a '{self.depth_suffix}{self.depth_ext}' depth file found "
                                 f"under {self.root}")

    def _depth_path(self, name: str) -> Path:
        return self.root / f"{name}{self.depth_suffix}{self.depth_ext}"

    def _image_path(self, name: str) -> Path:
        for ext in IMAGE_EXTS:
            if (self.root / f"{name}{ext}").is_file():
                return self.root / f"{name}{ext}"
        return self.root / f"{name}.png"  # reported as missing on access

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Dict:
        name, img_path, depth_path, line = self.items[index]
        image = read_rgb(img_path, line)
        raw = read_depth_file(depth_path, self.depth_format, line)
        depth, valid = decode_depth(raw, self.depth_scale, self.invalid_value, self.max_depth)
        K_path = self.root / f"{name}{self.intrinsics_suffix}.txt"
        K = read_matrix(K_path, line) if K_path.is_file() else None
        return make_sample(name, image, depth, valid, K, self.size)
