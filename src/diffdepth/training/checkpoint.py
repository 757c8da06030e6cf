"""Checkpoint folders: atomic writes, finding the newest complete one, keeping the last K.

Layout of ``RUN/checkpoint-STEP/``::

    diffdepth.json, model.safetensors ...   model.save_pretrained(): loadable by
                                            `diffdepth predict --checkpoint RUN/checkpoint-STEP`
                                            (the EMA weights when ema.enabled)
    training_state/
        trainable.safetensors   raw (non-EMA) trainable parameters + all buffers
        optimizer.bin           optimizer state (Accelerate format)
        scaler.pt               fp16 GradScaler state (fp16 only)
        random_states_R.pkl     python/numpy/torch(/cuda) RNG state of process R
        ema.pt                  EMA shadow weights + update count (ema.enabled only)
        state.json              step, micro-batches consumed, seed, world size — written last

A checkpoint is written into ``RUN/.checkpoint-STEP.tmp`` (every file fsynced), then
renamed to ``checkpoint-STEP`` in one ``os.replace``; a folder named
``checkpoint-STEP`` therefore always is complete. A run killed while saving
leaves only the ``.tmp`` folder, which is ignored and removed on ``--resume``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import List, Optional, Tuple

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_DIR = "training_state"
STATE_FILE = "state.json"


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step}"


def temp_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f".{checkpoint_name(step)}.tmp"


def is_complete(path: Path) -> bool:
    state = Path(path) / STATE_DIR / STATE_FILE
    try:
        data = json.loads(state.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and "step" in data


def list_checkpoints(run_dir: Path) -> List[Tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    out = []
    for p in run_dir.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if m and p.is_dir() and is_complete(p):
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def read_state(path: Path) -> dict:
    return json.loads((Path(path) / STATE_DIR / STATE_FILE).read_text())


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_state_file(tmp: Path, state: dict) -> None:
    """Write ``state.json`` (the completeness marker) last."""
    d = Path(tmp) / STATE_DIR
    d.mkdir(parents=True, exist_ok=True)
    (d / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True))


def publish(tmp: Path, final: Path) -> Path:
    """fsync ``tmp`` and atomically rename it to ``final`` (replacing an older one)."""
    from ..utils import apply_umask, replace_dir

    tmp, final = Path(tmp), Path(final)
    apply_umask(tmp)  # safetensors/torch writers make 0600 files; checkpoints are shared
    _fsync_tree(tmp)
    replace_dir(tmp, final)
    _fsync_dir(final.parent)
    return final


def prune(run_dir: Path, keep_last: int) -> List[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints (0: keep all)."""
    if keep_last <= 0:
        return []
    found = list_checkpoints(run_dir)
    removed = []
    for _, p in found[:-keep_last]:
        # rename first so a kill during rmtree never leaves a half-deleted "complete" folder
        doomed = p.with_name(f".{p.name}.deleting")
        os.replace(p, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(p)
    return removed


def clean_temporaries(run_dir: Path) -> List[Path]:
    """Remove leftovers of interrupted saves/deletions (``.checkpoint-*`` folders)."""
    run_dir = Path(run_dir)
    out = []
    if not run_dir.is_dir():
        return out
    for p in run_dir.iterdir():
        if p.name.startswith(".checkpoint-") and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            out.append(p)
    return out
