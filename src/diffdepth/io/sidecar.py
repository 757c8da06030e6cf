"""What a prediction folder holds: one JSON sidecar, ``predictions.json``, written by
:func:`write_sidecar` and read by :func:`read_sidecar` (``predict`` and ``eval`` both).

Keys::

    format       "diffdepth-predictions/1"
    kind         affine_invariant_depth | affine_invariant_disparity | metric_depth | relative_depth
    units        "m" (metric_depth) | "relative" (depth up to scale/shift) | "relative disparity"
    method, checkpoint, options    what produced the newest predictions (options: method options,
                                   processing_res, dtype, ...)
    settings     {id: {method, checkpoint, options, kind}}: every setting some file was made with
    entries      (predict only) {relative output base: {format: fingerprint}}; a fingerprint is
                 ``<settings id>`` or ``<settings id>:<render id>`` for outputs drawn with export
                 options (colour map, intrinsics). A file whose fingerprint differs from the
                 current run's, or that is not listed, is recomputed by a rerun.
    inputs       (predict only) {relative output base: {"image": stamp, "K": stamp}}: the input file
                 (size and modification time, as rsync's quick check) and the K file that applied to it
                 (its bytes' digest) when its outputs were written. A rerun recomputes every output of
                 an input that changed, and redraws ply/points/glb when its K file changed.
    records      {relative output base: record}: what each prediction is, made by
                 :func:`image_record` (kind, quantity, scale, units, valid_range, size, intrinsics,
                 alignment, method, checkpoint, processing_res, options, input, outputs, settings_id);
                 read with :func:`read_record`. Written by ``predict`` and ``align``.

Folders written by other tools may instead hold ``kind.txt`` (one kind name); the reader
accepts it. A folder holding ``predictions.json`` is an output folder and is never read as
input by ``predict``.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Union

from ..errors import InputError
from ..types import AFFINE_DEPTH, AFFINE_DISPARITY, DEPTH_KINDS, METRIC_DEPTH, RELATIVE_DEPTH
from ..utils import atomic_path

PathLike = Union[str, os.PathLike]
SIDECAR = "predictions.json"
LEGACY_KIND_FILE = "kind.txt"
FORMAT = "diffdepth-predictions/1"


def units_of(kind: str) -> str:
    if kind == METRIC_DEPTH:
        return "m"
    return "relative disparity" if kind == AFFINE_DISPARITY else "relative"


#: kind -> (quantity, scale): what the values are, and up to what they are known
KIND_PARTS = {AFFINE_DEPTH: ("depth", "affine-invariant"), AFFINE_DISPARITY: ("disparity", "affine-invariant"),
              RELATIVE_DEPTH: ("depth", "relative"), METRIC_DEPTH: ("depth", "metric")}
#: the keys of every per-prediction record (README: "What a prediction is")
RECORD_KEYS = ("kind", "quantity", "scale", "units", "valid_range", "size", "intrinsics", "alignment", "method",
               "checkpoint", "processing_res", "options", "input", "outputs", "settings_id")


def image_record(kind: str, *, settings: Optional[dict] = None, valid_range=None, size=None, K=None,
                 K_source: Optional[str] = None, alignment: Optional[dict] = None, processing_res=None,
                 source: Optional[PathLike] = None, outputs: Optional[Dict[str, str]] = None,
                 settings_id: Optional[str] = None) -> dict:
    """The record of one prediction (one ``records`` entry of ``predictions.json``); every key of
    :data:`RECORD_KEYS` is present (None where it does not apply)."""
    if kind not in DEPTH_KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    from .export import intrinsics_kind

    settings = settings or {}
    quantity, scale = KIND_PARTS[kind]
    intr = None
    if K is not None:
        K = [[float(v) for v in row] for row in K]
        intr = {"K": K, "fx": K[0][0], "fy": K[1][1], "cx": K[0][2], "cy": K[1][2], "source": K_source,
                "from": intrinsics_kind(K_source or "")}
    return {"kind": kind, "quantity": quantity, "scale": scale, "units": units_of(kind),
            "valid_range": None if valid_range is None else [float(valid_range[0]), float(valid_range[1])],
            "size": None if size is None else [int(size[0]), int(size[1])], "intrinsics": intr,
            "alignment": alignment, "method": settings.get("method"), "checkpoint": settings.get("checkpoint"),
            "processing_res": processing_res, "options": settings.get("options"),
            "input": None if source is None else str(Path(source).resolve()), "outputs": dict(outputs or {}),
            "settings_id": settings_id}


def read_record(folder: PathLike, rel: str) -> Optional[dict]:
    """The record of the prediction ``rel`` (output base relative to ``folder``, no suffix), else a
    record made from the folder's own keys (older folders, ``kind.txt``), else None."""
    data = read_sidecar(folder)
    if data is None:
        return None
    rec = data.get("records", {}).get(rel)
    if rec is not None:
        return rec
    if rel not in data["entries"] and data["entries"]:
        return None
    kind = prediction_kind(folder)
    if kind is None:
        return None
    return image_record(kind, settings=data, alignment=data.get("alignment"),
                        outputs={f: rel for f in data["entries"].get(rel, {})})


def fingerprint(obj) -> str:
    """Short stable id of a JSON-able value (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def is_prediction_folder(folder: PathLike) -> bool:
    return (Path(folder) / SIDECAR).is_file()


def read_sidecar(folder: PathLike) -> Optional[dict]:
    """The folder's record, or None when it has none. ``kind.txt`` alone gives ``{"kind": ...}``.

    A malformed file or an unknown kind stops with an error naming the file.
    """
    folder = Path(folder)
    path = folder / SIDECAR
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise InputError(f"{path} is not readable JSON ({err}); delete it to rebuild the folder") from None
        if not isinstance(data, dict):
            raise InputError(f"{path} is not a diffdepth predictions record; delete it to rebuild the folder")
    else:
        legacy = folder / LEGACY_KIND_FILE
        if not legacy.is_file():
            return None
        data = {"kind": legacy.read_text().strip()}
        path = legacy
    kind = data.get("kind")
    if kind is not None and kind not in DEPTH_KINDS:
        raise InputError(f"{path}: unknown kind {kind!r}; expected one of {', '.join(DEPTH_KINDS)}")
    data.setdefault("entries", {})
    data.setdefault("settings", {})
    data.setdefault("records", {})
    return data


def write_sidecar(folder: PathLike, record: dict) -> Path:
    """Write ``record`` (kind, method, checkpoint, options, ...) as ``folder/predictions.json``, atomically;
    ``format`` and ``units`` are filled in."""
    record = dict(record)
    record["format"] = FORMAT
    if record.get("kind"):
        if record["kind"] not in DEPTH_KINDS:
            raise ValueError(f"unknown kind {record['kind']!r}")
        record["units"] = units_of(record["kind"])
    path = Path(folder) / SIDECAR
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
    return path


def checkpoint_identity(checkpoint: Optional[str]) -> Optional[str]:
    """A local checkpoint as its absolute path + the newest modification time of its files
    (a retrained folder at the same path counts as another checkpoint); a hub id as is."""
    if checkpoint is None:
        return None
    p = Path(checkpoint).expanduser()
    if not p.exists():
        return str(checkpoint)
    files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
    stamp = max((f.stat().st_mtime_ns for f in files), default=0)
    return f"{p.resolve()}@{stamp}"


#: outputs drawn with the camera intrinsics (a K file beside the image)
K_FORMATS = ("ply", "points", "glb")


def input_stamp(source: PathLike) -> Optional[dict]:
    """What a rerun compares to tell a changed input: the file's size and modification time, and the
    digest of the K file that applies to it (:func:`~diffdepth.io.intrinsics.find_k_file`; None if none).
    None when the input cannot be read (its job fails later with the reason)."""
    from .intrinsics import find_k_file

    try:
        st = Path(source).stat()
        k_file, _ = find_k_file(source)
        k = None if k_file is None else f"{k_file.name}:{hashlib.sha1(k_file.read_bytes()).hexdigest()[:16]}"
    except OSError:
        return None
    return {"image": f"{st.st_size}:{st.st_mtime_ns}", "K": k}


class OutputIndex:
    """The record of one ``predict --out`` folder: which input has which output file, made how.

    ``settings``: what determines the predicted values (method, checkpoint, options, ...).
    ``render``: per output format, what else determines the file (e.g. the colour map).
    """

    def __init__(self, folder: PathLike, settings: dict, render: Optional[Dict[str, dict]] = None,
                 writer: bool = True):
        self.folder = Path(folder)
        self.writer = writer  # one process writes the file; the others hand their records to it (merge)
        self.new: Dict[str, dict] = {}  # what this process recorded: {rel: {format: file id}}, kind
        self.stamps: Dict[str, dict] = {}  # rel -> its input's stamp now (input_stamp), noted by missing()
        self.settings = settings
        self.sid = fingerprint(settings)
        self.render = render or {}
        old = read_sidecar(self.folder) if self.folder.is_dir() else None
        self.data = (old if old is not None and old.get("format") == FORMAT
                     else {"entries": {}, "settings": {}, "records": {}})
        self._dirty = False
        self._last_flush = time.monotonic()

    def file_id(self, fmt: str) -> str:
        extra = self.render.get(fmt)
        return f"{self.sid}:{fingerprint(extra)}" if extra else self.sid

    def missing(self, rel: str, formats: Iterable[str], paths: Dict[str, Path],
                stamp: Optional[dict] = None) -> List[str]:
        """The formats of ``rel`` that must be (re)computed: absent, unrecorded, made otherwise, or made from
        an input that has changed since (``stamp``: its :func:`input_stamp` now, recorded with the outputs)."""
        entry = self.data["entries"].get(rel, {})
        stale = set()
        if stamp is not None:
            self.stamps[rel] = stamp
            stale = self._stale(rel, stamp)
        return [f for f in formats if not paths[f].exists() or entry.get(f) != self.file_id(f) or f in stale]

    def _stale(self, rel: str, stamp: dict) -> set:
        """The recorded formats of ``rel`` that an input change since they were written leaves out of date
        (none for a folder written before inputs were stamped)."""
        old = self.data.get("inputs", {}).get(rel)
        if old is None:
            return set()
        if old.get("image") != stamp.get("image"):
            return set(self.data["entries"].get(rel, {}))
        return set(K_FORMATS) if old.get("K") != stamp.get("K") else set()

    def _put_files(self, rel: str, files: Dict[str, str], stamp: Optional[dict]) -> None:
        """Record ``files`` ({format: file id}) of ``rel``, made from the input as ``stamp`` says; the
        recorded formats that input change left stale and that were not remade are forgotten (recomputed
        when next asked for)."""
        entry = self.data["entries"].setdefault(rel, {})
        if stamp is not None:
            for f in self._stale(rel, stamp) - set(files):
                entry.pop(f, None)
            self.data.setdefault("inputs", {})[rel] = stamp
        entry.update(files)

    def settings_changed(self) -> Optional[dict]:
        """The settings the folder's newest outputs were made with, when they differ from this run's."""
        old = self.data.get("settings", {}).get(self.data.get("settings_id", ""))
        return old if old is not None and self.data.get("settings_id") != self.sid else None

    def record(self, rel: str, formats: Iterable[str], kind: str, info: Optional[dict] = None) -> None:
        """Note that ``rel``'s ``formats`` were written now; ``info``: its :func:`image_record`
        (``outputs`` and ``settings_id`` are filled in here)."""
        files = {f: self.file_id(f) for f in formats}
        stamp = self.stamps.get(rel)
        self._put_files(rel, files, stamp)
        self.new[rel] = {"files": files, "kind": kind, "record": info, "stamp": stamp}
        self._put_record(rel, info)
        self._take(kind)

    def _put_record(self, rel: str, info: Optional[dict]) -> None:
        if info is None:
            return
        info = dict(info)
        old = self.data["records"].get(rel) or {}
        outputs = dict(old.get("outputs") or {}) if old.get("settings_id") == self.sid else {}
        outputs.update(info.get("outputs") or {})
        entry = self.data["entries"].get(rel, {})
        info["outputs"] = {f: outputs[f] for f in sorted(outputs) if f in entry}
        info["settings_id"] = self.sid
        self.data["records"][rel] = info

    def merge(self, records: Iterable[Dict[str, dict]]) -> None:
        """Add what other processes recorded (their :attr:`new`)."""
        for new in records:
            for rel, rec in new.items():
                self._put_files(rel, rec["files"], rec.get("stamp"))
                self._put_record(rel, rec.get("record"))
                self._take(rec["kind"])

    def _take(self, kind: str) -> None:
        self.data["settings"][self.sid] = {**self.settings, "kind": kind}
        self.data["settings_id"] = self.sid
        self.data["kind"] = kind
        for key in ("method", "checkpoint", "options"):
            self.data[key] = self.settings.get(key)
        self._dirty = True
        if time.monotonic() - self._last_flush > 2.0:  # a killed run loses at most ~2 s of records
            self.flush()

    def flush(self) -> None:
        if self._dirty and self.writer:
            # kind/units describe the newest outputs; files made otherwise carry another settings id
            write_sidecar(self.folder, self.data)
            self._dirty = False
        self._last_flush = time.monotonic()


def prediction_kind(folder: PathLike) -> Optional[str]:
    """The kind recorded for the predictions in ``folder`` (sidecar or ``kind.txt``), else None.

    Stops when the folder's ``.npy`` predictions were made with settings of different kinds.
    """
    data = read_sidecar(folder)
    if data is None:
        return None
    ids = {e.get("npy", "").split(":")[0] for e in data["entries"].values() if e.get("npy")}
    kinds = {data["settings"].get(i, {}).get("kind") for i in ids} - {None}
    if len(kinds) > 1:
        raise InputError(f"{Path(folder) / SIDECAR}: the .npy predictions mix kinds {sorted(kinds)} "
                         f"(made by different runs); rerun `diffdepth predict` into a fresh --out")
    return kinds.pop() if kinds else data.get("kind")


#: ground-truth depth maps of the folder layout (``diffdepth synth``): ``<name>_depth.png`` beside ``<name>.<image>``
GT_SUFFIX = "_depth"


def excluded_input(path: Path, out_root: Optional[Path] = None, cache: Optional[Dict[Path, bool]] = None
                   ) -> Optional[str]:
    """Why a file found in an input folder is not an input (None: it is one).

    * ``"output folder"``: it lies under ``out_root`` or under a folder holding a ``predictions.json``;
    * ``"ground truth"``: ``X_depth.png`` with an image ``X.png``/``X.jpg``/... beside it.
    """
    from .images import IMAGE_EXTENSIONS

    path = Path(path)
    cache = {} if cache is None else cache
    resolved = path.resolve()
    if out_root is not None:
        root = Path(out_root).expanduser().resolve()
        if resolved == root or root in resolved.parents:
            return "output folder"
    for parent in resolved.parents:
        if parent not in cache:
            cache[parent] = is_prediction_folder(parent)
        if cache[parent]:
            return "output folder"
    if path.stem.endswith(GT_SUFFIX) and path.suffix.lower() == ".png":
        base = path.stem[: -len(GT_SUFFIX)]
        if any((path.parent / f"{base}{ext}").is_file() for ext in IMAGE_EXTENSIONS):
            return "ground truth"
    return None
