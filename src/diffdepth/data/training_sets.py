"""Readers of the public synthetic training sets: Hypersim, Virtual KITTI 2, TartanAir.

Each is a map-style ``torch.utils.data.Dataset`` yielding the shared sample dict
(:mod:`diffdepth.data.folder`): ``name``, ``image`` float32 [3,H,W] in [0,1], ``depth``
float32 [1,H,W] planar metres (0 = invalid), ``valid`` bool [1,H,W], ``intrinsics``
float32 [3,3] scaled to the output size. Every reader takes ``root``, an optional
``split_file`` and an optional ``size=(H,W)``; a missing or corrupt file raises
:class:`~diffdepth.errors.InputError` naming it (and the split line).

Layouts:

``HypersimDataset`` (Roberts et al. 2021), two layouts:
    * ``processed`` — Marigold's preprocessing (``script/depth/dataset_preprocess/hypersim``):
      ``<scene>/rgb_cam_XX_frNNNN.png`` (tone-mapped 8-bit) and
      ``<scene>/depth_plane_cam_XX_frNNNN.png`` (uint16, *planar* depth in mm, 0 = invalid);
      split line ``<rgb> <depth>`` (``data_split/hypersim_depth/filename_list_train_filtered.txt``,
      relative to the split folder, e.g. ``processed/train``).
    * ``raw`` — the published HDF5 files:
      ``<scene>/images/scene_cam_XX_geometry_hdf5/frame.NNNN.depth_meters.hdf5`` (dataset
      ``dataset``: float16/32 *distance to the camera centre* in metres, NaN = no geometry),
      ``.../scene_cam_XX_geometry_hdf5/frame.NNNN.render_entity_id.hdf5`` (optional; -1 = no
      geometry) and ``.../scene_cam_XX_final_hdf5/frame.NNNN.color.hdf5`` (linear HDR RGB,
      tone-mapped here as Hypersim's tonemap script / Marigold do) or, with
      ``rgb_source="preview"``, ``.../scene_cam_XX_final_preview/frame.NNNN.tonemap.jpg``.
      Distance is converted to planar depth with a focal length of 886.81 px at 1024x768
      (:func:`diffdepth.geometry.distance_to_planar_depth`). Split: the official
      ``metadata_images_split_scene_v1.csv`` (``split=`` train/val/test, public frames only)
      or a text file with ``<scene> <camera> <frame>`` per line.
``VirtualKitti2Dataset`` (Cabon et al. 2020)
    ``<top>/SceneXX/<variation>/frames/rgb/Camera_K/rgb_NNNNN.jpg`` and
    ``<top>/SceneXX/<variation>/frames/depth/Camera_K/depth_NNNNN.png`` (uint16, centimetres;
    65535 = 655.35 m = sky -> invalid), intrinsics ``<top>/SceneXX/<variation>/intrinsic.txt``
    (header, then ``frame cameraID fx fy cx cy`` rows); ``<top>`` is any folder under root
    (``vkitti_2.0.3_rgb``, ``rgb``, ...). Split line ``<rgb> <depth>`` (Marigold's
    ``data_split/vkitti_depth/vkitti_train.txt``).
``TartanAirDataset`` (Wang et al. 2020)
    ``<env>/<Easy|Hard>/<Pxxx>/image_left/NNNNNN_left.png`` and
    ``<env>/<Easy|Hard>/<Pxxx>/depth_left/NNNNNN_left_depth.npy`` (float32 metres); pinhole
    fx = fy = 320, cx = 320, cy = 240 at 640x480 (scaled for other sizes). Split line:
    ``<image>`` or ``<image> <depth>``.
"""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from torch.utils.data import Dataset

from ..errors import InputError
from ..geometry import distance_to_planar_depth
from ..utils import PathLike
from .files import (SplitLine, dataset_root, decode_depth, read_npy, read_rgb, read_split, read_uint16_png,
                    require_file, where)
from .folder import make_sample

HYPERSIM_FOCAL = 886.81  # px at 1024x768
HYPERSIM_SIZE = (768, 1024)
TARTANAIR_K = np.array([[320.0, 0.0, 320.0], [0.0, 320.0, 240.0], [0.0, 0.0, 1.0]])
TARTANAIR_SIZE = (480, 640)
VKITTI2_SKY = 65535  # stored value of the 655.35 m far plane (sky)


def _read_h5(path: Path, line: Optional[SplitLine], key: str = "dataset") -> np.ndarray:
    import h5py

    require_file(path, line)
    try:
        with h5py.File(path, "r") as f:
            if key not in f:
                raise KeyError(f"no '{key}' dataset (has {', '.join(f.keys()) or 'nothing'})")
            return np.asarray(f[key])
    except Exception as err:
        raise InputError(f"cannot read HDF5 file {where(path, line)}: {err}") from None


def hypersim_tone_map(rgb: np.ndarray, valid: Optional[np.ndarray] = None) -> np.ndarray:
    """Hypersim's tone mapping of linear HDR colour (as in its ``scene_generate_images_tonemap.py``,
    used by Marigold's preprocessing): scale so that the 90th percentile of the brightness
    0.3 R + 0.59 G + 0.11 B over valid pixels becomes 0.8 after gamma 1/2.2, then apply
    the gamma and clip to [0,1]. ``rgb`` [H,W,3] -> float32 [H,W,3]."""
    rgb = np.asarray(rgb, dtype=np.float64)
    gamma = 1.0 / 2.2
    if valid is None:
        valid = np.isfinite(rgb).all(-1)
    brightness = 0.3 * rgb[..., 0] + 0.59 * rgb[..., 1] + 0.11 * rgb[..., 2]
    vals = brightness[valid & np.isfinite(brightness)]
    if vals.size == 0:
        scale = 1.0
    else:
        current = np.percentile(vals, 90)
        scale = 0.0 if current < 1e-4 else (0.8 ** (1.0 / gamma)) / current
    out = np.power(np.maximum(scale * np.nan_to_num(rgb), 0.0), gamma)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def hypersim_intrinsics(height: int, width: int, focal: float = HYPERSIM_FOCAL) -> np.ndarray:
    """K of a Hypersim frame of the given size: focal 886.81 px at width 1024, optical axis
    through the image centre ((W-1)/2, (H-1)/2 with integer pixel centres, the same model
    :func:`diffdepth.geometry.distance_to_planar_depth` uses)."""
    f = focal * width / HYPERSIM_SIZE[1]
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


class HypersimDataset(Dataset):
    """Hypersim in Marigold's processed layout or the raw HDF5 layout (see module docstring).

    Args:
        layout: ``auto`` (raw if ``root/*/images`` exists, else processed), ``processed`` or ``raw``.
        split: for the official CSV split file, which partition to read (train/val/test).
        rgb_source (raw): ``auto`` (color.hdf5, else the tonemap.jpg preview), ``hdf5`` or ``preview``.
        focal: focal length in px at 1024 wide (886.81 for every Hypersim camera).
    """

    def __init__(self, root: PathLike, split_file: Optional[PathLike] = None, size: Optional[Sequence[int]] = None,
                 layout: str = "auto", split: str = "train", rgb_source: str = "auto",
                 focal: float = HYPERSIM_FOCAL) -> None:
        self.root = dataset_root(root, "Hypersim root")
        if layout == "auto":
            layout = "raw" if any(self.root.glob("*/images")) else "processed"
        if layout not in ("processed", "raw"):
            raise InputError(f"unknown Hypersim layout {layout!r}; use auto, processed or raw")
        if rgb_source not in ("auto", "hdf5", "preview"):
            raise InputError(f"unknown rgb_source {rgb_source!r}; use auto, hdf5 or preview")
        self.layout, self.size, self.rgb_source, self.focal = layout, size, rgb_source, float(focal)
        # processed items: (rgb rel, depth rel, line); raw items: (scene, camera, frame, line)
        self.items: List[Tuple] = []
        if layout == "processed":
            if split_file is not None:
                for line in read_split(split_file, 2, "'<rgb> <depth>'"):
                    self.items.append((*line.fields[:2], line))
            else:
                for p in sorted(self.root.rglob("rgb_*.png")):
                    rel = p.relative_to(self.root).as_posix()
                    dep = re.sub(r"rgb_([^/]*)$", r"depth_plane_\1", rel)
                    if (self.root / dep).is_file():
                        self.items.append((rel, dep, None))
        else:
            if split_file is not None and str(split_file).endswith(".csv"):
                self.items = self._read_csv(Path(split_file), split)
            elif split_file is not None:
                for line in read_split(split_file, 3, "'<scene> <camera> <frame>'"):
                    self.items.append((line.fields[0], line.fields[1], int(line.fields[2]), line))
            else:
                for p in sorted(self.root.glob("*/images/scene_*_geometry_hdf5/frame.*.depth_meters.hdf5")):
                    scene = p.parents[2].name
                    cam = re.match(r"scene_(.+)_geometry_hdf5", p.parent.name).group(1)
                    frame = int(p.name.split(".")[1])
                    self.items.append((scene, cam, frame, None))
        if not self.items:
            raise InputError(f"no Hypersim samples ({layout} layout) found under {self.root}")

    @staticmethod
    def _read_csv(path: Path, split: str) -> List[Tuple]:
        if not path.is_file():
            raise InputError(f"split file {path} does not exist — check split_file: in the config")
        items = []
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                try:
                    public = str(row.get("included_in_public_release", "True")).strip().lower() == "true"
                    if public and row["split_partition_name"] == split:
                        items.append((row["scene_name"], row["camera_name"], int(row["frame_id"]), None))
                except KeyError as err:
                    raise InputError(f"{path} lacks the column {err}; expected Hypersim's "
                                     f"metadata_images_split_scene_v1.csv") from None
        return items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Dict:
        if self.layout == "processed":
            rgb_rel, dep_rel, line = self.items[index]
            image = read_rgb(self.root / rgb_rel, line)
            depth, valid = decode_depth(read_uint16_png(self.root / dep_rel, line), 1e-3, 0)
            h, w = depth.shape
            return make_sample(os.path.splitext(rgb_rel)[0], image, depth, valid,
                               hypersim_intrinsics(h, w, self.focal), self.size)
        scene, cam, frame, line = self.items[index]
        img_dir = self.root / scene / "images"
        geo = img_dir / f"scene_{cam}_geometry_hdf5"
        dist_path = geo / f"frame.{frame:04d}.depth_meters.hdf5"
        dist = _read_h5(dist_path, line).astype(np.float64)
        if dist.ndim != 2:
            raise InputError(f"{dist_path} holds shape {dist.shape}; expected [H,W] distances")
        ok = np.isfinite(dist) & (dist > 0)
        ent_path = geo / f"frame.{frame:04d}.render_entity_id.hdf5"
        if ent_path.is_file():
            ok &= _read_h5(ent_path, line) != -1
        h, w = dist.shape
        focal = self.focal * w / HYPERSIM_SIZE[1]
        planar = distance_to_planar_depth(np.where(ok, dist, 0.0), focal)
        depth, valid = decode_depth(np.where(ok, planar, 0.0), 1.0, 0)
        color_path = img_dir / f"scene_{cam}_final_hdf5" / f"frame.{frame:04d}.color.hdf5"
        preview = img_dir / f"scene_{cam}_final_preview" / f"frame.{frame:04d}.tonemap.jpg"
        use_hdf5 = self.rgb_source == "hdf5" or (self.rgb_source == "auto" and color_path.is_file())
        if use_hdf5:
            rgb = _read_h5(color_path, line)
            if rgb.shape != (h, w, 3):
                raise InputError(f"{color_path} holds shape {rgb.shape}; expected {(h, w, 3)}")
            image = hypersim_tone_map(rgb, ok).transpose(2, 0, 1).copy()
        else:
            image = read_rgb(preview, line)
        name = f"{scene}/images/scene_{cam}_final_hdf5/frame.{frame:04d}"
        return make_sample(name, image, depth, valid, hypersim_intrinsics(h, w, self.focal), self.size)


def read_vkitti2_intrinsics(path: PathLike) -> Dict[Tuple[int, int], np.ndarray]:
    """``intrinsic.txt`` of Virtual KITTI 2 -> {(frame, camera id): K}."""
    path = Path(path)
    out: Dict[Tuple[int, int], np.ndarray] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise InputError(f"cannot read {path}: {err}") from None
    for raw in lines:
        toks = raw.split()
        if len(toks) != 6 or not toks[0].lstrip("-").isdigit():
            continue  # header or blank
        fx, fy, cx, cy = (float(t) for t in toks[2:])
        out[(int(toks[0]), int(toks[1]))] = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64)
    if not out:
        raise InputError(f"{path} has no 'frame cameraID fx fy cx cy' rows")
    return out


_VK_RE = re.compile(r"(?P<scene>Scene\d+)/(?P<var>[^/]+)/frames/rgb/Camera_(?P<cam>\d+)/rgb_(?P<frame>\d+)\.\w+$")


class VirtualKitti2Dataset(Dataset):
    """Virtual KITTI 2 (see module docstring). ``max_depth``: depths at or beyond it are
    invalid (default 655.35 m, the sky code); training recipes usually cap at 80 m later."""

    def __init__(self, root: PathLike, split_file: Optional[PathLike] = None, size: Optional[Sequence[int]] = None,
                 max_depth: float = 655.35, cameras: Sequence[int] = (0, 1)) -> None:
        self.root = dataset_root(root, "Virtual KITTI 2 root")
        self.size, self.max_depth = size, float(max_depth)
        self._K: Dict[Path, Dict] = {}
        self.items: List[Tuple[str, str, Optional[SplitLine]]] = []  # (rgb rel, depth rel, line)
        if split_file is not None:
            for line in read_split(split_file, 2, "'<rgb> <depth>'"):
                if line.fields[1] != "None":
                    self.items.append((*line.fields[:2], line))
        else:
            for p in sorted(self.root.rglob("rgb_*.jpg")) + sorted(self.root.rglob("rgb_*.png")):
                rel = p.relative_to(self.root).as_posix()
                m = _VK_RE.search(rel)
                if m and int(m["cam"]) in cameras:
                    dep = self._find(m, "depth")
                    if dep is not None:
                        self.items.append((rel, dep.relative_to(self.root).as_posix(), None))
        if not self.items:
            raise InputError(f"no Virtual KITTI 2 rgb/depth pairs found under {self.root}")

    def _tops(self) -> List[Path]:
        return [self.root] + sorted(p for p in self.root.iterdir() if p.is_dir())

    def _find(self, m, what: str) -> Optional[Path]:
        if what == "depth":
            tail = Path(m["scene"], m["var"], "frames", "depth", f"Camera_{m['cam']}", f"depth_{m['frame']}.png")
        else:
            tail = Path(m["scene"], m["var"], "intrinsic.txt")
        for top in self._tops():
            if (top / tail).is_file():
                return top / tail
        return None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Dict:
        rgb_rel, dep_rel, line = self.items[index]
        image = read_rgb(self.root / rgb_rel, line)
        raw = read_uint16_png(self.root / dep_rel, line)
        depth, valid = decode_depth(raw, 0.01, 0, self.max_depth)
        valid &= raw != VKITTI2_SKY
        depth = np.where(valid, depth, 0.0).astype(np.float32)
        K = None
        m = _VK_RE.search(rgb_rel)
        if m is not None:
            kf = self._find(m, "intrinsic")
            if kf is not None:
                if kf not in self._K:
                    self._K[kf] = read_vkitti2_intrinsics(kf)
                table = self._K[kf]
                K = table.get((int(m["frame"]), int(m["cam"])))
                if K is None:
                    raise InputError(f"{where(kf, line)} has no row for frame {int(m['frame'])} camera {int(m['cam'])}")
        return make_sample(os.path.splitext(rgb_rel)[0], image, depth, valid, K, self.size)


class TartanAirDataset(Dataset):
    """TartanAir left-camera frames with their ``.npy`` depth (see module docstring).
    ``max_depth``: optional cap beyond which depth is invalid (TartanAir's sky is far but finite)."""

    def __init__(self, root: PathLike, split_file: Optional[PathLike] = None, size: Optional[Sequence[int]] = None,
                 max_depth: Optional[float] = None) -> None:
        self.root = dataset_root(root, "TartanAir root")
        self.size, self.max_depth = size, max_depth
        self.items: List[Tuple[str, str, Optional[SplitLine]]] = []
        if split_file is not None:
            for line in read_split(split_file):
                toks = line.fields
                self.items.append((toks[0], toks[1] if len(toks) > 1 else self._depth_rel(toks[0]), line))
        else:
            for p in sorted(self.root.rglob("image_left/*_left.png")):
                rel = p.relative_to(self.root).as_posix()
                dep = self._depth_rel(rel)
                if (self.root / dep).is_file():
                    self.items.append((rel, dep, None))
        if not self.items:
            raise InputError(f"no TartanAir image_left/*_left.png with depth_left/*_left_depth.npy under {self.root}")

    @staticmethod
    def _depth_rel(rgb_rel: str) -> str:
        p = Path(rgb_rel)
        return (p.parent.parent / "depth_left" / f"{p.stem}_depth.npy").as_posix()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Dict:
        rgb_rel, dep_rel, line = self.items[index]
        image = read_rgb(self.root / rgb_rel, line)
        raw = read_npy(self.root / dep_rel, line)
        raw = np.squeeze(raw)
        if raw.ndim != 2:
            raise InputError(f"depth {where(self.root / dep_rel, line)} has shape {raw.shape}; expected [H,W]")
        depth, valid = decode_depth(raw.astype(np.float32), 1.0, None, self.max_depth)
        h, w = depth.shape
        K = TARTANAIR_K.copy()
        K[0] *= w / TARTANAIR_SIZE[1]
        K[1] *= h / TARTANAIR_SIZE[0]
        return make_sample(os.path.splitext(rgb_rel)[0], image, depth, valid, K, self.size)
