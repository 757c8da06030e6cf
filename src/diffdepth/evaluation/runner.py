"""The evaluation loop: read sample → predict (or load a saved prediction) → align →
clip → mask → metrics → per-sample records → summary (DESIGN.md principle 7).

``evaluate`` works on any iterable of samples (the dicts of
:mod:`diffdepth.data.benchmarks`), so a distributed runner can hand each process a shard
of the sample list and gather the returned records before :func:`summarize`.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import InputError
from ..geometry import depth_to_disparity
from ..types import AFFINE_DEPTH, METRIC_DEPTH, RELATIVE_DEPTH, DepthMap, DepthPrediction, check_kind
from ..utils import atomic_path
from .alignment import align, finalize_depth, fit_anchors, parse_sparse, resolve_alignment
from .metrics import HIGHER_IS_BETTER, METRIC_NAMES, compute_metrics
from .protocols import Protocol

PathLike = Union[str, os.PathLike]

#: record statuses; only "ok" records enter the means
STATUSES = ("ok", "empty_mask", "missing_prediction", "bad_prediction", "alignment_failed")


@dataclass
class SampleRecord:
    name: str
    status: str
    n_valid: int = 0
    alignment: str = ""
    scale: Optional[float] = None
    shift: Optional[float] = None
    n_nonfinite: int = 0  # valid pixels whose (aligned) prediction was NaN/inf
    n_nonpositive: int = 0  # valid pixels whose aligned prediction was <= 0
    resized: bool = False  # the prediction had another size than the ground truth
    metrics: Dict[str, float] = field(default_factory=dict)
    message: str = ""


# ---------------------------------------------------------------------------- predictions
class PredictionFolder:
    """Saved predictions: ``<folder>/<sample name>.npy`` (float32 [H,W]) + the folder's record of
    their kind (``predictions.json`` from ``diffdepth predict``/``eval``, or ``kind.txt``).
    ``kind_source`` says where the kind came from (``--kind``, the file, or ``default``)."""

    def __init__(self, folder: PathLike, kind: Optional[str] = None):
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise InputError(f"predictions folder {self.folder} does not exist — check --predictions")
        from ..io.sidecar import prediction_kind

        recorded = prediction_kind(self.folder)
        if kind:
            self.kind, self.kind_source = check_kind(kind), "--kind"
        elif recorded:
            self.kind, self.kind_source = recorded, "recorded"
        else:
            self.kind, self.kind_source = AFFINE_DEPTH, "default"

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.npy"

    def __call__(self, sample: dict):
        path = self.path(sample["name"])
        if not path.is_file():
            raise FileNotFoundError(str(path))
        pred = np.load(path)
        box = sample.get("crop_box")
        if box is not None and np.squeeze(pred).shape == tuple(sample["full_shape"]):
            # a prediction of the whole frame for a benchmark scored on a crop (KITTI's KB
            # crop): take the same crop, never resize the full frame onto the crop
            t, b, l, r = box
            pred = np.squeeze(pred)[t:b, l:r]
        return pred, self.kind


def sample_image(sample: dict) -> Optional[np.ndarray]:
    """The [3,H,W] image a sample is scored on: ``image``, or the target frame (the first of
    ``frames``) of a frame-sequence sample (:mod:`diffdepth.data.sequences`); None without either."""
    if "image" in sample:
        return np.asarray(sample["image"], dtype=np.float32)
    return np.asarray(sample["frames"][0], dtype=np.float32) if "frames" in sample else None


class ModelPredictor:
    """``predictor(sample) -> DepthMap``: ``model`` through a :class:`~diffdepth.pipeline.DepthPipeline`
    on the sample's image (:func:`sample_image`), then the ``ensemble`` partner
    (:class:`~diffdepth.ensemble.Ensembler`) when set. The one predictor of ``diffdepth eval``, the
    leaderboard and the trainer's validation, so that they score a model alike.

    ``processing_res`` None: 0 for a model that resizes itself (``owns_resize``), else the protocol's.
    Predictions go back to the image size in the protocol's resize space (depth or disparity)."""

    def __init__(self, model, protocol: Protocol, processing_res: Optional[int] = None, ensemble=None, **options):
        from ..pipeline import DepthPipeline

        if processing_res is None:
            processing_res = 0 if getattr(model, "owns_resize", False) else protocol.processing_res
        self.processing_res = processing_res
        space = "disparity" if protocol.pred_resize == "disparity" else "depth"
        self.pipe = DepthPipeline(model, processing_res=processing_res, resize_space=space, **options)
        self.ensemble = ensemble

    def __call__(self, sample: dict) -> DepthMap:
        image = np.ascontiguousarray(sample_image(sample).transpose(1, 2, 0))  # [H,W,3]
        pred = self.pipe([image])[0]
        return self.ensemble(pred, rel=sample["name"], image=image) if self.ensemble is not None else pred


def resize_prediction(pred: np.ndarray, shape, mode: str = "bilinear", kind: Optional[str] = None) -> np.ndarray:
    """Resize [h,w] → ``shape`` (torch ``interpolate``, ``align_corners=False`` for bilinear).

    ``mode="disparity"`` (Monodepth2's evaluation): a relative or metric depth is resized
    bilinearly as its inverse and inverted back (non-positive depth → disparity 0 → depth 0);
    other kinds (``kind``) are resized bilinearly as they are.
    """
    t = torch.as_tensor(np.ascontiguousarray(pred), dtype=torch.float64)[None, None]  # [1,1,h,w]
    if mode == "disparity":
        if kind in (RELATIVE_DEPTH, METRIC_DEPTH):
            disp = torch.nn.functional.interpolate(depth_to_disparity(t), size=tuple(shape), mode="bilinear",
                                                   align_corners=False)
            return depth_to_disparity(disp)[0, 0].numpy()
        mode = "bilinear"
    if mode == "bilinear":
        t = torch.nn.functional.interpolate(t, size=tuple(shape), mode="bilinear", align_corners=False)
    elif mode == "nearest":
        t = torch.nn.functional.interpolate(t, size=tuple(shape), mode="nearest")
    else:
        raise ValueError(f"unknown resize mode {mode!r}")
    return t[0, 0].numpy()


def _to_2d(pred) -> np.ndarray:
    if isinstance(pred, torch.Tensor):
        pred = pred.detach().float().cpu().numpy()
    pred = np.asarray(pred)
    if pred.dtype == object or not np.issubdtype(pred.dtype, np.number):
        raise ValueError(f"prediction has dtype {pred.dtype}, expected a float array")
    pred = np.squeeze(pred)
    if pred.ndim != 2:
        raise ValueError(f"prediction has shape {pred.shape}, expected [H,W]")
    return pred.astype(np.float64)


def _unpack(out, default_kind: Optional[str]):
    if isinstance(out, (DepthMap, DepthPrediction)):
        return out.depth, out.kind
    if isinstance(out, tuple) and len(out) == 2:
        return out
    return out, default_kind or AFFINE_DEPTH


# ---------------------------------------------------------------------------- evaluate
def sparse_pixels(mask: np.ndarray, n: int, seed: int, name: str) -> np.ndarray:
    """A boolean map of ``min(n, mask.sum())`` pixels of ``mask`` drawn without replacement by a
    generator seeded with ``(seed, crc32(name))``: the same pixels on every run and machine."""
    import zlib

    idx = np.flatnonzero(mask)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    pick = idx if len(idx) <= n else rng.choice(idx, n, replace=False)
    out = np.zeros(mask.size, bool)
    out[pick] = True
    return out.reshape(mask.shape)


def _sparse_align(p, gt, mask, kind, n, protocol, seed, name, rec) -> np.ndarray:
    """``sparse:N``: the robust anchor fit of :func:`fit_anchors` to N sampled ground-truth pixels."""
    chosen = sparse_pixels(mask & np.isfinite(p), n, seed, name)
    anchors = np.where(chosen, gt, 0.0)
    res = fit_anchors(p, anchors, kind, seed=seed, holdout=0.0, max_depth=protocol.max_depth)
    rec.scale, rec.shift = res.scale, res.shift
    if res.warning:
        rec.message = res.warning
    return res.aligned(p)


def evaluate_sample(sample: dict, pred, kind: str, protocol: Protocol,
                    alignment: Optional[str] = None, mask: Optional[np.ndarray] = None,
                    seed: int = 0) -> SampleRecord:
    """Score one prediction (array [H,W] of any size) against one sample.

    ``seed``: of the pixels drawn for ``alignment="sparse:N"`` (with the sample's name)."""
    gt = np.asarray(sample["depth"], dtype=np.float64).reshape(np.shape(sample["depth"])[-2:])
    if mask is None:
        mask = protocol.eval_mask(gt, sample.get("valid"))
    rec = SampleRecord(sample["name"], "ok", n_valid=int(mask.sum()))
    if rec.n_valid == 0:
        rec.status = "empty_mask"
        return rec
    try:
        p = _to_2d(pred)
    except ValueError as err:
        rec.status, rec.message = "bad_prediction", str(err)
        return rec
    if p.shape != gt.shape:
        p = resize_prediction(p, gt.shape, protocol.pred_resize, kind)
        rec.resized = True
    method = resolve_alignment(alignment or protocol.alignment, kind)
    rec.alignment = method
    try:
        n_sparse = parse_sparse(method)
        if n_sparse:
            aligned = _sparse_align(p, gt, mask, kind, n_sparse, protocol, seed, sample["name"], rec)
        else:
            res = align(p, gt, mask, method, max_depth=protocol.max_depth, fit_max_res=protocol.fit_max_res)
            rec.scale, rec.shift = res.scale, res.shift
            aligned = res.depth
    except ValueError as err:
        rec.status, rec.message = "alignment_failed", str(err)
        return rec
    depth, counts = finalize_depth(aligned, mask, protocol.min_depth, protocol.max_depth, gt=gt)
    rec.n_nonfinite, rec.n_nonpositive = counts.nonfinite, counts.nonpositive
    rec.metrics = compute_metrics(depth, gt, mask)
    return rec


class _SequenceTracker:
    """Collects the frames of the current posed sequence (samples with ``pose``, ``intrinsics``
    and ``sequence``, in split order) and, when it ends, stores each consecutive pair's TAE
    (:mod:`diffdepth.evaluation.temporal`) as ``metrics["tae"]`` of the pair's later frame.
    With ``open_ends`` (a list: one process's block of a sharded run), the sequences holding the block's
    first and last sample may go on in the neighbouring blocks: they are appended there unscored, for
    :func:`score_open_ends`. Memory: the frames of one sequence."""

    def __init__(self, protocol: Protocol, alignment: Optional[str], records: List[SampleRecord],
                 open_ends: Optional[list] = None):
        self.protocol, self.alignment, self.records, self.open_ends = protocol, alignment, records, open_ends
        self.key, self.frames, self.leading, self.seen = None, [], False, 0

    def add(self, sample: dict, pred, kind: str, mask: np.ndarray, rec: SampleRecord) -> None:
        """``rec`` (the last of ``records``) scored ``sample``."""
        key = sample.get("sequence")
        if key is None or sample.get("pose") is None or sample.get("intrinsics") is None or rec.status != "ok":
            self.skip()
            return
        first, self.seen = self.seen == 0, self.seen + 1
        if key != self.key:
            self.flush()
            self.key, self.leading = key, first
        gt = np.asarray(sample["depth"], dtype=np.float64).reshape(np.shape(sample["depth"])[-2:])
        p = _to_2d(pred)
        if p.shape != gt.shape:
            p = resize_prediction(p, gt.shape, self.protocol.pred_resize, kind)
        method = resolve_alignment(self.alignment or self.protocol.alignment, kind)
        self.frames.append((p.astype(np.float32), gt.astype(np.float32), mask, np.asarray(sample["pose"]),
                            np.asarray(sample["intrinsics"]), method, len(self.records) - 1))

    def skip(self) -> None:
        """A sample that is no frame of a sequence (or has no prediction) ends the current one."""
        self.seen += 1
        self.flush()

    def flush(self, last: bool = False) -> None:
        """End the current sequence (``last``: it holds the final sample)."""
        frames, key, leading = self.frames, self.key, self.leading
        self.frames, self.key, self.leading = [], None, False
        if self.open_ends is not None and frames and (leading or last):
            self.open_ends.append({"key": key, "frames": frames, "starts": leading, "ends": last})
            return
        _score_sequence(frames, self.protocol, self.records)


def _score_sequence(frames: list, protocol: Protocol, records) -> None:
    """TAE of each consecutive pair of one sequence's ``frames`` into ``records[frame index]``."""
    if len(frames) < 2 or len({f[5] for f in frames}) != 1:
        return
    from .temporal import sequence_tae

    errors = sequence_tae([f[0] for f in frames], [f[1] for f in frames], [f[2] for f in frames],
                          [f[3] for f in frames], [f[4] for f in frames], frames[0][5],
                          protocol.min_depth, protocol.max_depth, region=protocol.crop_mask(frames[0][1].shape))
    for frame, err in zip(frames[1:], errors):
        if err is not None:
            records[frame[6]].metrics["tae"] = err


def score_open_ends(parts: Sequence[Tuple[List[SampleRecord], list]], protocol: Protocol) -> List[SampleRecord]:
    """Each process's ``(records, open_ends)`` of consecutive blocks of one run, in block order ->
    the records joined, with the TAE of the sequences that crossed a block boundary scored whole
    (the same numbers as one process scoring every sample)."""
    records: List[SampleRecord] = []
    group, previous_ends = None, False
    for part_records, open_ends in parts:
        offset = len(records)
        records.extend(part_records)
        for end in open_ends:
            frames = [f[:6] + (f[6] + offset,) for f in end["frames"]]
            if group is not None and previous_ends and end["starts"] and end["key"] == group["key"]:
                group["frames"] += frames  # the sequence goes on from the previous block
            else:
                if group is not None:
                    _score_sequence(group["frames"], protocol, records)
                group = {"key": end["key"], "frames": frames}
            previous_ends = end["ends"]
        if part_records and not (open_ends and open_ends[-1]["ends"]):
            previous_ends = False  # this block's last sample is no open frame: nothing goes on across it
    if group is not None:
        _score_sequence(group["frames"], protocol, records)
    return records


def _predict(predictor, sample: dict, from_folder: bool, records: List[SampleRecord]):
    """The predictor's output, or None with a record of why a saved prediction is missing or unreadable."""
    if not from_folder:
        return predictor(sample)
    try:
        return predictor(sample)
    except FileNotFoundError as err:
        records.append(SampleRecord(sample["name"], "missing_prediction", message=f"no file {err}"))
    except (ValueError, OSError) as err:  # unreadable .npy
        records.append(SampleRecord(sample["name"], "bad_prediction", message=f"{predictor.path(sample['name'])}: {err}"))
    return None


def _save_scored(pred, shape, protocol: Protocol, kind: str, path: Path):
    """Save exactly what is scored (float32 at the ground-truth size), so that re-scoring the saved
    folder reproduces the numbers; returns it and whether it was resized."""
    p = _to_2d(pred)
    resized = p.shape != tuple(shape)
    p = (resize_prediction(p, shape, protocol.pred_resize, kind) if resized else p).astype(np.float32)
    with atomic_path(path) as tmp:
        np.save(tmp, p)
    return p, resized


def evaluate(samples: Iterable[dict], predictor: Union[PathLike, Callable, PredictionFolder],
             protocol: Protocol, alignment: Optional[str] = None, *, kind: Optional[str] = None,
             save_dir: Optional[PathLike] = None, progress: bool = True,
             total: Optional[int] = None, record: Optional[dict] = None,
             alignment_seed: int = 0, open_ends: Optional[list] = None) -> List[SampleRecord]:
    """Score every sample; returns one :class:`SampleRecord` per sample, in order.

    ``predictor`` is a predictions folder (path or :class:`PredictionFolder`) or a callable
    ``fn(sample) -> DepthMap | (array, kind) | array`` (then ``kind`` gives the kind).
    ``alignment``: ``None`` → the protocol default; ``auto`` → from the kind; ``sparse:N`` → fit
    to N ground-truth pixels drawn with ``alignment_seed``.
    ``save_dir``: write each computed prediction, resized to the ground truth, as
    ``<save_dir>/<name>.npy`` (+ ``predictions.json`` with the kind and ``record``: method,
    checkpoint, options) so it can be re-scored without the model.
    A missing or malformed saved prediction is recorded and skipped, never fatal.
    ``open_ends`` (a list; a sharded run's block of the samples): the posed sequences that hold the first
    and last sample are appended to it instead of being scored, for :func:`score_open_ends`.
    """
    if isinstance(predictor, (str, os.PathLike)):
        predictor = PredictionFolder(predictor, kind)
    from_folder = isinstance(predictor, PredictionFolder)
    records: List[SampleRecord] = []
    kinds_seen = set()
    sequences = _SequenceTracker(protocol, alignment, records, open_ends)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"eval {protocol.name}", unit="img", dynamic_ncols=True,
                   disable=None)  # no bar in redirected logs, as predict
    try:
        for sample in samples:
            gt = np.asarray(sample["depth"]).reshape(np.shape(sample["depth"])[-2:])
            mask = protocol.eval_mask(gt, sample.get("valid"))
            if not mask.any():
                records.append(SampleRecord(sample["name"], "empty_mask"))
            out = _predict(predictor, sample, from_folder, records) if mask.any() else None
            if out is None:
                sequences.skip()  # a frame missing from a sequence ends it (pairs are consecutive frames)
            else:
                pred, k = _unpack(out, kind)
                k = check_kind(k)
                kinds_seen.add(k)
                save = save_dir is not None and not from_folder
                if save:
                    pred, resized = _save_scored(pred, gt.shape, protocol, k, Path(save_dir) / f"{sample['name']}.npy")
                rec = evaluate_sample(sample, pred, k, protocol, alignment, mask, seed=alignment_seed)
                if save:
                    rec.resized = resized
                records.append(rec)
                sequences.add(sample, pred, k, mask, rec)
            if bar is not None:
                bar.update(1)
        sequences.flush(last=True)
    finally:
        if bar is not None:
            bar.close()
    if save_dir is not None and not from_folder and kinds_seen:
        if len(kinds_seen) > 1:
            raise InputError(f"the predictor returned several kinds {sorted(kinds_seen)}; cannot record one kind")
        from ..io.sidecar import write_sidecar

        write_sidecar(save_dir, {**(record or {}), "kind": next(iter(kinds_seen))})
    return records


# ---------------------------------------------------------------------------- summary + reports
def summarize(records: List[SampleRecord], protocol: Optional[Protocol] = None, **info) -> dict:
    """Means over the ``ok`` records (never NaN: absent when none) + counts of the others."""
    ok = [r for r in records if r.status == "ok"]
    metrics = {n: float(np.mean([r.metrics[n] for r in ok])) for n in METRIC_NAMES} if ok else {}
    counts = {"samples": len(records), "evaluated": len(ok)}
    counts["skipped_empty"] = sum(r.status == "empty_mask" for r in records)
    for status in STATUSES[2:]:
        counts[status] = sum(r.status == status for r in records)
    counts.update({
        "nonfinite_samples": sum(r.n_nonfinite > 0 for r in ok),
        "nonfinite_pixels": sum(r.n_nonfinite for r in ok),
        "nonpositive_samples": sum(r.n_nonpositive > 0 for r in ok),
        "nonpositive_pixels": sum(r.n_nonpositive for r in ok),
        "resized_predictions": sum(r.resized for r in ok),
    })
    summary = {"metrics": metrics, "counts": counts,
               "alignments": sorted({r.alignment for r in ok})}
    taes = [r.metrics["tae"] for r in ok if "tae" in r.metrics]
    if taes:  # posed sequences: the temporal consistency error (evaluation/temporal.py), mean over pairs
        summary["temporal"] = {"tae": float(np.mean(taes)), "pairs": len(taes)}
    scales = [r.scale for r in ok if r.scale is not None]
    if scales:
        med = float(np.median(scales))
        summary["scale"] = {"median": med, "std_over_median": float(np.std(np.asarray(scales) / med)) if med else None}
    if protocol is not None:
        summary["dataset"] = protocol.name
        summary["protocol"] = protocol.to_dict()
    summary.update(info)
    return summary


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def summary_markdown(summary: dict) -> str:
    m = summary.get("metrics", {})
    c = summary.get("counts", {})
    lines = [f"## {summary.get('dataset', 'evaluation')}", ""]
    if m:
        arrows = [n + (" ↑" if n in HIGHER_IS_BETTER else " ↓") for n in METRIC_NAMES]
        lines += ["| " + " | ".join(arrows) + " |", "|" + "---|" * len(METRIC_NAMES),
                  "| " + " | ".join(f"{m[n]:.4f}" for n in METRIC_NAMES) + " |", ""]
    else:
        lines += ["No sample could be evaluated.", ""]
    others = [f"{k.replace('_', ' ')}: {v}" for k, v in c.items() if k not in ("samples", "evaluated") and v]
    lines.append(f"evaluated {c.get('evaluated', 0)} of {c.get('samples', 0)} samples"
                 + (f" ({', '.join(others)})" if others else ""))
    if summary.get("temporal"):
        t = summary["temporal"]
        lines.append(f"temporal consistency: TAE {t['tae']:.4f} over {t['pairs']} consecutive frame pairs "
                     f"(one alignment per sequence; lower is steadier)")
    lines.append(f"alignment: {', '.join(summary.get('alignments', [])) or summary.get('alignment', '')}")
    proto = summary.get("protocol")
    if proto:
        lines.append(f"depth range: {proto['min_depth']}–{proto['max_depth']} m, crop: {proto['crop'] or 'none'}")
    return "\n".join(lines) + "\n"


CSV_FIELDS = ["name", "status", "n_valid", "alignment", "scale", "shift", "n_nonfinite",
              "n_nonpositive", "resized", *METRIC_NAMES, "tae", "message"]


def records_csv(records: List[SampleRecord]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for r in records:
        row = asdict(r)
        w.writerow([_fmt(row[k]) if k in row else _fmt(r.metrics.get(k)) for k in CSV_FIELDS])
    return buf.getvalue()


def write_reports(out_dir: PathLike, summary: dict, records: List[SampleRecord]) -> Dict[str, Path]:
    """``summary.json``, ``summary.md`` and ``per_sample.csv`` in ``out_dir`` (atomic writes)."""
    out = Path(out_dir)
    paths = {"json": out / "summary.json", "md": out / "summary.md", "csv": out / "per_sample.csv"}
    texts = {"json": json.dumps(summary, indent=2, sort_keys=False) + "\n",
             "md": summary_markdown(summary), "csv": records_csv(records)}
    for key, path in paths.items():
        with atomic_path(path) as tmp:
            tmp.write_text(texts[key])
    return paths
