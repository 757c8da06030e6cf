"""``diffdepth align``: metric depth from saved predictions and sparse known depths (anchors)."""
from __future__ import annotations

import argparse

HELP = "turn saved relative predictions into metric depth with sparse anchors (LiDAR, CSV points, sparse maps)"

_EPILOG = """\
examples:
  diffdepth align depth_out/ lidar/ --out metric/
  diffdepth align preds/ kitti_raw/velodyne/ --out metric/ --calib kitti_raw/2011_09_26

Anchors: ANCHORS/<name>.npy (float map in metres, 0/NaN = none), .png (16-bit, mm; KITTI /256 with
--png-scale kitti), .csv (x,y,depth rows) or .bin (KITTI Velodyne scan + its calibration), where
<name> is the prediction's path in PRED_DIR without .npy; ANCHORS may be one file for one prediction.
Outputs: OUT/<name>.npy (float32 metres, 0 = no depth), OUT/alignment.csv/.json, OUT/predictions.json.
"""


def add_anchor_options(p, prefix: str = "") -> None:
    """Fit options shared by ``align`` and ``predict --align-to``."""
    from ..evaluation.alignment import ANCHOR_FITS
    from ..data.anchors import PNG_SCALES

    p.add_argument(f"--{prefix}fit", choices=ANCHOR_FITS, default="auto",
                   help="auto (default): scale and shift for affine-invariant predictions, scale only for relative "
                        "or metric ones; scale or scale-shift to choose")
    p.add_argument(f"--{prefix}png-scale", choices=sorted(PNG_SCALES), default="mm",
                   help="16-bit PNG anchors: mm (value/1000, default) or kitti (value/256)")
    p.add_argument(f"--{prefix}calib", default=None, metavar="DIR",
                   help="folder with calib_cam_to_cam.txt + calib_velo_to_cam.txt for .bin anchors "
                        "(default: the nearest parent folder of the scan holding them)")
    p.add_argument(f"--{prefix}seed", type=int, default=0,
                   help="seed of the held-out 20%% of anchors and of the robust fit (default 0)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..types import DEPTH_KINDS

    parser.epilog = _EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("pred_dir", metavar="PRED_DIR", help="folder of .npy predictions (e.g. from diffdepth predict)")
    parser.add_argument("anchors", metavar="ANCHORS", help="folder of anchor files named like the predictions, or one file")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder for the metric depth")
    parser.add_argument("--kind", choices=DEPTH_KINDS, default=None,
                        help="what the predictions are (default: recorded in PRED_DIR/predictions.json or kind.txt)")
    add_anchor_options(parser)


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from ..data.anchors import PNG_SCALES
    from ..io.aligned import align_folder, print_report

    report = align_folder(args.pred_dir, args.anchors, args.out, kind=args.kind, fit=args.fit, seed=args.seed,
                          png_scale=PNG_SCALES[args.png_scale], calib=args.calib)
    return print_report(report, Path(args.out).expanduser(), sys.stderr)
