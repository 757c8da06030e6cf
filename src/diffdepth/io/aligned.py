"""Metric depth from a folder of predictions and sparse anchors (``diffdepth align``, ``predict --align-to``).

Reads ``PRED_DIR/<rel>.npy`` and the folder's kind through :func:`diffdepth.io.sidecar.prediction_kind`,
the anchors ``ANCHORS/<rel>.<npy|png|csv|bin>`` (or one anchors file for a single prediction) through
:mod:`diffdepth.data.anchors`, fits each with :func:`diffdepth.evaluation.alignment.fit_anchors`, and
writes ``OUT/<rel>.npy`` (float32 metres, 0 = no depth), ``OUT/alignment.csv`` + ``OUT/alignment.json``
(one row per prediction: status, scale, shift, anchors, inliers, residual, held-out error, warning) and
``OUT/predictions.json`` (kind ``metric_depth``; ``alignment`` records how). Every file is written
atomically; a prediction that cannot be aligned is skipped and reported, never half written.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np

from ..errors import InputError
from ..utils import atomic_path

PathLike = Union[str, os.PathLike]
REPORT_FIELDS = ["name", "status", "anchors_file", "scale", "shift", "space", "fit", "n_anchors", "n_fit",
                 "n_inliers", "inlier_fraction", "residual_absrel", "residual_rmse", "n_heldout",
                 "heldout_absrel", "heldout_rmse", "warning", "message"]


@dataclass
class AlignReport:
    rows: List[dict] = field(default_factory=list)
    paths: Dict[str, Path] = field(default_factory=dict)

    @property
    def skipped(self) -> List[dict]:
        return [r for r in self.rows if r["status"] != "ok"]

    @property
    def warned(self) -> List[dict]:
        return [r for r in self.rows if r["status"] == "ok" and r.get("warning")]


def list_predictions(folder: Path, exclude: Optional[Path] = None) -> List[str]:
    """Relative names (no extension) of the ``.npy`` predictions in ``folder``: those its
    ``predictions.json`` lists, else every ``*.npy`` below it (not ``*_uncertainty.npy``)."""
    from .sidecar import read_sidecar

    data = read_sidecar(folder) or {}
    listed = sorted(rel for rel, e in data.get("entries", {}).items() if "npy" in e)
    if listed:
        return listed
    names = []
    skip = exclude.resolve() if exclude is not None else None
    for f in sorted(folder.rglob("*.npy")):
        if f.name.endswith("_uncertainty.npy") or f.name.startswith("."):
            continue
        if skip is not None and (skip == f.resolve().parent or skip in f.resolve().parents):
            continue
        names.append(f.relative_to(folder).with_suffix("").as_posix())
    return names


def align_folder(pred_dir: PathLike, anchors: PathLike, out: PathLike, *, kind: Optional[str] = None,
                 fit: str = "auto", seed: int = 0, png_scale: float = 1000.0, calib: Optional[PathLike] = None,
                 names: Optional[List[str]] = None, max_depth: Optional[float] = None) -> AlignReport:
    """Align every prediction of ``pred_dir`` (or ``names``) to its anchors; see the module docstring."""
    from ..evaluation.alignment import anchor_fit_mode
    from ..types import DEPTH_KINDS
    from .sidecar import prediction_kind, read_sidecar

    pred_dir, anchors, out = (Path(p).expanduser() for p in (pred_dir, anchors, out))
    if not pred_dir.is_dir():
        raise InputError(f"predictions folder {pred_dir} does not exist")
    if not anchors.exists():
        raise InputError(f"anchors {anchors} do not exist — give a folder of anchor files or one file")
    if out.resolve() == pred_dir.resolve():
        raise InputError(f"--out {out} is the predictions folder; write the metric depth to another folder")
    recorded = prediction_kind(pred_dir)
    if kind is None:
        if recorded is None:
            raise InputError(f"{pred_dir} records no kind (no predictions.json or kind.txt); pass --kind "
                             f"({', '.join(DEPTH_KINDS)})")
        kind = recorded
    mode = anchor_fit_mode(kind, fit)
    names = list_predictions(pred_dir, exclude=out) if names is None else names
    if not names:
        raise InputError(f"no .npy predictions in {pred_dir}")
    if anchors.is_file() and len(names) > 1:
        raise InputError(f"one anchors file {anchors} for {len(names)} predictions; give a folder of anchors "
                         f"named like the predictions (<name>.npy|png|csv|bin)")
    report = AlignReport()
    fitted: Dict[str, dict] = {}  # rel -> size, valid range and fit of each aligned map
    for rel in names:
        row = {"name": rel, "status": "ok"}
        report.rows.append(row)
        try:
            pred, res = _fit_one(pred_dir, anchors, rel, row, kind, dict(fit=fit, seed=seed, max_depth=max_depth),
                                 png_scale=png_scale, calib=calib)
        except (InputError, ValueError) as err:
            row.update(status="skipped", message=str(err))
            continue
        row.update({k: v for k, v in res.to_dict().items() if k in REPORT_FIELDS})
        metric = res.apply(pred)
        with atomic_path(out / f"{rel}.npy") as tmp:
            np.save(tmp, metric)
        ok_vals = metric[np.isfinite(metric) & (metric > 0)]
        fitted[rel] = {"size": metric.shape, "valid_range": (float(ok_vals.min()), float(ok_vals.max()))
                       if ok_vals.size else None,
                       "fit": {k: row.get(k) for k in REPORT_FIELDS if k not in ("name", "status", "message")}}
    out.mkdir(parents=True, exist_ok=True)
    source = read_sidecar(pred_dir) or {}
    settings = {"method": source.get("method"), "checkpoint": source.get("checkpoint"),
                "options": source.get("options"),
                "alignment": {"to": "sparse anchors", "anchors": str(anchors), "source": str(pred_dir),
                              "source_kind": kind, "fit": mode, "space": "disparity" if kind.endswith("disparity")
                              else "depth", "seed": seed, "holdout": 0.2, "png_scale": png_scale,
                              "report": "alignment.json"}}
    report.paths["sidecar"] = _write_sidecar(out, pred_dir, settings, fitted)
    _write_report(out, report, settings["alignment"])
    return report


def _fit_one(pred_dir: Path, anchors: Path, rel: str, row: dict, kind: str, fit_args: dict, **read_args):
    """``rel``'s prediction and its :func:`~diffdepth.evaluation.alignment.fit_anchors` result (``row`` gets
    the anchors file); an :class:`InputError` or ``ValueError`` says why it cannot be aligned."""
    from ..data.anchors import find_anchor_file, read_anchors
    from ..evaluation.alignment import fit_anchors

    src = anchors if anchors.is_file() else find_anchor_file(anchors, rel)
    if src is None:
        raise InputError(f"no anchors for {rel} in {anchors} (looked for {rel}.npy|png|csv|bin)")
    row["anchors_file"] = str(src)
    try:
        pred = np.squeeze(np.load(pred_dir / f"{rel}.npy"))
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read {pred_dir / rel}.npy ({err})") from None
    if pred.ndim != 2 or not np.issubdtype(pred.dtype, np.number):
        raise InputError(f"{pred_dir / rel}.npy has shape {pred.shape}; expected a depth map [H,W]")
    return pred, fit_anchors(pred, read_anchors(src, pred.shape, **read_args), kind, **fit_args)


def _write_sidecar(out: Path, pred_dir: Path, settings: dict, fitted: Dict[str, dict]) -> Path:
    """OUT/predictions.json: the aligned maps under this run's settings, each with the source's intrinsics."""
    from ..types import METRIC_DEPTH
    from .sidecar import fingerprint, image_record, read_record, read_sidecar, write_sidecar

    sid = fingerprint(settings)
    old = read_sidecar(out) or {}
    entries = {**old.get("entries", {}), **{rel: {"npy": sid} for rel in fitted}}
    all_settings = {**old.get("settings", {}), sid: {**settings, "kind": METRIC_DEPTH}}
    records = dict(old.get("records", {}))
    for rel, info in fitted.items():  # each aligned map's record: the source's intrinsics + this fit
        src_rec = read_record(pred_dir, rel) or {}
        intr = src_rec.get("intrinsics") or {}
        records[rel] = image_record(
            METRIC_DEPTH, settings=settings, valid_range=info["valid_range"], size=info["size"],
            K=intr.get("K"), K_source=intr.get("source"), processing_res=src_rec.get("processing_res"),
            alignment={**settings["alignment"], **info["fit"]}, source=pred_dir / f"{rel}.npy",
            outputs={"npy": f"{rel}.npy"}, settings_id=sid)
    return write_sidecar(out, {**settings, "kind": METRIC_DEPTH, "settings": all_settings,
                               "settings_id": sid, "entries": entries, "records": records})


def _write_report(out: Path, report: AlignReport, alignment: dict) -> None:
    """OUT/alignment.csv (one row per prediction) and OUT/alignment.json (counts, settings, rows)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=REPORT_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in report.rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in REPORT_FIELDS})
    report.paths["csv"] = out / "alignment.csv"
    report.paths["json"] = out / "alignment.json"
    heldout = [r["heldout_absrel"] for r in report.rows if r["status"] == "ok" and r.get("heldout_absrel") is not None]
    summary = {"aligned": len(report.rows) - len(report.skipped), "skipped": len(report.skipped),
               "poor_fits": len(report.warned), "settings": alignment,
               "median_heldout_absrel": float(np.median(heldout)) if heldout else None, "images": report.rows}
    with atomic_path(report.paths["csv"]) as tmp:
        tmp.write_text(buf.getvalue())
    with atomic_path(report.paths["json"]) as tmp:
        tmp.write_text(json.dumps(summary, indent=1, default=str) + "\n")


def print_report(report: AlignReport, out: Path, stream) -> int:
    """One line per poor fit and skipped prediction; 1 when any prediction was skipped."""
    ok = len(report.rows) - len(report.skipped)
    for r in report.warned:
        print(f"warning: {r['name']}: {r['warning']} (scale {r['scale']:.4g}, shift {r['shift']:.4g}, "
              f"{r['n_inliers']}/{r['n_fit']} inliers)", file=stream)
    print(f"aligned {ok} prediction(s) to metric depth in {out}; report {report.paths['csv']}", file=stream)
    if report.skipped:
        print(f"{len(report.skipped)} prediction(s) skipped:", file=stream)
        for r in report.skipped:
            print(f"  {r['name']}: {r['message']}", file=stream)
        return 1
    return 0
