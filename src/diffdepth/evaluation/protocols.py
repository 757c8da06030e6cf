"""Evaluation protocols: one :class:`Protocol` per benchmark (REFERENCE.md table).

A protocol fixes everything about scoring except the model: the valid ground-truth range,
the evaluation crop (a mask), the range predictions are clipped to, the default
alignment, the processing resolution used when a model is run, and the split.
Sources: Marigold's eval configs and dataset classes (prs-eth/Marigold ``config/dataset_depth``,
``src/dataset``, ``script/depth/eval``), Monodepth2's ``evaluate_depth.py`` and the
Make3D protocol of Godard et al. 2017 as used by Monodepth2-lineage papers.

Crops on known shapes (all row/column ranges are half-open ``[start, stop)``):

* ``nyu_eigen``: rows 45:471, cols 41:601 of the 480×640 NYUv2 frame (Eigen et al. 2014);
  other frame sizes get the same fractions, rounded.
* ``kitti_eigen``: rows ``int(0.3324324·H):int(0.91351351·H)``, cols
  ``int(0.0359477·W):int(0.96405229·W)`` (Eigen et al. 2014, as in Marigold / BTS).
* ``kitti_garg``: rows ``int(0.40810811·H):int(0.99189189·H)``, cols
  ``int(0.03594771·W):int(0.96405229·W)`` (Garg et al. 2016, as in Monodepth2 / Marigold).

``kitti_eigen_garg`` (VPD/ECoDepth ``--kitti_crop garg_crop --do_kb_crop``, metric models) is
``kitti_eigen``'s data with the Garg crop and 1e-3–80 m (metric predictions: no alignment).
For ``kitti_eigen`` (Marigold) the crop fractions apply to the KB-cropped 352×1216 frame;
for ``kitti_mono2`` (Monodepth2) to the full-resolution Velodyne ground truth.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from ..errors import InputError

# ---------------------------------------------------------------------------- crops
NYU_EIGEN_CROP = (45, 471, 41, 601)  # rows, cols on 480x640
NYU_FRAME = (480, 640)
KITTI_EIGEN_FRACTIONS = (0.3324324, 0.91351351, 0.0359477, 0.96405229)
KITTI_GARG_FRACTIONS = (0.40810811, 0.99189189, 0.03594771, 0.96405229)
KB_CROP = (352, 1216)


def nyu_eigen_crop_mask(shape: Tuple[int, int]) -> np.ndarray:
    """Eigen crop of NYUv2: rows 45:471, cols 41:601 on 480×640 (fractions on other sizes)."""
    h, w = shape
    r0, r1, c0, c1 = NYU_EIGEN_CROP
    if (h, w) != NYU_FRAME:
        r0, r1 = round(r0 / 480 * h), round(r1 / 480 * h)
        c0, c1 = round(c0 / 640 * w), round(c1 / 640 * w)
    mask = np.zeros((h, w), dtype=bool)
    mask[r0:r1, c0:c1] = True
    return mask


def _fraction_mask(shape, fractions) -> np.ndarray:
    h, w = shape
    a, b, c, d = fractions
    mask = np.zeros((h, w), dtype=bool)
    mask[int(a * h):int(b * h), int(c * w):int(d * w)] = True
    return mask


def kitti_eigen_crop_mask(shape: Tuple[int, int]) -> np.ndarray:
    """Eigen crop as fractions of the ground-truth frame (Marigold, BTS)."""
    return _fraction_mask(shape, KITTI_EIGEN_FRACTIONS)


def kitti_garg_crop_mask(shape: Tuple[int, int]) -> np.ndarray:
    """Garg crop as fractions of the ground-truth frame (Monodepth2)."""
    return _fraction_mask(shape, KITTI_GARG_FRACTIONS)


def kb_crop_box(height: int, width: int, size: Tuple[int, int] = KB_CROP) -> Optional[Tuple[int, int, int, int]]:
    """KITTI benchmark crop (top = H−352, left = int((W−1216)/2)) as ``(top, bottom, left, right)``.

    Returns ``None`` when the frame is smaller than 352×1216 (e.g. synthetic stand-ins).
    """
    ch, cw = size
    if height < ch or width < cw:
        return None
    top = int(height - ch)
    left = int((width - cw) / 2)
    return top, top + ch, left, left + cw


CROPS: Dict[str, Callable[[Tuple[int, int]], np.ndarray]] = {
    "nyu_eigen": nyu_eigen_crop_mask,
    "kitti_eigen": kitti_eigen_crop_mask,
    "kitti_garg": kitti_garg_crop_mask,
}


# ---------------------------------------------------------------------------- protocol
PRED_RESIZES = ("bilinear", "nearest", "disparity")


@dataclass(frozen=True)
class Protocol:
    """How one benchmark is scored.

    ``min_depth``/``max_depth``: the dataset range; predictions are clipped to it after
    alignment. ``gt_min``/``gt_max``: ground truth counts as valid where
    ``gt_min < g < gt_max`` (``None`` → the dataset range), combined with the reader's
    own validity (file masks, ``> 0``, finite) and the ``crop`` mask.
    ``processing_res``: long side a model runs at (0 = native size, ``None`` = the
    model's default). ``alignment``: default alignment (``auto`` = from the prediction
    kind). ``fit_max_res``: Marigold's ``--alignment_max_res``. ``pred_resize``: how a
    prediction of another size is resized to the ground truth (``bilinear``, ``nearest``, or
    ``disparity``: relative/metric depth resized bilinearly as its inverse, then inverted —
    Monodepth2's ``cv2.resize(pred_disp)`` then ``1 / pred_disp``; a model run by the
    evaluation maps its output back to the frame the same way).

    The Monodepth2-family protocols (``kitti_mono2``, ``kitti_mono2_improved``, ``make3d``)
    leave ``processing_res`` unset, so a model with a ``fixed_input_size`` (DiffSQL:
    640×192) is fed exactly that size, as Monodepth2 and SQLdepth evaluate.
    """

    name: str
    description: str
    reader: str  # class name in diffdepth.data.benchmarks
    split: str
    num_samples: int  # samples with ground truth in the published split
    min_depth: float
    max_depth: float
    gt_min: Optional[float] = None
    gt_max: Optional[float] = None
    crop: Optional[str] = None
    processing_res: Optional[int] = None
    alignment: str = "auto"
    fit_max_res: Optional[int] = None
    pred_resize: str = "bilinear"
    reader_options: Dict[str, object] = field(default_factory=dict)

    def __post_init__(self):
        if self.crop is not None and self.crop not in CROPS:
            raise ValueError(f"unknown crop {self.crop!r}; use one of {', '.join(CROPS)}")
        if self.pred_resize not in PRED_RESIZES:
            raise ValueError(f"unknown pred_resize {self.pred_resize!r}; use one of {', '.join(PRED_RESIZES)}")

    def with_overrides(self, **changes) -> "Protocol":
        """A copy with some fields changed (``None`` values are ignored)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if changes.get("crop") == "none":
            changes["crop"] = None
        return replace(self, **changes)

    def crop_mask(self, shape: Tuple[int, int]) -> np.ndarray:
        if self.crop is None:
            return np.ones(shape, dtype=bool)
        return CROPS[self.crop](tuple(shape))

    def eval_mask(self, depth: np.ndarray, valid: Optional[np.ndarray] = None) -> np.ndarray:
        """Pixels scored: reader validity ∧ ``gt_min < depth < gt_max`` ∧ crop. ``depth`` [H,W]."""
        depth = np.asarray(depth)
        depth = depth.reshape(depth.shape[-2:])
        lo = self.min_depth if self.gt_min is None else self.gt_min
        hi = self.max_depth if self.gt_max is None else self.gt_max
        with np.errstate(invalid="ignore"):
            mask = np.isfinite(depth) & (depth > lo) & (depth < hi)
        if valid is not None:
            mask &= np.asarray(valid, dtype=bool).reshape(depth.shape)
        return mask & self.crop_mask(depth.shape)

    def to_dict(self) -> dict:
        out = asdict(self)
        for k in ("max_depth", "gt_max", "gt_min", "min_depth"):
            if isinstance(out[k], float) and math.isinf(out[k]):
                out[k] = "inf"
        return out


_P = Protocol
PROTOCOLS: Dict[str, Protocol] = {p.name: p for p in [
    _P("nyuv2", "NYUv2 Eigen test split (654), Marigold layout or labeled .mat", "NYUv2",
       "test", 654, 1e-3, 10.0, crop="nyu_eigen", processing_res=0),
    _P("kitti_eigen", "KITTI Eigen test split as used by Marigold: 697 listed / 652 with "
       "ground truth (uint16/256), KB crop 352x1216, Eigen crop mask", "KittiEigen",
       "eigen_test_files_with_gt", 652, 1e-5, 80.0, crop="kitti_eigen", processing_res=0),
    _P("kitti_eigen_garg", "KITTI Eigen test split (652 with ground truth) as VPD / ECoDepth / BTS "
       "evaluate supervised models: KB crop 352x1216, Garg crop mask, 1e-3-80 m (metric: no alignment)",
       "KittiEigen", "eigen_test_files_with_gt", 652, 1e-3, 80.0, crop="kitti_garg", processing_res=0),
    _P("kitti_mono2", "KITTI Eigen test split (697) in the Monodepth2 protocol: ground truth "
       "projected from Velodyne scans, Garg crop, median scaling", "KittiVelodyne",
       "eigen/test_files", 697, 1e-3, 80.0, crop="kitti_garg", alignment="median", pred_resize="disparity"),
    _P("kitti_mono2_improved", "KITTI Eigen benchmark split (652) with the improved ground "
       "truth of the KITTI depth benchmark (uint16/256), gt > 0, median scaling",
       "KittiImprovedGT", "eigen_benchmark/test_files", 652, 1e-3, 80.0,
       gt_min=0.0, gt_max=math.inf, alignment="median", pred_resize="disparity"),
    _P("eth3d", "ETH3D (454), float32 raw 4032x6048 depth, inf = invalid", "ETH3D",
       "eth3d_filename_list", 454, 1e-5, math.inf, processing_res=756, fit_max_res=1024),
    _P("scannet", "ScanNet 800 sampled validation frames, uint16 mm", "ScanNet",
       "scannet_val_sampled_list_800_1", 800, 1e-3, 10.0, processing_res=0),
    _P("diode", "DIODE validation, indoor + outdoor (771), file masks", "DIODE",
       "diode_val_all", 771, 0.6, 350.0, gt_min=0.0, gt_max=math.inf, processing_res=640,
       reader_options={"subset": "all"}),
    _P("diode_indoor", "DIODE validation, indoor (325)", "DIODE", "diode_val_indoor", 325,
       0.6, 350.0, gt_min=0.0, gt_max=math.inf, processing_res=640,
       reader_options={"subset": "indoor"}),
    _P("diode_outdoor", "DIODE validation, outdoor (446)", "DIODE", "diode_val_outdoor", 446,
       0.6, 350.0, gt_min=0.0, gt_max=math.inf, processing_res=640,
       reader_options={"subset": "outdoor"}),
    _P("make3d", "Make3D test (134): 2:1 centre crop, depth rows 17:38, gt < 70 m (C1), "
       "median scaling", "Make3D", "test134", 134, 1e-3, 70.0, gt_min=0.0, gt_max=70.0,
       alignment="median", pred_resize="nearest"),
    _P("folder", "generic folder: <name>.png + <name>_depth.png (uint16 mm) [+ <name>_K.txt]",
       "FolderDepthDataset", "all", 0, 1e-3, 65.535),
]}

ALIASES = {"nyu": "nyuv2", "kitti": "kitti_eigen", "diode_all": "diode",
           "kitti_monodepth2": "kitti_mono2", "kitti_improved": "kitti_mono2_improved"}


def get_protocol(name: str) -> Protocol:
    key = ALIASES.get(name.lower(), name.lower())
    try:
        return PROTOCOLS[key]
    except KeyError:
        raise InputError(f"unknown dataset {name!r}; available: {', '.join(PROTOCOLS)}") from None
