"""Shared benchmark helpers: peak memory of a code region, timing, subprocess workers.

Peak CPU memory is read from the kernel: ``VmHWM`` (peak resident set) is reset by
writing ``5`` to ``/proc/self/clear_refs``, so ``peak_rss_delta`` measures the highest
resident memory reached inside the region above the resident memory at its start.
Each configuration runs in its own subprocess so allocator caches of one measurement
cannot hide the peak of the next. On CUDA, ``torch.cuda.max_memory_allocated`` is used.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Dict, Iterator, List

import torch


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


@contextmanager
def peak_memory(device: torch.device) -> Iterator[Dict[str, float]]:
    """``with peak_memory(dev) as m: ...`` then ``m["peak_gb"]`` = peak above the start."""
    result: Dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result["peak_gb"] = (torch.cuda.max_memory_allocated(device) - start) / 1e9
    else:
        reset_peak()
        start = _status_kb("VmRSS")
        yield result
        result["peak_gb"] = (_status_kb("VmHWM") - start) * 1024 / 1e9


def timed(fn, device: torch.device, repeats: int = 1, warmup: int = 0) -> float:
    """Median wall time of ``fn()`` in seconds."""
    for _ in range(warmup):
        fn()
    times: List[float] = []
    for _ in range(max(1, repeats)):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def run_worker(module: str, args: List[str], timeout: float = 1800) -> dict:
    """Run ``python -m module args`` and parse the JSON object on its last stdout line."""
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"{os.cpu_count()}-core {platform.machine()} CPU, torch {torch.__version__} ({torch.get_num_threads()} threads)"
