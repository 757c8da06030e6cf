"""``diffdepth synth``: render procedural RGB-D scenes / camera sequences with exact ground truth."""
from __future__ import annotations

import argparse

HELP = ("render procedural RGB-D scenes (indoor rooms, streets) or a driving sequence with exact "
        "metric depth, intrinsics and poses, in the folder, NYUv2, KITTI or pseudo-label layout")


def _size(text: str):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW (e.g. 256x256), got {text!r}") from None
    if h < 8 or w < 8 or h > 8192 or w > 8192:
        raise argparse.ArgumentTypeError(f"size {text} out of range (8..8192 per side)")
    return h, w


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output folder (created; existing files with the same names are replaced)")
    p.add_argument("--kind", choices=("indoor", "outdoor", "sequence"), default="indoor",
                   help="rooms, street scenes, or one camera driving through a street (default indoor)")
    p.add_argument("--n", type=int, default=8, help="number of scenes (sequence: number of frames), default 8")
    p.add_argument("--size", type=_size, default=None,
                   help="HxW; default 256x256 (folder), 480x640 (nyu), 375x1242 (kitti), 192x640 (sequence)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed -> identical files (default 0)")
    p.add_argument("--layout", choices=("folder", "nyu", "kitti", "pseudo"), default=None,
                   help="folder (default for indoor/outdoor), nyu (Marigold NYUv2 test layout), kitti "
                        "(Marigold KITTI Eigen layout), pseudo (PrimeDepth pre-training folder: images, "
                        "depth as the teacher, object ids as segmentation, captions); sequence is always KITTI-raw-like")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import json

    from ..data.synth import write_dataset

    print(json.dumps(write_dataset(args.out, args.kind, args.n, args.size, args.seed, args.layout,
                                   progress=not args.quiet), indent=2))
    return 0
