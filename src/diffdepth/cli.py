"""The ``diffdepth`` command. It only parses arguments and calls library code.

Each sub-command lives in ``diffdepth/commands/<name>.py`` and exposes ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``; heavy imports happen inside ``run``.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from . import __version__
from .errors import DiffdepthError

COMMANDS = ("predict", "eval", "train", "bench", "synth", "make-tiny", "convert", "info", "demo", "align")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffdepth",
        description="Monocular depth estimation with a Stable Diffusion prior.",
    )
    parser.add_argument("--version", action="version", version=f"diffdepth {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"diffdepth.commands.{name.replace('-', '_')}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _quiet_third_party() -> None:
    """Our own progress bars only: no per-shard bars from transformers/hub downloads."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when huggingface_hub is imported
    from transformers.utils import logging as tlog

    tlog.disable_progress_bar()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    _quiet_third_party()
    try:
        return int(args._run(args) or 0)
    except DiffdepthError as err:
        print(f"diffdepth {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"diffdepth {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
