"""``diffdepth convert``: published checkpoints -> diffdepth format."""
from __future__ import annotations

import argparse
import importlib

HELP = "convert published weights: primedepth-official CKPT OUT | seecoder SAFETENSORS OUT | vpd CKPT OUT"

CONVERTERS = {
    "primedepth-official": "diffdepth.methods.primedepth.convert:convert_official",
    "seecoder": "diffdepth.methods.seecoder_vpd.convert:convert_seecoder",
    "vpd": "diffdepth.methods.seecoder_vpd.convert_vpd:convert_vpd",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=sorted(CONVERTERS), help="what the source is")
    p.add_argument("src", help="the published checkpoint file")
    p.add_argument("out", help="output folder")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="converter option (YAML-typed value); repeatable")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import InputError
    from .predict import _parse_opts

    if not Path(args.src).expanduser().is_file():
        raise InputError(f"{args.src}: no such file")
    module, _, name = CONVERTERS[args.kind].partition(":")
    convert = getattr(importlib.import_module(module), name)
    from ..utils import atomic_dir

    with atomic_dir(Path(args.out).expanduser()) as tmp:  # the folder appears complete or not at all
        report = convert(args.src, str(tmp), **_parse_opts(args.opt))
    unmapped, missing = report.get("unmapped", []), report.get("missing", [])
    print(f"converted {args.src} -> {args.out}")
    print(f"  unmapped source keys: {len(unmapped)}" + "".join(f"\n    {k}" for k in unmapped[:50]))
    print(f"  missing target keys: {len(missing)}" + "".join(f"\n    {k}" for k in missing[:50]))
    if len(unmapped) > 50 or len(missing) > 50:
        print("  (lists truncated at 50)")
    return 0
