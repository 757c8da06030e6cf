"""``diffdepth bench``: speed/memory benchmarks that print ratios measured in one run."""
from __future__ import annotations

import argparse
import importlib

HELP = "benchmarks: taps | primedepth | marigold | seecoder-vpd | diffsql | native | gpu | pipeline"

BENCHMARKS = {
    "taps": "diffdepth.bench.taps",
    "primedepth": "diffdepth.bench.primedepth",
    "marigold": "diffdepth.bench.marigold",
    "seecoder-vpd": "diffdepth.bench.seecoder_vpd",
    "diffsql": "diffdepth.bench.diffsql",
    "native": "diffdepth.bench.native",
    "gpu": "diffdepth.bench.gpu",
    "pipeline": "diffdepth.bench.pipeline",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="benchmark", metavar="NAME", required=True)
    for name, module in BENCHMARKS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
            continue  # a benchmark not built yet is simply not offered
        q = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(q)
        q.set_defaults(_bench=mod.run)


def run(args: argparse.Namespace) -> int:
    from ..bench.common import finalize

    finalize(args)  # the common flags: aliases, defaults, refusals
    return int(args._bench(args) or 0)
