"""``diffdepth train CONFIG [key=value ...] [--resume] [--debug] [--output-dir DIR]``."""
from __future__ import annotations

import argparse

HELP = "train or fine-tune a method from a YAML recipe (see configs/README.md)"

EPILOG = """\
examples:
  diffdepth train configs/marigold/debug.yaml
  diffdepth train configs/marigold/train.yaml train.max_steps=20000 optim.lr=3e-5
  diffdepth train configs/marigold/train.yaml --output-dir runs/mg --resume
  accelerate launch --multi_gpu --num_processes 8 -m diffdepth.cli train configs/marigold/train.yaml
  torchrun --nproc_per_node 8 -m diffdepth.cli train configs/marigold/train.yaml
keys, launching on several machines and resuming: configs/README.md
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("config", help="YAML recipe (may use `base:` inheritance)")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, metavar="key=value",
                        help="override config keys, e.g. train.max_steps=100 optim.lr=1e-5 (values parsed as YAML); "
                             "the options below may come before or after them")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest complete checkpoint of the run folder (--output-dir / "
                             "output_dir, else the newest runs/<config-name>-* folder)")
    parser.add_argument("--debug", action="store_true",
                        help="smoke run: cap steps, batch and data (same as debug=true)")
    parser.add_argument("--output-dir", default=None, help="run folder (overrides output_dir)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def config_name(path) -> str:
    """``configs/marigold/debug.yaml`` -> ``marigold-debug``."""
    from pathlib import Path

    p = Path(path)
    parent = p.resolve().parent.name
    return f"{parent}-{p.stem}" if parent and parent != "configs" else p.stem


def resolve_run_dir(cfg: dict, config_path, resume: bool):
    """The run folder: ``output_dir`` if set, else ``runs/<config-name>-<timestamp>``
    (with ``--resume``: the newest existing ``runs/<config-name>-*`` folder)."""
    import time
    from pathlib import Path

    from .. import distributed

    if cfg["output_dir"]:
        return Path(cfg["output_dir"])
    name = config_name(config_path)
    if resume:
        found = sorted(p for p in Path("runs").glob(f"{name}-*") if p.is_dir())
        if found:
            return found[-1]
    stamp = distributed.broadcast_object(time.strftime("%Y%m%d-%H%M%S"))
    return Path("runs") / f"{name}-{stamp}"


def split_remainder(args: argparse.Namespace) -> list:
    """Options written after the first override land in ``args.overrides``; move them back."""
    from ..errors import ConfigError

    rest = list(args.overrides or [])
    overrides = []
    i = 0
    while i < len(rest):
        tok = rest[i]
        if tok in ("--resume", "--debug", "--print-config"):
            setattr(args, tok[2:].replace("-", "_"), True)
        elif tok == "--output-dir" or tok.startswith("--output-dir="):
            if "=" in tok:
                args.output_dir = tok.split("=", 1)[1]
            elif i + 1 < len(rest):
                i += 1
                args.output_dir = rest[i]
            else:
                raise ConfigError("--output-dir needs a folder")
        elif tok.startswith("-"):
            raise ConfigError(f"unknown option {tok!r} (overrides look like key=value)")
        else:
            overrides.append(tok)
        i += 1
    return overrides


def run(args: argparse.Namespace) -> int:
    from ..training.config import dump_config, load_config

    overrides = split_remainder(args)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    cfg = load_config(args.config, overrides, debug=args.debug)
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    run_dir = resolve_run_dir(cfg, args.config, args.resume)
    cfg["output_dir"] = str(run_dir)

    from ..training.trainer import train

    result = train(cfg, run_dir, resume=args.resume)
    return 0 if result.get("step", 0) >= cfg["train"]["max_steps"] else 1
