"""Generic folder of RGB-D pairs, plus the small file helpers every reader in ``data/`` shares.

Folder format (written by ``diffdepth synth --layout folder``)::

    ROOT/<name>.png            8-bit RGB
    ROOT/<name>_depth.png      uint16, depth in millimetres (metres x 1000), 0 = invalid
    ROOT/<name>_K.txt          optional, 3x3 intrinsics in pixels, whitespace separated

``<name>`` may contain sub-folders. The depth encoding is configurable
(:class:`FolderDepthDataset` ``depth_format``/``depth_scale``/``invalid_value``) so
folders written by other tools (``.npy`` metres, KITTI-style PNG /256, PFM) read too.

Every reader yields the same sample dict::

    {"name": str,                      # relative path of the image without extension
     "image": float32 [3,H,W] in [0,1],
     "depth": float32 [1,H,W] metres, 0 where invalid,
     "valid": bool [1,H,W],
     "intrinsics": float32 [3,3]}      # only when known
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InputError
from ..geometry import scale_intrinsics
from ..utils import PathLike, atomic_path

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DEPTH_FORMATS = ("png16", "npy", "pfm", "exr", "tiff")

# --------------------------------------------------------------------------- reading


def _where(path: PathLike, line: Optional[str] = None) -> str:
    return f"{path}" + (f" (split line {line!r})" if line else "")


def require_file(path: PathLike, line: Optional[str] = None) -> Path:
    """``path`` as a Path, or InputError naming it (and the split line it came from)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"missing file {_where(path, line)}; check the dataset root and split file")
    return path


def read_rgb(path: PathLike, line: Optional[str] = None) -> np.ndarray:
    """8-bit image file -> float32 [3,H,W] in [0,1]."""
    from PIL import Image

    path = require_file(path, line)
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except Exception as err:  # PIL raises many kinds for corrupt files
        raise InputError(f"cannot read image {_where(path, line)}: {err}") from None
    return (arr.astype(np.float32) / 255.0).transpose(2, 0, 1).copy()


def read_png16(path: PathLike, line: Optional[str] = None) -> np.ndarray:
    """16-bit single-channel PNG -> uint16 [H,W] (raw values, no scaling)."""
    from PIL import Image

    path = require_file(path, line)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("I;16", "I;16B", "I;16L", "I", "L"):
                raise ValueError(f"expected a 16-bit single-channel PNG, got mode {im.mode}")
            arr = np.asarray(im)
    except Exception as err:
        raise InputError(f"cannot read 16-bit depth PNG {_where(path, line)}: {err}") from None
    if arr.dtype != np.uint16:
        if arr.min() < 0 or arr.max() > 65535:
            raise InputError(f"depth PNG {_where(path, line)} has values outside uint16")
        arr = arr.astype(np.uint16)
    return arr


def read_npy(path: PathLike, line: Optional[str] = None) -> np.ndarray:
    path = require_file(path, line)
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as err:
        raise InputError(f"cannot read .npy file {_where(path, line)}: {err}") from None
    return np.asarray(arr)


def read_pfm(path: PathLike, line: Optional[str] = None) -> np.ndarray:
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
            dtype = "<f4" if scale < 0 else ">f4"
            ch = 3 if header == b"PF" else 1
            data = np.frombuffer(f.read(), dtype=dtype, count=w * h * ch)
    except Exception as err:
        raise InputError(f"cannot read PFM file {_where(path, line)}: {err}") from None
    arr = data.reshape(h, w, ch)[..., 0]
    return np.flipud(arr).astype(np.float32)  # PFM stores the bottom row first


def read_depth_file(path: PathLike, depth_format: str, line: Optional[str] = None) -> np.ndarray:
    """Raw depth values [H,W] as stored (no scaling), for one of :data:`DEPTH_FORMATS`."""
    if depth_format == "png16":
        return read_png16(path, line)
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
            raise InputError(f"cannot read {depth_format} depth {_where(path, line)}: {err} "
                             f"(EXR needs an imageio plugin such as imageio[freeimage] or OpenEXR)") from None
    else:
        raise InputError(f"unknown depth format {depth_format!r}; use one of {', '.join(DEPTH_FORMATS)}")
    arr = np.squeeze(arr)
    if arr.ndim == 3:  # multi-channel float maps: first channel is depth
        arr = arr[..., 0] if arr.shape[-1] <= 4 else arr[0]
    if arr.ndim != 2:
        raise InputError(f"depth file {_where(path, line)} has shape {arr.shape}; expected [H,W]")
    return arr


def decode_depth(raw: np.ndarray, scale: float, invalid_value: Optional[float] = 0,
                 max_depth: Optional[float] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Raw stored values -> (depth metres float32 [H,W] with 0 where invalid, valid bool [H,W]).

    Invalid: equal to ``invalid_value``, non-finite, <= 0 after scaling, or >= ``max_depth``.
    """
    raw_f = raw.astype(np.float64)
    valid = np.isfinite(raw_f)
    if invalid_value is not None:
        valid &= raw_f != invalid_value
    depth = np.where(valid, raw_f * scale, 0.0)
    valid &= depth > 0
    if max_depth is not None:
        valid &= depth < max_depth
    depth = np.where(valid, depth, 0.0).astype(np.float32)
    return depth, valid


def read_matrix(path: PathLike, line: Optional[str] = None) -> np.ndarray:
    """A 3x3 intrinsics matrix from a text file (9 numbers) or ``fx fy cx cy`` (4 numbers)."""
    path = require_file(path, line)
    try:
        vals = [float(v) for v in re.split(r"[\s,]+", path.read_text().strip()) if v]
    except ValueError as err:
        raise InputError(f"cannot parse intrinsics file {_where(path, line)}: {err}") from None
    if len(vals) == 9:
        K = np.array(vals, dtype=np.float64).reshape(3, 3)
    elif len(vals) == 4:
        fx, fy, cx, cy = vals
        K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64)
    else:
        raise InputError(f"intrinsics file {_where(path, line)} has {len(vals)} numbers; "
                         f"expected 9 (a 3x3 matrix) or 4 (fx fy cx cy)")
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        raise InputError(f"intrinsics file {_where(path, line)} has non-positive focal lengths")
    return K


def read_split_file(path: PathLike) -> List[Tuple[str, List[str]]]:
    """Non-empty, non-comment lines of a split file as (line text, whitespace tokens)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"split file {path} does not exist; pass --split-file PATH")
    out = []
    for raw in path.read_text().splitlines():
        text = raw.strip()
        if text and not text.startswith("#"):
            out.append((text, text.split()))
    if not out:
        raise InputError(f"split file {path} lists no samples")
    return out


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
    # nearest on pixel centres: output pixel i samples input floor((i + 0.5) * h / th)
    ys = np.minimum(((np.arange(th) + 0.5) * h / th).astype(np.int64), h - 1)
    xs = np.minimum(((np.arange(tw) + 0.5) * w / tw).astype(np.int64), w - 1)
    for k in ("depth", "valid", "segmentation"):
        if k in sample:
            sample[k] = np.ascontiguousarray(sample[k][..., ys[:, None], xs[None, :]])
    if "intrinsics" in sample:
        sample["intrinsics"] = scale_intrinsics(sample["intrinsics"], tw / w, th / h).astype(np.float32)
    return sample


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
    """Image/depth pairs in one folder tree (see module docstring for the layout).

    Args:
        root: dataset folder.
        split_file: optional list of samples, one per line: ``<image path>`` (with or
            without extension) or ``<image path> <depth path>``, relative to ``root``.
            Without it every image under ``root`` that has a depth file is used.
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

    def __init__(self, root: PathLike, split_file: Optional[PathLike] = None, depth_suffix: str = "_depth",
                 depth_format: str = "png16", depth_scale: Optional[float] = None,
                 invalid_value: Optional[float] = 0, max_depth: Optional[float] = None,
                 intrinsics_suffix: str = "_K", size: Optional[Sequence[int]] = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"dataset folder {self.root} does not exist")
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
        self.depth_ext = {"png16": ".png", "npy": ".npy", "pfm": ".pfm", "exr": ".exr", "tiff": ".tiff"}[depth_format]
        # items: (name, image path, depth path, split line or None)
        self.items: List[Tuple[str, Path, Path, Optional[str]]] = []
        if split_file is not None:
            for text, toks in read_split_file(split_file):
                img = self._image_path(toks[0], text)
                name = os.path.splitext(toks[0])[0]
                depth = self.root / toks[1] if len(toks) > 1 else self._depth_path(name)
                self.items.append((name, img, depth, text))
        else:
            for path in sorted(self.root.rglob("*")):
                if path.suffix.lower() not in IMAGE_EXTS or not path.is_file():
                    continue
                stem = path.stem
                if stem.endswith(self.depth_suffix) or path.name.startswith("."):
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

    def _image_path(self, rel: str, line: str) -> Path:
        p = self.root / rel
        if p.suffix.lower() in IMAGE_EXTS:
            return p
        for ext in IMAGE_EXTS:
            if (self.root / f"{rel}{ext}").is_file():
                return self.root / f"{rel}{ext}"
        return self.root / f"{rel}.png"  # reported as missing on access

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
