"""``diffdepth eval``: score a model or a folder of saved predictions on a benchmark."""
from __future__ import annotations

import argparse

HELP = "evaluate a model (or saved predictions) on a depth benchmark with its published protocol"

_EPILOG = """\
examples:
  diffdepth eval --dataset nyuv2 --data-root ~/data/nyuv2 --method marigold --checkpoint prs-eth/marigold-depth-v1-1 --out runs/eval_nyu
  diffdepth eval --dataset kitti_eigen --data-root ~/data/kitti --predictions runs/eval_kitti/predictions --out runs/rescore
  diffdepth eval --dataset folder --data-root synth/ --predictions preds/ --kind metric_depth --out runs/synth

Predictions folder: one float32 .npy per sample at PRED_DIR/<name>.npy, <name> = the
sample's image path relative to --data-root without its extension; predictions.json
(written by `diffdepth predict`/`eval`) or kind.txt names the kind. Outputs: OUT/summary.json, OUT/summary.md, OUT/per_sample.csv
(+ OUT/predictions/ when a model is run).
"""


class _InOrder(argparse.Action):
    """Store the value (the last one wins) and record ``(flag, value)`` in order, to pair repeated
    ``--method``/``--checkpoint`` and ``--dataset``/``--data-root`` flags for a leaderboard."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.ordered_flags = [*(getattr(namespace, "ordered_flags", None) or []), (self.dest, values)]


def _alignment_type(check):
    def parse(text: str) -> str:
        try:
            return check(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..evaluation.alignment import ALIGNMENTS
    from ..evaluation.protocols import ALIASES, PROTOCOLS
    from ..types import DEPTH_KINDS

    parser.epilog = _EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--dataset", required=True, metavar="NAME", action=_InOrder,
                        help=f"benchmark protocol: {', '.join(PROTOCOLS)} (aliases: {', '.join(ALIASES)}); repeat "
                             f"--dataset/--data-root pairs to score models on several benchmarks in one table")
    parser.add_argument("--data-root", required=True, metavar="DIR", action=_InOrder,
                        help="dataset folder in its published layout")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--method", metavar="M", action=_InOrder,
                     help="method id to run (with --checkpoint); repeat --method/--checkpoint pairs to compare "
                          "several models in one leaderboard table")
    src.add_argument("--predictions", metavar="DIR", help="score saved predictions (<name>.npy) instead of a model")
    src.add_argument("--models", metavar="FILE.yaml",
                     help="leaderboard: a YAML list of models (method, checkpoint, label, options, ensemble_with, "
                          "processing_res, dtype) scored on the same samples into OUT/leaderboard.md + .csv")
    parser.add_argument("--checkpoint", metavar="C", action=_InOrder, help="checkpoint folder or hub id for --method")
    parser.add_argument("--split-file", metavar="F",
                        help="local copy of the split list (default: download the published list once and cache it)")
    from ..evaluation.alignment import check_alignment

    parser.add_argument("--alignment", type=_alignment_type(check_alignment), default=None,
                        metavar="{" + ",".join(ALIGNMENTS) + ",sparse:N}",
                        help="how predictions are aligned to the ground truth (default: the protocol's, "
                             "usually auto = from the prediction kind); sparse:N = a robust fit to N "
                             "ground-truth pixels per sample, drawn reproducibly (--alignment-seed)")
    parser.add_argument("--alignment-seed", type=int, default=0, metavar="S",
                        help="seed of the pixels drawn for --alignment sparse:N (default 0; recorded in summary.json)")
    parser.add_argument("--kind", choices=DEPTH_KINDS, default=None,
                        help="what saved predictions mean (default: recorded in PRED_DIR/predictions.json or kind.txt)")
    parser.add_argument("--crop", choices=("nyu_eigen", "kitti_eigen", "kitti_garg", "none"), default=None,
                        help="override the protocol's evaluation crop")
    parser.add_argument("--min-depth", type=float, default=None, metavar="M", help="override the dataset's min depth")
    parser.add_argument("--max-depth", type=float, default=None, metavar="M", help="override the dataset's max depth")
    parser.add_argument("--max-samples", type=int, default=None, metavar="N", help="evaluate only the first N samples")
    parser.add_argument("--processing-res", type=int, default=None, metavar="N",
                        help="long side the model runs at, aspect ratio kept (0 = native; default: the protocol's, "
                             "else the model's fixed input size (DiffSQL: 640x192) or its default long side)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: the model's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    from .predict import add_method_options

    g = add_method_options(parser)
    g.add_argument("--ensemble-with", default=None, metavar="DIR|METHOD:CKPT",
                   help="score the average (aligned disparities, PrimeDepth paper) with a second model: a method "
                        "spec run in this job (e.g. hf:depth-anything/Depth-Anything-V2-Large-hf) or a folder of "
                        "its saved predictions <name>.npy")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")


def run(args: argparse.Namespace) -> int:
    import sys

    from ..errors import InputError
    from ..evaluation.job import run_job
    from ..evaluation.leaderboard import entries_from_flags, pair_flags, read_models_file
    from .predict import method_options

    if args.models is not None and (args.checkpoint is not None or args.ensemble_with is not None):
        raise InputError("with --models FILE.yaml give each model's checkpoint and ensemble_with in the file")
    if args.predictions is not None and (args.ensemble_with is not None or args.checkpoint is not None):
        raise InputError("--ensemble-with applies only with --method (it averages the model run here with another)"
                         if args.ensemble_with is not None else
                         "--checkpoint applies only with --method (saved --predictions need no model)")
    flags = getattr(args, "ordered_flags", None)
    entries = read_models_file(args.models) if args.models else entries_from_flags(flags)
    if len(entries) > 1 and args.ensemble_with:
        raise InputError("--ensemble-with with several models: give each model its ensemble_with in --models FILE.yaml")
    if len(entries) == 1 and not args.models:
        entries[0].ensemble_with = args.ensemble_with
    result = run_job(pair_flags(flags, "dataset", "data_root"), args.out, entries=entries, predictions=args.predictions,
                     leaderboard=bool(args.models), split_file=args.split_file, crop=args.crop,
                     min_depth=args.min_depth, max_depth=args.max_depth, max_samples=args.max_samples, kind=args.kind,
                     processing_res=args.processing_res, alignment=args.alignment, alignment_seed=args.alignment_seed,
                     options=method_options(args), device=args.device, dtype=args.dtype,
                     progress=not args.no_progress)
    for note in result.notes:
        print(note, file=sys.stderr)
    print(result.report, end="")
    return result.rc
