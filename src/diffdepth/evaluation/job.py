"""``diffdepth eval`` jobs (:func:`run_job`): one benchmark scored with a model or saved predictions
(:func:`run_eval`) or a leaderboard table. Under ``accelerate launch``/``torchrun`` each process scores
its block of samples and :func:`score` gathers one report, identical to a single process's."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .. import distributed
from ..errors import InputError
from ..io.sidecar import prediction_kind
from .runner import ModelPredictor, PredictionFolder, evaluate, score_open_ends, summarize, write_reports


def _peak_memory_mib(device) -> tuple:
    import torch

    if device is not None and getattr(device, "type", "") == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20, "cuda peak allocated"
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2 ** 20 if sys.platform == "darwin" else 2 ** 10), "process peak RSS"


def score(dataset, n: int, predict, protocol, out, info: dict, *, alignment: Optional[str] = None,
          progress: bool = True, timed_on=None, **evaluate_args) -> Optional[Tuple[dict, Dict[str, Path]]]:
    """The first ``n`` samples sharded over the processes -> :func:`~.runner.evaluate` (``evaluate_args``)
    -> records gathered in sample order (a posed sequence split between processes scored whole, as in one
    process: :func:`~.runner.score_open_ends`) -> OUT/summary.json, .md, per_sample.csv with ``info`` (+ the kind of
    ``save_dir``; with ``timed_on``, a device: model s/image after an untimed warm-up image, peak memory).
    Returns ``(summary, report paths)`` on the main process, else None."""
    import torch

    cuda = timed_on is not None and timed_on.type == "cuda"
    mine = distributed.shard(range(n))
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    timing = {"seconds": 0.0, "images": 0}
    if timed_on is not None:
        if cuda:
            torch.cuda.synchronize(timed_on)
            torch.cuda.reset_peak_memory_stats(timed_on)
        untimed = predict

        def predict(sample):
            start = time.perf_counter()
            pred = untimed(sample)
            if cuda:
                torch.cuda.synchronize(timed_on)
            timing["seconds"] += time.perf_counter() - start
            timing["images"] += 1
            return pred

        if mine:  # lazy initialisation is not charged to the first model's s/image
            predict(dataset[mine[0]])
            timing.update(seconds=0.0, images=0)
    open_ends = [] if distributed.is_distributed() else None  # a posed sequence may cross into the next block
    records = evaluate((dataset[i] for i in mine), predict, protocol, alignment, total=len(mine),
                       progress=progress and distributed.is_main(), open_ends=open_ends, **evaluate_args)
    peak = _peak_memory_mib(timed_on) if timed_on is not None else None
    distributed.barrier()  # every process has written its predictions (and predictions.json)
    gathered = distributed.gather_objects((records, timing, peak, open_ends))
    if not distributed.is_main():
        return None
    records = score_open_ends([(g[0], g[3] or []) for g in gathered], protocol)
    info = dict(info)
    if evaluate_args.get("save_dir") is not None:
        info["kind"] = prediction_kind(evaluate_args["save_dir"])
    if timed_on is not None:
        images = sum(g[1]["images"] for g in gathered)
        info.update(seconds_per_image=sum(g[1]["seconds"] for g in gathered) / images if images else None,
                    peak_memory_mib=max(g[2][0] for g in gathered), peak_memory_kind=peak[1],
                    processes=len(gathered))
    summary = summarize(records, protocol, **info)
    return summary, write_reports(out, summary, records)


def run_eval(protocol, dataset, out, *, n: int, data_root, split_file=None, predictions=None, kind=None,
             method=None, checkpoint=None, options: Optional[dict] = None, ensemble_with=None,
             processing_res: Optional[int] = None, alignment: Optional[str] = None, alignment_seed: int = 0,
             device: str = "auto", dtype=None, progress: bool = True) -> Optional[Tuple[dict, Dict[str, Path]]]:
    """Score the first ``n`` samples of ``dataset`` with ``method``/``checkpoint`` (predictions
    written to OUT/predictions) or the saved ``predictions`` folder; write OUT/summary.json,
    summary.md and per_sample.csv. Returns ``(summary, report paths)`` on the main process, else None."""
    options = options or {}
    out = Path(out).expanduser()
    info = {"data_root": str(Path(data_root).expanduser()),
            "split_file": str(split_file) if split_file else (
                "published" if getattr(dataset, "split_key", None) else None),  # None: every sample of the folder
            "split_listed": getattr(dataset, "num_listed", len(dataset)),
            "alignment": alignment or protocol.alignment}
    if str(info["alignment"]).startswith("sparse:"):
        info["alignment_seed"] = alignment_seed
    if predictions is not None:
        predictor = PredictionFolder(predictions, kind)
        info.update(predictions=str(predictor.folder), kind=predictor.kind)
        if predictor.kind_source == "default" and distributed.is_main():
            print(f"note: {predictor.folder} records no kind (no predictions.json or kind.txt); reading the "
                  f"predictions as {predictor.kind} — pass --kind if they are something else", file=sys.stderr)
        return score(dataset, n, predictor, protocol, out, info, alignment=alignment, progress=progress,
                     alignment_seed=alignment_seed)
    import diffdepth

    from ..ensemble import Ensembler

    model = diffdepth.load_model(method, checkpoint, device=device, dtype=dtype)
    ensemble = Ensembler(ensemble_with, device=device, dtype=dtype) if ensemble_with else None
    predict = ModelPredictor(model, protocol, processing_res, ensemble, **options)
    res, input_size = predict.processing_res, getattr(predict.pipe, "input_size", None)  # the model's exact size
    info.update(method=method, checkpoint=str(checkpoint), processing_res=res,
                input_size=list(input_size) if input_size else None, options=options,
                ensemble_with=ensemble_with, predictions=str(out / "predictions"))
    return score(dataset, n, predict, protocol, out, info, alignment=alignment, progress=progress, kind=kind,
                 alignment_seed=alignment_seed, save_dir=out / "predictions",
                 record={"method": method, "checkpoint": checkpoint, "options": {**options, "processing_res": res}})


@dataclass
class EvalResult:
    """:func:`run_job`'s ``notes`` (stderr) and ``report`` (stdout); empty but on the main process."""

    rc: int = 0
    notes: List[str] = field(default_factory=list)
    report: str = ""
    summary: Optional[dict] = None


def run_job(datasets: Sequence[Tuple[str, Optional[str]]], out, *, entries: Sequence = (), predictions=None,
            leaderboard: bool = False, split_file=None, crop=None, min_depth=None, max_depth=None,
            max_samples: Optional[int] = None, kind=None, processing_res: Optional[int] = None,
            alignment: Optional[str] = None, alignment_seed: int = 0, options: Optional[dict] = None,
            device: str = "auto", dtype=None, progress: bool = True) -> EvalResult:
    """``diffdepth eval``: each ``(protocol, data root)`` with the overrides, its first ``max_samples`` scored
    with saved ``predictions`` or the model of ``entries`` (one :class:`~.leaderboard.Entry`) by :func:`run_eval`;
    several entries or datasets, or ``leaderboard``, give one table (:func:`~.leaderboard.run_leaderboard`)."""
    from ..data.benchmarks import open_benchmark
    from .leaderboard import Bench, run_leaderboard
    from .protocols import get_protocol

    if max_samples is not None and max_samples < 1:
        raise InputError(f"--max-samples must be >= 1, got {max_samples}")
    if len(datasets) > 1:
        if predictions is not None:
            raise InputError("saved --predictions are scored on one --dataset at a time")
        if split_file is not None:
            raise InputError("--split-file applies to a single --dataset; omit it with several benchmarks")
        missing = [name for name, root in datasets if root is None]
        if missing:
            raise InputError(f"--dataset {missing[0]} has no --data-root; give one --data-root after each --dataset")
    benches = []
    for name, root in datasets:
        protocol = get_protocol(name).with_overrides(crop=crop, min_depth=min_depth, max_depth=max_depth)
        if protocol.min_depth >= protocol.max_depth:
            raise InputError(f"--min-depth {protocol.min_depth} must be below --max-depth {protocol.max_depth}")
        ds = open_benchmark(protocol.name, root, split_file)
        benches.append(Bench(protocol, ds, len(ds) if max_samples is None else min(len(ds), max_samples), protocol.name))
    if leaderboard or len(entries) > 1 or len(benches) > 1:
        if alignment_seed != 0:
            raise InputError("--alignment-seed applies to one model; a leaderboard draws sparse pixels with seed 0")
        paths = run_leaderboard(list(entries), benches, Path(out).expanduser(), alignment=alignment,
                                processing_res=processing_res, options=options, device=device, dtype=dtype,
                                progress=progress)
        if paths is None:  # not the main process
            return EvalResult()
        return EvalResult(report=paths["md"].read_text() + f"wrote {paths['md']}, {paths['csv']} and one report "
                                                           f"folder per model in {Path(out).expanduser()}\n")
    bench, entry = benches[0], entries[0] if entries else None
    done = run_eval(bench.protocol, bench.dataset, out, n=bench.n, data_root=datasets[0][1], split_file=split_file,
                    predictions=predictions, kind=kind, method=entry and entry.method,
                    checkpoint=entry and entry.checkpoint, options=None if predictions else {**(options or {})},
                    ensemble_with=entry and entry.ensemble_with, processing_res=processing_res, alignment=alignment,
                    alignment_seed=alignment_seed, device=device, dtype=dtype, progress=progress)
    if done is None:  # not the main process
        return EvalResult()
    summary, paths = done
    return EvalResult(rc=0 if summary["metrics"] else 1, notes=eval_notes(summary, paths), summary=summary,
                      report=paths["md"].read_text() + f"wrote {paths['json']}, {paths['md']}, {paths['csv']}\n"
                      if summary["metrics"] else "")


def eval_notes(summary: dict, paths: Dict[str, Path]) -> List[str]:
    """What a user should know about a run's counts (resized, skipped, non-finite samples)."""
    c, notes = summary["counts"], []
    if c["resized_predictions"]:
        notes.append(f"note: {c['resized_predictions']} prediction(s) had another size than the ground truth and were "
                     f"resized ({summary['protocol']['pred_resize']})")
    for key in ("skipped_empty", "missing_prediction", "bad_prediction", "alignment_failed"):
        if c[key]:
            notes.append(f"note: {c[key]} sample(s) skipped: {key.replace('_', ' ')}")
    if c["nonfinite_samples"]:
        notes.append(f"note: {c['nonfinite_samples']} sample(s) had non-finite predictions "
                     f"({c['nonfinite_pixels']} pixels, replaced and clipped to the dataset range)")
    if not summary["metrics"]:
        notes.append(f"diffdepth eval: error: no sample could be evaluated — see {paths['csv']}")
    return notes
