"""Frame-triplet readers for self-supervised training (Monodepth2-style, Godard et al. 2019).

Each sample is a target frame and its temporal neighbours::

    {"name": str,                          # target image path without extension
     "frames": float32 [T,3,H,W] in [0,1], # order of ``frame_ids``: target 0, then -1, +1
     "frame_ids": [0, -1, 1],
     "intrinsics": float32 [3,3],          # scaled to the output resolution
     "depth": float32 [1,H,W], "valid": bool [1,H,W],   # of the target, when known
     "poses": float32 [T,4,4]}             # camera-to-world, when known

:class:`KittiRawSequences` reads the KITTI raw layout (and ``diffdepth synth --kind sequence``):
``<date>/calib_cam_to_cam.txt`` and ``<date>/<date>_drive_XXXX_sync/image_02/data/<%010d>.png``
(or ``.jpg``, as Monodepth2 converts them), with Monodepth2's split files
(``<date>/<drive> <frame_index> <l|r>`` per line, e.g. ``splits/eigen_zhou/train_files.txt``).
:class:`VideoFolderSequences` reads a user's folder of video frames with a user-supplied
intrinsics file — the custom-video path.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from torch.utils.data import Dataset

from ..errors import InputError
from ..utils import PathLike
from .files import (IMAGE_EXTS, KITTI_SIDES, SplitLine, dataset_root, decode_depth, kitti_frame, kitti_intrinsics,
                    missing_file, read_kitti_calib, read_matrix, read_poses, read_rgb, read_split, read_uint16_png)
from .folder import resize_sample

#: Monodepth2's KITTI training resolution (H, W)
KITTI_TRAIN_SIZE = (192, 640)


class KittiRawSequences(Dataset):
    """KITTI raw frame triplets with per-date intrinsics.

    Args:
        root: KITTI raw root (holding ``<date>/`` folders).
        split_file: Monodepth2 split (``<date>/<drive> <frame_index> <l|r>``); default:
            every frame of every drive under ``root`` whose neighbours exist (left camera).
        size: output (H, W), default (192, 640); None keeps the stored size.
        frame_ids: temporal offsets; the first must be 0 (the target).
        load_depth: also read the target's ground truth when present, uint16 /256:
            ``proj_depth/groundtruth/image_0X/`` (KITTI depth benchmark layout, also written by
            ``diffdepth synth``; looked up under ``<date>/<drive>/`` and ``<drive>/``) or
            ``<date>/<drive>/depth_0X/``.
        load_poses: also read ``<drive>/poses.txt`` (camera-to-world 3x4 per frame) when present.
    """

    def __init__(self, root: PathLike, split_file: Optional[PathLike] = None,
                 size: Optional[Sequence[int]] = KITTI_TRAIN_SIZE, frame_ids: Sequence[int] = (0, -1, 1),
                 load_depth: bool = True, load_poses: bool = True) -> None:
        self.root = dataset_root(root, "KITTI raw root")
        self.frame_ids = [int(f) for f in frame_ids]
        if not self.frame_ids or self.frame_ids[0] != 0:
            raise InputError(f"frame_ids must start with 0 (the target frame), got {list(frame_ids)}")
        self.size = size
        self.load_depth = load_depth
        self.load_poses = load_poses
        self._K: Dict[Tuple[str, int], np.ndarray] = {}
        self._poses: Dict[str, Optional[np.ndarray]] = {}
        # items: (folder, frame index, side, split line or None)
        self.items: List[Tuple[str, int, str, Optional[SplitLine]]] = []
        if split_file is not None:
            for line in read_split(split_file, 2, "'<folder> <frame_index> [l|r]'"):
                toks = line.fields
                side = toks[2] if len(toks) > 2 else "l"
                if side not in KITTI_SIDES:
                    raise InputError(f"side must be l or r, got {side!r} on {line.where()}")
                try:
                    idx = int(toks[1])
                except ValueError:
                    raise InputError(f"frame index {toks[1]!r} is not an integer on {line.where()}") from None
                self.items.append((toks[0], idx, side, line))
        else:
            for data_dir in sorted(self.root.glob("*/*_sync/image_02/data")):
                folder = data_dir.parent.parent.relative_to(self.root).as_posix()
                indices = sorted(int(p.stem) for p in data_dir.iterdir()
                                 if p.suffix.lower() in (".png", ".jpg") and p.stem.isdigit())
                present = set(indices)
                for i in indices:
                    if all(i + f in present for f in self.frame_ids):
                        self.items.append((folder, i, "l", None))
            if not self.items:
                raise InputError(f"no KITTI raw drive (<date>/<drive>_sync/image_02/data/*.png) with frame "
                                 f"triplets under {self.root}")

    def __len__(self) -> int:
        return len(self.items)

    def intrinsics(self, folder: str, cam: int, line: Optional[SplitLine] = None) -> np.ndarray:
        date = folder.split("/")[0]
        key = (date, cam)
        if key not in self._K:
            self._K[key] = kitti_intrinsics(read_kitti_calib(self.root / date / "calib_cam_to_cam.txt", line), cam)
        return self._K[key]

    def _depth_file(self, folder: str, index: int, cam: int) -> Optional[Path]:
        drive = folder.split("/")[-1]
        name = f"{index:010d}.png"
        for p in (self.root / folder / f"depth_0{cam}" / name,
                  self.root / folder / "proj_depth" / "groundtruth" / f"image_0{cam}" / name,
                  self.root / drive / "proj_depth" / "groundtruth" / f"image_0{cam}" / name):
            if p.is_file():
                return p
        return None

    def __getitem__(self, index: int) -> Dict:
        folder, idx, side, line = self.items[index]
        cam = KITTI_SIDES[side]
        paths = [kitti_frame(self.root, folder, cam, idx + f) for f in self.frame_ids]
        for f, p in zip(self.frame_ids, paths):
            if p is None:
                missing = self.root / folder / f"image_0{cam}" / "data" / f"{idx + f:010d}.png"
                raise InputError(f"{missing_file(missing, line)} (frame {f:+d} of {folder} {idx})")
        frames = [read_rgb(p, line) for p in paths]
        shapes = {fr.shape for fr in frames}
        if len(shapes) != 1:
            raise InputError(f"frames of {folder} around {idx} have different sizes {sorted(shapes)}")
        target = paths[0]
        sample: Dict = {
            "name": target.relative_to(self.root).with_suffix("").as_posix(),
            "frames": np.stack(frames, 0),  # [T,3,H,W]
            "frame_ids": list(self.frame_ids),
            "intrinsics": self.intrinsics(folder, cam, line).astype(np.float32),
        }
        if self.load_depth:
            dp = self._depth_file(folder, idx, cam)
            if dp is not None:
                depth, valid = decode_depth(read_uint16_png(dp, line), 1.0 / 256.0, 0)
                if depth.shape != frames[0].shape[-2:]:
                    raise InputError(f"depth {dp} is {depth.shape} but the image is {frames[0].shape[-2:]}")
                sample["depth"], sample["valid"] = depth[None], valid[None]
        if self.load_poses:
            if folder not in self._poses:
                pf = self.root / folder / "poses.txt"
                self._poses[folder] = read_poses(pf) if pf.is_file() else None
            poses = self._poses[folder]
            if poses is not None:
                ids = [idx + f for f in self.frame_ids]
                if max(ids) >= len(poses) or min(ids) < 0:
                    raise InputError(f"{self.root / folder / 'poses.txt'} has {len(poses)} poses; "
                                     f"frame {max(ids)} asked for")
                sample["poses"] = poses[ids].astype(np.float32)
        return resize_sample(sample, self.size)


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


class VideoFolderSequences(Dataset):
    """Frame triplets from a user's folder(s) of video frames (the custom-video path).

    ``root`` holds the frames (any of png/jpg, ordered by natural sort of the file names);
    every sub-folder that holds frames is treated as a separate clip. ``intrinsics_file``
    holds ``fx fy cx cy`` or a 3x3 matrix, in pixels of the *original* frames; K is scaled to
    ``size``. ``stride`` spaces the neighbours (frame ids are multiplied by it).
    """

    def __init__(self, root: PathLike, intrinsics_file: PathLike, size: Optional[Sequence[int]] = None,
                 frame_ids: Sequence[int] = (0, -1, 1), stride: int = 1) -> None:
        self.root = dataset_root(root, "video frame folder")
        self.K = read_matrix(intrinsics_file)
        self.frame_ids = [int(f) for f in frame_ids]
        if not self.frame_ids or self.frame_ids[0] != 0:
            raise InputError(f"frame_ids must start with 0 (the target frame), got {list(frame_ids)}")
        if stride < 1:
            raise InputError(f"stride must be >= 1, got {stride}")
        self.stride = int(stride)
        self.size = size
        self.clips: List[List[Path]] = []
        dirs = [self.root] + sorted(p for p in self.root.rglob("*") if p.is_dir())
        for d in dirs:
            frames = sorted((p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS
                             and not p.name.startswith(".")), key=_natural_key)
            if frames:
                self.clips.append(frames)
        offsets = [f * self.stride for f in self.frame_ids]
        lo, hi = -min(offsets), max(offsets)
        self.items = [(c, i) for c, frames in enumerate(self.clips) for i in range(lo, len(frames) - hi)]
        if not self.items:
            raise InputError(f"no frame triplets in {self.root}: need at least {lo + hi + 1} frames in a folder")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Dict:
        c, i = self.items[index]
        paths = [self.clips[c][i + f * self.stride] for f in self.frame_ids]
        frames = [read_rgb(p) for p in paths]
        shapes = {fr.shape for fr in frames}
        if len(shapes) != 1:
            raise InputError(f"frames {', '.join(str(p) for p in paths)} have different sizes")
        sample = {
            "name": paths[0].relative_to(self.root).with_suffix("").as_posix(),
            "frames": np.stack(frames, 0),  # [T,3,H,W]
            "frame_ids": list(self.frame_ids),
            "intrinsics": self.K.astype(np.float32),
        }
        return resize_sample(sample, self.size)
