"""``diffdepth make-tiny``: a randomly initialised tiny model saved in the real format."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "write a tiny random model (offline smoke tests); without --method: a tiny Stable Diffusion folder"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="output folder")
    p.add_argument("--method", default=None, help="method id (see `diffdepth info`); default: the tiny SD backbone alone")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..utils import atomic_dir

    out = Path(args.dir).expanduser()
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise InputError(f"{out} exists and is not empty — choose another folder or pass --overwrite")
    with atomic_dir(out) as tmp:
        if args.method is None:
            from ..backbone import make_tiny_sd

            make_tiny_sd(seed=args.seed).save_pretrained(tmp)
            what = "tiny Stable Diffusion"
        else:
            from ..registry import get_method

            cls = get_method(args.method).load_class()
            cls.make_tiny(seed=args.seed).save_pretrained(tmp)
            what = f"tiny {args.method}"
    print(f"wrote {what} (random weights) to {out}")
    return 0
