"""Readers of the evaluation benchmarks, each in its published file layout.

Every reader takes ``root`` (the dataset folder) and an optional ``split_file``; without
one, the published split list is downloaded from its public repository (raw GitHub) and
cached under ``~/.cache/diffdepth/splits`` (``$DIFFDEPTH_CACHE/splits``). Indexing a
reader yields a dict::

    {"name": str,            # relative image path without extension (predictions: <name>.npy)
     "image_path": str,      # relative image path as listed
     "image": float32 [3,H,W] in [0,1],
     "depth": float32 [1,h,w] metres (0 = invalid),
     "valid": bool [1,h,w],  # reader-level validity: finite, > 0, file mask
     "intrinsics": float64 [3,3] or None}

(``h,w`` equal ``H,W`` except for Make3D, whose laser grid is 21×305.) A missing file
raises :class:`~diffdepth.errors.InputError` naming the file and the split line.

Layouts and split-file formats (split files: one sample per line, whitespace-separated
fields, paths relative to ``root``; blank lines and ``#`` comments ignored):

``NYUv2`` (Marigold's extraction of the labeled set)
    ``test/<scene>/rgb_XXXX.png`` (8-bit RGB 640×480), ``test/<scene>/depth_XXXX.png``
    (uint16, millimetres, raw Kinect depth, 0 = invalid), optional ``filled_XXXX.png``.
    Split line: ``rgb depth [filled]``
    (prs-eth/Marigold ``data_split/nyu_depth/labeled/filename_list_test.txt``, 654 lines).
    Alternatively ``root`` is ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5: ``images``
    [N,3,W,H] uint8, ``rawDepths`` [N,W,H] metres) and the split file is ``splits.mat``
    (``testNdxs``, 1-based) or a text file of 1-based indices.
``KittiEigen`` (Marigold)
    Split line: ``<image> <depth|None> <focal>``, e.g. ``2011_09_26/2011_09_26_drive_0002_sync/
    image_02/data/0000000069.png 2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/
    0000000069.png 721.5377`` (``data_split/kitti_depth/eigen_test_files_with_gt.txt``:
    697 lines, 45 with ``None`` are skipped → 652). Depth: uint16 PNG, metres × 256.
    Image and depth are KB-cropped to 352×1216 (frames smaller than that are left whole).
``KittiVelodyne`` (Monodepth2 ``splits/eigen/test_files.txt``, 697 lines)
    Split line: ``<date>/<drive> <frame> <l|r>``. Image
    ``<date>/<drive>/image_02/data/<frame:010d>.png`` (or ``.jpg``; ``r`` → ``image_03``),
    scan ``<date>/<drive>/velodyne_points/data/<frame:010d>.bin`` (float32 x,y,z,r),
    calibration ``<date>/calib_cam_to_cam.txt`` and ``<date>/calib_velo_to_cam.txt``.
    Ground truth = :func:`velodyne_depth_map` (camera 2, as Monodepth2's export script).
``KittiImprovedGT`` (Monodepth2 ``splits/eigen_benchmark/test_files.txt``, 652 lines)
    Same split format (frame not zero-padded); depth
    ``<date>/<drive>/proj_depth/groundtruth/image_02/<frame:010d>.png`` (uint16 /256; also
    found under ``<drive>/…``, ``train/<drive>/…`` or ``val/<drive>/…``).
``ETH3D`` (Marigold)
    Split line: ``rgb/<scene>/images/dslr_images/DSC_XXXX.JPG depth/<scene>_dslr_depth/<scene>/
    ground_truth_depth/dslr_images/DSC_XXXX.JPG`` — the depth "JPG" is raw little-endian
    float32 of shape 4032×6048 (``shape`` parameter), ``inf`` = invalid.
``ScanNet`` (Marigold)
    Split line: ``<scene>/color/XXXXXX.jpg <scene>/depth/XXXXXX.png`` (uint16 mm).
``DIODE`` (Marigold; ``subset`` all / indoor / outdoor)
    Split line: ``<path>.png <path>_depth.npy <path>_depth_mask.npy`` (depth [H,W,1] float
    metres, mask [H,W] 0/1).
``Make3D``
    ``Test134/img-<id>.jpg`` (2272×1704 portrait) and ``Gridlaserdata/depth_sph_corr-<id>.mat``
    (``Position3DGrid`` 55×305×4, channel 3 = depth in metres). Split: optional, one ``<id>``
    (or ``img-<id>.jpg``) per line; default: every image in ``Test134``. The image is cut to
    its central 2:1 band (rows 710:1562), the depth to rows 17:38 (21×305).
``folder``: :class:`diffdepth.data.folder.FolderDepthDataset` (the training reader too; its samples
    are :func:`~diffdepth.data.folder.make_sample` dicts: no ``image_path``, float32 ``intrinsics``
    only when a K file exists).
"""
from __future__ import annotations

import os
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..errors import InputError
from ..utils import PathLike, atomic_path
from .files import (KITTI_SIDES, SplitLine, decode_depth, kitti_frame, kitti_intrinsics, load_velodyne, missing_file,
                    read_kitti_calib, read_npy, read_poses, read_rgb, read_split, read_uint16_png, require_file)
from .folder import FolderDepthDataset

_MARIGOLD = "https://raw.githubusercontent.com/prs-eth/Marigold/main/data_split/"
_MONODEPTH2 = "https://raw.githubusercontent.com/nianticlabs/monodepth2/master/splits/"
#: published split lists (key → raw URL)
SPLIT_URLS: Dict[str, str] = {
    "nyuv2": _MARIGOLD + "nyu_depth/labeled/filename_list_test.txt",
    "kitti_eigen": _MARIGOLD + "kitti_depth/eigen_test_files_with_gt.txt",
    "eth3d": _MARIGOLD + "eth3d_depth/eth3d_filename_list.txt",
    "scannet": _MARIGOLD + "scannet_depth/scannet_val_sampled_list_800_1.txt",
    "diode_all": _MARIGOLD + "diode_depth/diode_val_all_filename_list.txt",
    "diode_indoor": _MARIGOLD + "diode_depth/diode_val_indoor_filename_list.txt",
    "diode_outdoor": _MARIGOLD + "diode_depth/diode_val_outdoor_filename_list.txt",
    "kitti_mono2": _MONODEPTH2 + "eigen/test_files.txt",
    "kitti_mono2_improved": _MONODEPTH2 + "eigen_benchmark/test_files.txt",
}


# ---------------------------------------------------------------------------- split lists
def cache_dir() -> Path:
    base = os.environ.get("DIFFDEPTH_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "diffdepth") / "splits"


def fetch_split(key: str, timeout: float = 20.0) -> Path:
    """Local path of the published split list ``key`` (downloaded once, then cached)."""
    try:
        url = SPLIT_URLS[key]
    except KeyError:
        raise InputError(f"no published split list for {key!r} — pass --split-file PATH") from None
    local = cache_dir() / url.split("://", 1)[1].split("/", 1)[1]  # owner/repo/branch/path
    if local.is_file():
        return local
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data = resp.read()
    except Exception as err:  # offline, DNS, HTTP errors
        raise InputError(f"could not download the {key} split list from {url} ({type(err).__name__}; "
                         f"offline?) — pass --split-file PATH with a local copy") from None
    with atomic_path(local) as tmp:
        tmp.write_bytes(data)
    return local


# ---------------------------------------------------------------------------- samples
def _sample(name, image_path, image, depth, valid=None, intrinsics=None, **extra) -> dict:
    depth, ok = decode_depth(np.asarray(depth, dtype=np.float32), 1.0, None)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
        depth = np.where(ok, depth, 0.0).astype(np.float32)
    out = {"name": name, "image_path": image_path, "image": image, "depth": depth[None],
           "valid": ok[None], "intrinsics": intrinsics}
    out.update(extra)
    return out


def _stem(rel: str) -> str:
    p = Path(rel)
    return str(p.with_suffix("")) if p.suffix else rel


# ---------------------------------------------------------------------------- base class
class BenchmarkDataset:
    """A list of samples from a split file, read lazily. Subclasses set ``split_key``
    and implement ``_parse`` (split lines → entries) and ``_load`` (entry → sample)."""

    split_key: Optional[str] = None
    min_fields = 1

    def __init__(self, root: PathLike, split_file: Optional[PathLike] = None):
        self.root = Path(root).expanduser()
        if not self.root.exists():
            raise InputError(f"dataset root {self.root} does not exist — check --data-root")
        self.entries = self._parse(self._split_lines(split_file))
        self.num_listed = getattr(self, "num_listed", len(self.entries))

    def _split_lines(self, split_file) -> List[SplitLine]:
        return read_split(split_file if split_file is not None else fetch_split(self.split_key), self.min_fields)

    def _parse(self, lines: List[SplitLine]) -> list:
        return lines

    def _load(self, entry) -> dict:  # pragma: no cover
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        return self._load(self.entries[index])

    def __iter__(self) -> Iterator[dict]:
        for i in range(len(self)):
            yield self[i]

    @property
    def names(self) -> List[str]:
        return [self._name(e) for e in self.entries]

    def _name(self, entry) -> str:
        return _stem(entry.fields[0])


# ---------------------------------------------------------------------------- NYUv2
class _MillimetrePngPairs(BenchmarkDataset):
    """Split lines ``<rgb> <depth> ...`` with depth as uint16 PNG in millimetres."""

    min_fields = 2

    def _load(self, line: SplitLine) -> dict:
        rgb, depth = line.fields[0], line.fields[1]
        image = read_rgb(self.root / rgb, line)
        d = decode_depth(read_uint16_png(self.root / depth, line), 1e-3)[0]
        return _sample(_stem(rgb), rgb, image, d)


class NYUv2(_MillimetrePngPairs):
    """NYUv2 Eigen test split (654) in Marigold's extracted layout; depth = raw, mm → m."""

    split_key = "nyuv2"


class NYUv2Labeled(BenchmarkDataset):
    """NYUv2 from ``nyu_depth_v2_labeled.mat`` (HDF5) + ``splits.mat`` (``testNdxs``, 1-based)."""

    MAT_NAME = "nyu_depth_v2_labeled.mat"

    def __init__(self, root: PathLike, split_file: Optional[PathLike] = None):
        root = Path(root).expanduser()
        self.mat_path = root / self.MAT_NAME if root.is_dir() else root
        if not self.mat_path.is_file():
            raise InputError(f"{self.mat_path} does not exist — pass the labeled .mat or its folder as --data-root")
        if split_file is None:
            guess = self.mat_path.parent / "splits.mat"
            if not guess.is_file():
                raise InputError("the labeled NYUv2 .mat needs the official splits.mat (testNdxs) — "
                                 "pass --split-file splits.mat")
            split_file = guess
        self.root = self.mat_path.parent
        self.entries = self._read_indices(Path(split_file))
        self.num_listed = len(self.entries)
        self._h5 = None

    @staticmethod
    def _read_indices(path: Path) -> List[int]:
        if path.suffix == ".mat":
            from scipy.io import loadmat

            try:
                idx = loadmat(str(path))["testNdxs"]
            except (OSError, ValueError, KeyError) as err:
                raise InputError(f"cannot read testNdxs from {path} ({type(err).__name__})") from None
            return [int(i) for i in np.asarray(idx).ravel()]
        out = []
        for line in read_split(path):
            try:
                out.append(int(line.fields[0]))
            except ValueError:
                raise InputError(f"expected a 1-based image index: {line.where()}") from None
        return out

    def _file(self):
        if self._h5 is None:
            import h5py

            try:
                self._h5 = h5py.File(self.mat_path, "r")
            except OSError as err:
                raise InputError(f"cannot open {self.mat_path} as HDF5 (MATLAB v7.3) ({err})") from None
        return self._h5

    def _name(self, index: int) -> str:
        return f"{index:04d}"

    def _load(self, index: int) -> dict:
        f = self._file()
        n = f["images"].shape[0]
        if not 1 <= index <= n:
            raise InputError(f"index {index} is outside 1..{n} of {self.mat_path}")
        image = np.asarray(f["images"][index - 1], dtype=np.float32).transpose(0, 2, 1) / 255.0  # [3,H,W]
        depth = np.asarray(f["rawDepths"][index - 1], dtype=np.float32).T  # [H,W]
        return _sample(self._name(index), f"{index:04d}", np.ascontiguousarray(image), depth)


# ---------------------------------------------------------------------------- KITTI (Marigold)
class KittiEigen(BenchmarkDataset):
    """KITTI Eigen test split as in Marigold: 697 lines, those with ground truth (652)."""

    split_key = "kitti_eigen"
    min_fields = 2

    def __init__(self, root: PathLike, split_file: Optional[PathLike] = None, kb_crop: bool = True):
        self.kb_crop = kb_crop
        super().__init__(root, split_file)

    def _parse(self, lines):
        self.num_listed = len(lines)
        return [line for line in lines if line.fields[1] != "None"]

    def _load(self, line: SplitLine) -> dict:
        from ..evaluation.protocols import kb_crop_box

        rgb, depth = line.fields[0], line.fields[1]
        image = read_rgb(self.root / rgb, line)
        d = decode_depth(read_uint16_png(self.root / depth, line), 1 / 256)[0]
        if d.shape != image.shape[1:]:
            raise InputError(f"image {image.shape[1:]} and depth {d.shape} sizes differ: {line.where()}")
        full_shape, box = d.shape, None
        if self.kb_crop:
            box = kb_crop_box(*d.shape)
            if box is not None:
                t, b, l, r = box
                image, d = image[:, t:b, l:r], d[t:b, l:r]
        focal = float(line.fields[2]) if len(line.fields) > 2 else None
        sample = _sample(_stem(rgb), rgb, np.ascontiguousarray(image), d, focal=focal)
        if box is not None:  # lets saved full-frame predictions be cropped the same way
            sample["crop_box"], sample["full_shape"] = box, full_shape
        return sample


# ---------------------------------------------------------------------------- KITTI (Monodepth2)
def velodyne_projection(cam2cam: dict, velo2cam: dict, cam: int = 2) -> np.ndarray:
    """3×4 matrix ``P_rect_0{cam} @ R_rect_00 @ [R|T]_velo→cam`` (Geiger et al. 2013, KITTI raw devkit)."""
    rt = np.eye(4)
    rt[:3, :3] = np.asarray(velo2cam["R"], dtype=np.float64).reshape(3, 3)
    rt[:3, 3] = np.asarray(velo2cam["T"], dtype=np.float64).reshape(3)
    r_rect = np.eye(4)
    r_rect[:3, :3] = np.asarray(cam2cam["R_rect_00"], dtype=np.float64).reshape(3, 3)
    p_rect = np.asarray(cam2cam[f"P_rect_0{cam}"], dtype=np.float64).reshape(3, 4)
    return p_rect @ r_rect @ rt


def velodyne_depth_map(points: np.ndarray, cam2cam: dict, velo2cam: dict, cam: int = 2,
                       velo_depth: bool = True) -> np.ndarray:
    """Project Velodyne points to a sparse depth map as Monodepth2's ``export_gt_depth.py`` does.

    ``points`` [N,≥3] (x forward, y left, z up, [reflectance]). Steps: keep ``x >= 0``;
    project with :func:`velodyne_projection`; pixel = ``round(u) − 1, round(v) − 1`` (numpy
    round-half-to-even, and the −1 of the KITTI MATLAB devkit); keep pixels inside the
    ``S_rect_02`` frame (W×H); depth = the Velodyne forward coordinate ``x`` when
    ``velo_depth`` (Monodepth2's choice) else the projected camera z; the nearest depth
    wins per pixel; negative depths → 0. Returns float32 [H,W], 0 = no point.

    (Monodepth2 finds duplicate pixels through an off-by-one linear index that also merges
    pixel (r, W−1) with (r+1, 0); those columns lie outside the Garg crop, so the scored
    pixels are identical to this per-pixel minimum.)
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"points must be [N,>=3], got {pts.shape}")
    w, h = (int(v) for v in np.asarray(cam2cam["S_rect_02"]).ravel()[:2])
    pts = pts[pts[:, 0] >= 0]
    hom = np.concatenate([pts[:, :3], np.ones((len(pts), 1))], axis=1)  # [N,4]
    proj = hom @ velodyne_projection(cam2cam, velo2cam, cam).T  # [N,3]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.round(proj[:, 0] / proj[:, 2]) - 1
        v = np.round(proj[:, 1] / proj[:, 2]) - 1
        keep = (u >= 0) & (v >= 0) & (u < w) & (v < h)
    z = pts[:, 0] if velo_depth else proj[:, 2]
    u, v, z = u[keep].astype(np.int64), v[keep].astype(np.int64), z[keep]
    depth = np.full(h * w, np.inf)
    np.minimum.at(depth, v * w + u, z)
    depth[~np.isfinite(depth)] = 0.0
    depth[depth < 0] = 0.0
    return depth.reshape(h, w).astype(np.float32)


class _KittiMono2Base(BenchmarkDataset):
    min_fields = 2

    def __getitem__(self, index: int) -> dict:
        sample = self._load(self.entries[index])
        self._add_pose(sample, self.entries[index])
        return sample

    def _add_pose(self, sample: dict, line: SplitLine) -> None:
        """Where the drive folder has ``poses.txt`` (camera-to-world 3x4 per frame, as
        ``diffdepth synth --kind sequence`` writes; KITTI raw has none): ``pose`` [4,4],
        ``sequence`` (drive and camera) and ``intrinsics`` from ``P_rect_0X`` (the temporal
        consistency metric's inputs)."""
        folder, frame = line.fields[0], int(line.fields[1])
        poses_file = self.root / folder / "poses.txt"
        if not poses_file.is_file():
            return
        cache = self.__dict__.setdefault("_poses", {})
        if folder not in cache:
            cache[folder] = read_poses(poses_file)
        poses = cache[folder]
        if not 0 <= frame < len(poses):
            raise InputError(f"{poses_file} has {len(poses)} poses; frame {frame} has none: {line.where()}")
        cam = self._camera(line) or 2
        if sample.get("intrinsics") is None:
            calib = self.root / folder.split("/")[0] / "calib_cam_to_cam.txt"
            if not calib.is_file():
                return
            sample["intrinsics"] = kitti_intrinsics(calib, cam)
        sample["pose"] = poses[frame]
        sample["sequence"] = f"{folder}/image_0{cam}"

    @staticmethod
    def _camera(line: SplitLine) -> Optional[int]:
        """2 (left, ``l``) or 3 (right, ``r``) from the optional third field; None if unknown."""
        return KITTI_SIDES.get(line.fields[2] if len(line.fields) > 2 else "l")

    def _read_frame(self, line: SplitLine) -> Tuple[str, np.ndarray, str, int]:
        """(image path relative to the root, RGB, drive folder, frame index) of one split line."""
        folder, frame, cam = line.fields[0], int(line.fields[1]), self._camera(line)
        if cam is None:
            raise InputError(f"unknown side {line.fields[2]!r} (use l or r): {line.where()}")
        path = kitti_frame(self.root, folder, cam, frame)
        if path is None:
            raise missing_file(self.root / f"{folder}/image_0{cam}/data/{frame:010d}.png", line)
        return f"{folder}/image_0{cam}/data/{frame:010d}{path.suffix}", read_rgb(path, line), folder, frame

    def _name(self, line: SplitLine) -> str:
        return f"{line.fields[0]}/image_0{self._camera(line) or 2}/data/{int(line.fields[1]):010d}"


class KittiVelodyne(_KittiMono2Base):
    """Monodepth2's Eigen test split (697) with ground truth projected from the Velodyne scans."""

    split_key = "kitti_mono2"

    def _load(self, line: SplitLine) -> dict:
        rel, image, folder, frame = self._read_frame(line)
        calib_dir = self.root / folder.split("/")[0]
        velo = self.root / folder / "velodyne_points" / "data" / f"{frame:010d}.bin"
        scan = load_velodyne(velo, line)
        cam2cam = read_kitti_calib(calib_dir / "calib_cam_to_cam.txt", line)
        velo2cam = read_kitti_calib(calib_dir / "calib_velo_to_cam.txt", line)
        depth = velodyne_depth_map(scan, cam2cam, velo2cam, cam=2, velo_depth=True)
        K = kitti_intrinsics(cam2cam, 2)
        return _sample(self._name(line), rel, image, depth, intrinsics=K)


class KittiImprovedGT(_KittiMono2Base):
    """Monodepth2's Eigen-benchmark split (652) with the KITTI depth benchmark's improved ground truth."""

    split_key = "kitti_mono2_improved"

    def _load(self, line: SplitLine) -> dict:
        rel, image, folder, frame = self._read_frame(line)
        drive = folder.split("/")[-1]
        tail = f"proj_depth/groundtruth/image_02/{frame:010d}.png"
        candidates = [self.root / folder / tail, self.root / drive / tail,
                      self.root / "train" / drive / tail, self.root / "val" / drive / tail]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise missing_file(candidates[0], line)
        depth = decode_depth(read_uint16_png(found, line), 1 / 256)[0]
        return _sample(self._name(line), rel, image, depth)


# ---------------------------------------------------------------------------- ETH3D, ScanNet, DIODE
class ETH3D(BenchmarkDataset):
    """ETH3D (454 DSLR frames): depth is raw little-endian float32 ``shape`` = (4032, 6048), inf = invalid."""

    split_key = "eth3d"
    min_fields = 2
    SHAPE = (4032, 6048)

    def __init__(self, root: PathLike, split_file: Optional[PathLike] = None,
                 shape: Tuple[int, int] = SHAPE):
        self.shape = tuple(int(s) for s in shape)
        super().__init__(root, split_file)

    def _load(self, line: SplitLine) -> dict:
        rgb, depth_rel = line.fields[0], line.fields[1]
        image = read_rgb(self.root / rgb, line)
        path = require_file(self.root / depth_rel, line)
        raw = np.fromfile(path, dtype="<f4")
        h, w = self.shape
        if raw.size != h * w:
            raise InputError(f"{path} holds {raw.size} float32 values, expected {h}x{w}={h * w}: {line.where()}")
        return _sample(_stem(rgb), rgb, image, raw.reshape(h, w))  # inf -> 0 (invalid) there


class ScanNet(_MillimetrePngPairs):
    """ScanNet 800 sampled validation frames (Marigold): uint16 PNG, millimetres."""

    split_key = "scannet"


class DIODE(BenchmarkDataset):
    """DIODE validation (Marigold split): ``.npy`` depth + ``_depth_mask.npy``; ``subset`` all/indoor/outdoor."""

    min_fields = 3

    def __init__(self, root: PathLike, split_file: Optional[PathLike] = None, subset: str = "all"):
        if subset not in ("all", "indoor", "outdoor"):
            raise InputError(f"unknown DIODE subset {subset!r}; use all, indoor or outdoor")
        self.subset = subset
        self.split_key = f"diode_{subset}"
        super().__init__(root, split_file)

    def _load(self, line: SplitLine) -> dict:
        rgb, depth_rel, mask_rel = line.fields[:3]
        image = read_rgb(self.root / rgb, line)
        depth = np.asarray(read_npy(self.root / depth_rel, line), dtype=np.float32).squeeze()
        mask = np.asarray(read_npy(self.root / mask_rel, line)).squeeze().astype(bool)
        if depth.shape != mask.shape or depth.shape != image.shape[1:]:
            raise InputError(f"image {image.shape[1:]}, depth {depth.shape} and mask {mask.shape} "
                             f"sizes differ: {line.where()}")
        return _sample(_stem(rgb), rgb, image, depth, valid=mask)


# ---------------------------------------------------------------------------- Make3D
def make3d_image_rows(height: int, width: int) -> Tuple[int, int]:
    """Central 2:1 band: ``int((H − W/2)/2) : int((H + W/2)/2)`` → 710:1562 on 2272×1704."""
    band = int(width / 2)
    return int((height - band) / 2), int((height + band) / 2)


def make3d_depth_rows(height: int) -> Tuple[int, int]:
    """Laser rows matching the image band: ``int((55−21)/2) : int((55+21)/2)`` = 17:38 on 55 rows."""
    band = 21 if height == 55 else max(1, round(height * 21 / 55))
    return int((height - band) / 2), int((height + band) / 2)


class Make3D(BenchmarkDataset):
    """Make3D test set (134): ``Test134/img-<id>.jpg`` + ``Gridlaserdata/depth_sph_corr-<id>.mat``."""

    IMAGE_DIR, DEPTH_DIR = "Test134", "Gridlaserdata"

    def _split_lines(self, split_file):
        if split_file is not None:
            return read_split(split_file)
        folder = self.root / self.IMAGE_DIR
        if not folder.is_dir():
            raise InputError(f"{folder} does not exist — --data-root must hold Test134/ and Gridlaserdata/")
        files = sorted(p.name for p in folder.iterdir() if p.name.startswith("img-") and p.suffix.lower() == ".jpg")
        return [SplitLine(i + 1, f, (f,), str(folder)) for i, f in enumerate(files)]

    @staticmethod
    def _id(line: SplitLine) -> str:
        s = Path(line.fields[0]).name
        if s.startswith("img-"):
            s = s[4:]
        if s.lower().endswith(".jpg"):
            s = s[:-4]
        return s

    def _name(self, line: SplitLine) -> str:
        return f"{self.IMAGE_DIR}/img-{self._id(line)}"

    def _load(self, line: SplitLine) -> dict:
        ident = self._id(line)
        rgb = f"{self.IMAGE_DIR}/img-{ident}.jpg"
        image = read_rgb(self.root / rgb, line)
        r0, r1 = make3d_image_rows(*image.shape[1:])
        image = np.ascontiguousarray(image[:, r0:r1])
        mat = self.root / self.DEPTH_DIR / f"depth_sph_corr-{ident}.mat"
        require_file(mat, line)
        from scipy.io import loadmat

        try:
            grid = np.asarray(loadmat(str(mat))["Position3DGrid"], dtype=np.float32)
        except (OSError, ValueError, KeyError) as err:
            raise InputError(f"cannot read Position3DGrid from {mat} ({type(err).__name__})") from None
        depth = grid[:, :, 3]
        d0, d1 = make3d_depth_rows(depth.shape[0])
        return _sample(self._name(line), rgb, image, depth[d0:d1])


# ---------------------------------------------------------------------------- factory
READERS = {cls.__name__: cls for cls in (NYUv2, NYUv2Labeled, KittiEigen, KittiVelodyne, KittiImprovedGT,
                                          ETH3D, ScanNet, DIODE, Make3D, FolderDepthDataset)}


def open_benchmark(dataset: str, root: PathLike, split_file: Optional[PathLike] = None,
                   **options) -> BenchmarkDataset:
    """The reader of protocol ``dataset`` (see :mod:`diffdepth.evaluation.protocols`).

    For ``nyuv2`` a ``root`` that is a ``.mat`` file (or a folder holding
    ``nyu_depth_v2_labeled.mat`` but no ``test/``) selects :class:`NYUv2Labeled`.
    """
    from ..evaluation.protocols import get_protocol

    protocol = get_protocol(dataset)
    cls = READERS[protocol.reader]
    root = Path(root).expanduser()
    if cls is NYUv2 and (root.suffix == ".mat" or
                         (root.is_dir() and (root / NYUv2Labeled.MAT_NAME).is_file() and not (root / "test").is_dir())):
        cls = NYUv2Labeled
    kwargs = {**protocol.reader_options, **options}
    return cls(root, split_file, **kwargs)
