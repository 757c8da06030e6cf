"""Evaluation: metrics, alignment, dataset protocols and the runner behind ``diffdepth eval``.

See ``evaluation/README.md`` for the dataset layouts, the protocol table, the
predictions-folder format and the metric definitions.
"""
from .alignment import ALIGNMENTS, AlignResult, align, finalize_depth, fit_median_scale, fit_scale_shift, resolve_alignment
from .metrics import (METRIC_NAMES, METRICS, abs_rel, compute_metrics, delta1, delta2, delta3, i_rmse, log10,
                      rmse, rmse_log, silog, sq_rel)
from .protocols import PROTOCOLS, Protocol, get_protocol
from .runner import PredictionFolder, SampleRecord, evaluate, evaluate_sample, summarize, write_reports

__all__ = [
    "ALIGNMENTS", "AlignResult", "align", "finalize_depth", "fit_median_scale", "fit_scale_shift",
    "resolve_alignment", "METRIC_NAMES", "METRICS", "abs_rel", "compute_metrics", "delta1", "delta2", "delta3",
    "i_rmse", "log10", "rmse", "rmse_log", "silog", "sq_rel", "PROTOCOLS", "Protocol", "get_protocol",
    "PredictionFolder", "SampleRecord", "evaluate", "evaluate_sample", "summarize", "write_reports",
]
