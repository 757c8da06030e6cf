"""One comparison table for several models on one benchmark, under one protocol.

``diffdepth eval`` with several ``--method``/``--checkpoint`` pairs, or ``--models FILE.yaml``::

    models:                       # or the list alone
      - {method: primedepth, checkpoint: /ckpts/primedepth, label: PrimeDepth}
      - {method: hf, checkpoint: depth-anything/Depth-Anything-V2-Small-hf, label: DA-V2-S}
      - method: primedepth        # the PrimeDepth paper's ensemble, scored in the same run
        checkpoint: /ckpts/primedepth
        ensemble_with: hf:depth-anything/Depth-Anything-V2-Large-hf
        label: PrimeDepth+DA-V2-L
        options: {}               # method options (as --opt), processing_res: N, dtype: fp16

Each model runs on the same samples (sharded under ``torchrun``/``accelerate launch`` as a
single ``eval`` is) and gets the usual reports in ``OUT/<label>/``; the table
``OUT/leaderboard.md`` + ``OUT/leaderboard.csv`` has, per model and dataset, every metric,
the protocol (crop, depth range), the alignment, the processing resolution, seconds per image
(model time: prediction + ensemble partner, not reading or scoring, after one untimed
warm-up image) and peak memory (CUDA: peak
allocated on the device during that model's run; CPU: the process's peak resident set so far,
which only grows, so it bounds the model that reached it).
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from ..errors import InputError
from ..utils import atomic_path
from .metrics import HIGHER_IS_BETTER, METRIC_NAMES

_ENTRY_KEYS = {"method", "checkpoint", "label", "options", "ensemble_with", "processing_res", "dtype"}


@dataclass
class Entry:
    method: str
    checkpoint: Optional[str] = None
    label: str = ""
    options: Dict[str, Any] = field(default_factory=dict)
    ensemble_with: Optional[str] = None
    processing_res: Optional[int] = None
    dtype: Optional[str] = None


def _numbered(names: List[str]) -> Iterator[str]:
    """``names`` with each repeat numbered: ``a, a#2, a#3``."""
    seen: Dict[str, int] = {}
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        yield name if seen[name] == 1 else f"{name}#{seen[name]}"


def unique_labels(entries: List[Entry]) -> List[Entry]:
    """Fill missing labels (``method`` or ``method:checkpoint``) and make them unique (``#2``...)."""
    labels = [e.label or (f"{e.method}:{e.checkpoint}" if e.checkpoint else e.method) for e in entries]
    for e, label in zip(entries, _numbered(labels)):
        e.label = label
    return entries


def pair_flags(flags, head: str, tail: str) -> List[list]:
    """Pair ``[(dest, value), ...]`` in command-line order into ``[head value, tail value or None]``:
    each ``--head`` starts a pair, a ``--tail`` belongs to the ``--head`` before it (or, when it
    comes first, to the first one). With a single ``--head`` the last ``--tail`` wins, as before."""
    pairs: List[list] = []
    pending = None
    heads = sum(d == head for d, _ in flags or [])
    for dest, value in flags or []:
        if dest == head:
            pairs.append([value, pending])
            pending = None
        elif dest != tail:
            continue
        elif not pairs:
            pending = value
        elif pairs[-1][1] is None or heads == 1:
            pairs[-1][1] = value
        else:
            flag, first = "--" + tail.replace("_", "-"), "--" + head.replace("_", "-")
            raise InputError(f"{flag} {value}: {first} {pairs[-1][0]} already has {flag} {pairs[-1][1]}; "
                             f"give one {flag} after each {first}")
    return pairs


def entries_from_flags(flags) -> List[Entry]:
    """``--method``/``--checkpoint`` pairs (see :func:`pair_flags`) as entries."""
    return unique_labels([Entry(method=m, checkpoint=c) for m, c in pair_flags(flags, "method", "checkpoint")])


def read_models_file(path: str) -> List[Entry]:
    """The ``models:`` list of a YAML file (or a YAML list at top level)."""
    import yaml

    file = Path(path).expanduser()
    try:
        data = yaml.safe_load(file.read_text())
    except FileNotFoundError:
        raise InputError(f"--models {file}: no such file") from None
    except yaml.YAMLError as err:
        raise InputError(f"--models {file} is not valid YAML ({str(err).splitlines()[0]})") from None
    items = data.get("models") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise InputError(f"--models {file}: expected a list of models (a `models:` list of {{method, checkpoint}})")
    entries = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "method" not in item:
            raise InputError(f"--models {file}: entry {i + 1} needs a `method` (got {item!r})")
        unknown = set(item) - _ENTRY_KEYS
        if unknown:
            raise InputError(f"--models {file}: entry {i + 1} has unknown key(s) {', '.join(sorted(unknown))} "
                             f"(allowed: {', '.join(sorted(_ENTRY_KEYS))})")
        if not isinstance(item.get("options", {}) or {}, dict):
            raise InputError(f"--models {file}: entry {i + 1}: `options` must be a mapping")
        res = item.get("processing_res")
        if res is not None and (not isinstance(res, int) or isinstance(res, bool) or res < 0):
            raise InputError(f"--models {file}: entry {i + 1}: processing_res must be an integer >= 0, got {res!r}")
        if item.get("ensemble_with") is not None and not isinstance(item["ensemble_with"], str):
            raise InputError(f"--models {file}: entry {i + 1}: ensemble_with must be a folder or METHOD:CHECKPOINT")
        entries.append(Entry(method=str(item["method"]),
                             checkpoint=None if item.get("checkpoint") is None else str(item["checkpoint"]),
                             label=str(item.get("label") or ""), options=dict(item.get("options") or {}),
                             ensemble_with=item.get("ensemble_with"), processing_res=item.get("processing_res"),
                             dtype=item.get("dtype")))
    return unique_labels(entries)


def _folder_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+#-]+", "_", label).strip("._") or "model"


def describe_resolution(model, res: int) -> str:
    """The resolution a model ran at, in words."""
    if res == 0:
        describe = getattr(model, "describe_resolution", None)
        return describe() if describe is not None else "native"
    return f"long side {res}" + (" (cap)" if getattr(model, "processing_res_is_cap", False) else "")


@dataclass
class Bench:
    """One benchmark of a leaderboard: its protocol, opened dataset, sample count and folder name."""

    protocol: Any
    dataset: Any
    n: int
    folder: str = ""


def score_entry(entry: Entry, benches: List[Bench], out: Path, *, alignment: Optional[str] = None,
                processing_res: Optional[int] = None, options: Optional[dict] = None, device="auto",
                dtype=None, progress: bool = False) -> List[dict]:
    """Load one model (once), run it on this process's shard of each benchmark, gather, write
    reports in ``out`` (``out/<bench.folder>`` when there are several benchmarks).

    Returns the summaries (with ``seconds_per_image``, ``peak_memory_mib``) on the main
    process, ``[]`` on the others.
    """
    import torch

    import diffdepth
    from ..ensemble import Ensembler
    from .job import score
    from .runner import ModelPredictor

    model = diffdepth.load_model(entry.method, entry.checkpoint, device=device, dtype=entry.dtype or dtype)
    param = next(model.parameters())
    opts = {**(options or {}), **entry.options}
    ensemble = Ensembler(entry.ensemble_with, device=device, dtype=entry.dtype or dtype) if entry.ensemble_with else None
    summaries = []
    for bench in benches:
        folder = out / bench.folder if len(benches) > 1 else out
        predictor = ModelPredictor(model, bench.protocol, processing_res if entry.processing_res is None
                                   else entry.processing_res, ensemble, **opts)
        res = predictor.pipe.processing_res
        info = dict(method=entry.method, checkpoint=entry.checkpoint, label=entry.label,
                    ensemble_with=entry.ensemble_with, options=opts, processing_res=res,
                    processing_resolution=describe_resolution(model, res), alignment=alignment or bench.protocol.alignment,
                    kind=None, seconds_per_image=None, peak_memory_mib=None, peak_memory_kind=None,
                    processes=None,  # filled in by score(), in this order
                    predictions=str(folder / "predictions"), benchmark=bench.folder or bench.protocol.name,
                    data_root=str(getattr(bench.dataset, "root", "")))
        done = score(bench.dataset, bench.n, predictor, bench.protocol, folder, info, alignment=alignment,
                     progress=progress, timed_on=param.device, save_dir=folder / "predictions")
        summaries += [done[0]] if done else []
    del model, ensemble
    if param.device.type == "cuda":
        torch.cuda.empty_cache()
    return summaries


# ---------------------------------------------------------------------------- the table
TABLE_FIELDS = ["model", "method", "checkpoint", "ensemble_with", "dataset", "protocol", "alignment",
                "processing_resolution", "kind", "evaluated", "samples", *METRIC_NAMES, "seconds_per_image",
                "peak_memory_mib", "peak_memory_kind"]


def _protocol_text(summary: dict) -> str:
    p = summary.get("protocol") or {}
    return f"{p.get('name', summary.get('dataset', ''))}, crop {p.get('crop') or 'none'}, " \
           f"depth {p.get('min_depth')}–{p.get('max_depth')} m"


def table_rows(summaries: List[dict]) -> List[dict]:
    rows = []
    for s in summaries:
        row = {"model": s.get("label"), "method": s.get("method"), "checkpoint": s.get("checkpoint") or "",
               "ensemble_with": s.get("ensemble_with") or "", "dataset": s.get("benchmark") or s.get("dataset"),
               "protocol": _protocol_text(s),
               "alignment": ", ".join(s.get("alignments") or []) or s.get("alignment", ""),
               "processing_resolution": s.get("processing_resolution", ""), "kind": s.get("kind") or "",
               "evaluated": s["counts"]["evaluated"], "samples": s["counts"]["samples"],
               "seconds_per_image": s.get("seconds_per_image"), "peak_memory_mib": s.get("peak_memory_mib"),
               "peak_memory_kind": s.get("peak_memory_kind", "")}
        row.update({m: s["metrics"].get(m) for m in METRIC_NAMES})
        rows.append(row)
    return rows


def _num(v, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def leaderboard_csv(rows: List[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(TABLE_FIELDS)
    for r in rows:
        w.writerow(["" if r.get(k) is None else (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k])
                    for k in TABLE_FIELDS])
    return buf.getvalue()


def leaderboard_markdown(rows: List[dict]) -> str:
    """One table per dataset; the best value of each metric in bold."""
    lines = ["# Leaderboard", ""]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        group = [r for r in rows if r["dataset"] == dataset]
        best = {}
        for m in METRIC_NAMES:
            vals = [r[m] for r in group if r[m] is not None]
            if vals:
                best[m] = max(vals) if m in HIGHER_IS_BETTER else min(vals)
        lines += [f"## {dataset} ({group[0]['protocol']})", ""]
        head = ["model", *[m + (" ↑" if m in HIGHER_IS_BETTER else " ↓") for m in METRIC_NAMES],
                "alignment", "processing res", "s/image", "peak MiB", "evaluated"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in group:
            cells = [r["model"] + (f" (+ {r['ensemble_with']})" if r["ensemble_with"] and r["ensemble_with"] not in r["model"] else "")]
            for m in METRIC_NAMES:
                text = _num(r[m], ".4f")
                cells.append(f"**{text}**" if r[m] is not None and r[m] == best.get(m) and len(group) > 1 else text)
            cells += [r["alignment"], str(r["processing_resolution"]), _num(r["seconds_per_image"], ".3f"),
                      _num(r["peak_memory_mib"], ".0f"), f"{r['evaluated']}/{r['samples']}"]
            lines.append("| " + " | ".join(cells) + " |")
        kinds = sorted({r["peak_memory_kind"] for r in group if r["peak_memory_kind"]})
        lines += ["", f"s/image: model time per image (prediction + ensemble partner, after a warm-up image); peak MiB: {', '.join(kinds)}", ""]
    return "\n".join(lines)


def write_leaderboard(out: Path, summaries: List[dict]) -> Dict[str, Path]:
    order = list(dict.fromkeys(s.get("benchmark") for s in summaries))
    rows = table_rows(sorted(summaries, key=lambda s: order.index(s.get("benchmark"))))  # stable: models in order
    paths = {"md": Path(out) / "leaderboard.md", "csv": Path(out) / "leaderboard.csv"}
    for key, text in (("md", leaderboard_markdown(rows)), ("csv", leaderboard_csv(rows))):
        with atomic_path(paths[key]) as tmp:
            tmp.write_text(text)
    return paths


def run_leaderboard(entries: List[Entry], benches: List[Bench], out: Path, **kwargs) -> Optional[Dict[str, Path]]:
    """Score every entry on the same samples of every benchmark; the table on the main process
    (``None`` elsewhere). Rows are grouped by benchmark."""
    for bench, folder in zip(benches, _numbered([_folder_name(b.folder or b.protocol.name) for b in benches])):
        bench.folder = folder  # unique folder names per benchmark
    summaries = []
    for entry in unique_labels(entries):
        summaries += score_entry(entry, benches, Path(out) / _folder_name(entry.label), **kwargs)
    from .. import distributed

    if not distributed.is_main():
        return None
    return write_leaderboard(Path(out), summaries)
