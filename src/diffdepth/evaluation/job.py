"""One ``diffdepth eval`` job: a benchmark scored with a model or a folder of saved predictions.

Under ``accelerate launch``/``torchrun`` each process scores its own block of samples and the
records are gathered into one report, identical to a single process's.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, Optional, Tuple

from .. import distributed
from .runner import ModelPredictor, PredictionFolder, evaluate, read_kind_file, summarize, write_reports


def run_eval(protocol, dataset, out, *, n: int, data_root, split_file=None, predictions=None, kind=None,
             method=None, checkpoint=None, options: Optional[dict] = None, ensemble_with=None,
             processing_res: Optional[int] = None, alignment: Optional[str] = None, alignment_seed: int = 0,
             device: str = "auto", dtype=None, progress: bool = True) -> Optional[Tuple[dict, Dict[str, Path]]]:
    """Score the first ``n`` samples of ``dataset`` with ``method``/``checkpoint`` (predictions
    written to OUT/predictions) or the saved ``predictions`` folder; write OUT/summary.json,
    summary.md and per_sample.csv. Returns ``(summary, report paths)`` on the main process, else None."""
    options = options or {}
    mine = distributed.shard(range(n))
    samples = (dataset[i] for i in mine)
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    progress = progress and distributed.is_main()
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
        if predictor.kind_source == "default":
            print(f"note: {predictor.folder} records no kind (no predictions.json or kind.txt); reading the "
                  f"predictions as {predictor.kind} — pass --kind if they are something else", file=sys.stderr)
        records = evaluate(samples, predictor, protocol, alignment, alignment_seed=alignment_seed,
                           progress=progress, total=len(mine))
    else:
        import diffdepth

        model = diffdepth.load_model(method, checkpoint, device=device, dtype=dtype)
        predict = ModelPredictor(model, protocol, processing_res, **options)
        if ensemble_with:
            from ..ensemble import Ensembler

            predict.ensemble = Ensembler(ensemble_with, device=device, dtype=dtype)
        res, input_size = predict.processing_res, getattr(predict.pipe, "input_size", None)  # the model's exact size
        info.update(method=method, checkpoint=str(checkpoint), processing_res=res,
                    input_size=list(input_size) if input_size else None, options=options,
                    ensemble_with=ensemble_with, predictions=str(out / "predictions"))
        records = evaluate(samples, predict, protocol, alignment, kind=kind, alignment_seed=alignment_seed,
                           save_dir=out / "predictions", progress=progress, total=len(mine),
                           record={"method": method, "checkpoint": checkpoint,
                                   "options": {**options, "processing_res": res}})
        distributed.barrier()  # every process has written its predictions (and predictions.json)
        info["kind"] = read_kind_file(out / "predictions")

    records = distributed.gather(records)  # contiguous shards: rank order is sample order
    if not distributed.is_main():
        return None
    summary = summarize(records, protocol, **info)
    return summary, write_reports(out, summary, records)
