"""Shared benchmark helpers: peak memory of a code region, timing, subprocess workers.

Peak CPU memory is read from the kernel: ``VmHWM`` (peak resident set) is reset by
writing ``5`` to ``/proc/self/clear_refs``, so ``peak_rss_delta`` measures the highest
resident memory reached inside the region above the resident memory at its start.
Each configuration runs in its own subprocess so allocator caches of one measurement
cannot hide the peak of the next. On CUDA, ``torch.cuda.max_memory_allocated`` is used.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Tuple

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


# ------------------------------------------------------------------------------------ common flags
#: the core flags of every ``diffdepth bench`` subcommand (README "Benchmarks")
COMMON_FLAGS = ("sizes", "json", "record", "tiny", "device", "dtype", "threads", "repeats")
_TYPES = {"sizes": None, "json": str, "record": str, "tiny": None, "device": str, "dtype": str, "threads": int,
          "repeats": int}
_HELP = {
    "sizes": "comma list of image sizes, N (square) or HxW",
    "json": "also write the raw results as JSON to this file",
    "record": "also write the report (markdown table) to this file",
    "tiny": "tiny random models: a smoke run of the benchmark in seconds",
    "device": "cpu | cuda",
    "dtype": "fp32 | fp16 | bf16",
    "threads": "torch CPU threads (0: torch's default)",
    "repeats": "timed repeats per measurement (median)",
}
Size = Tuple[int, int]


def parse_sizes(text: str) -> List[Size]:
    """``"256,384x512"`` -> ``[(256, 256), (384, 512)]`` (height, width)."""
    sizes: List[Size] = []
    for item in str(text).split(","):
        item = item.strip().lower()
        parts = item.split("x")
        if not item or len(parts) > 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise argparse.ArgumentTypeError(f"{item!r} is not a size: give N (square) or HxW, e.g. 256,384x512")
        h, w = int(parts[0]), int(parts[-1])
        sizes.append((h, w))
    return sizes


def format_size(size: Size) -> str:
    h, w = size
    return f"{h}²" if h == w else f"{h}x{w}"


class _SquareSides(argparse.Action):
    """``--resolutions 256 512`` (the old marigold spelling) -> the same value as ``--sizes 256,512``."""

    def __call__(self, parser, namespace, values, option_string=None):
        if any(v <= 0 for v in values):
            parser.error(f"{option_string}: sizes must be positive")
        setattr(namespace, self.dest, [(v, v) for v in values])


def add_common_arguments(p: argparse.ArgumentParser, name: str, *, sizes: Optional[str] = None,
                         tiny_sizes: Optional[str] = None, square: bool = False, defaults: Optional[Dict] = None,
                         unsupported: Optional[Dict[str, str]] = None, helps: Optional[Dict[str, str]] = None,
                         dests: Optional[Dict[str, str]] = None, fixed: Optional[Dict[str, tuple]] = None,
                         hw_alias: bool = False,
                         resolutions_alias: bool = False) -> None:
    """Add :data:`COMMON_FLAGS` to a benchmark's parser, once for all benchmarks.

    ``sizes``: the default ``--sizes``; ``tiny_sizes``: the default under ``--tiny``; ``square``: only
    N or NxN sizes. ``defaults``: per-flag defaults (device, dtype, threads, repeats). ``unsupported``:
    flag -> why it cannot apply; the flag is still parsed, and :func:`finalize` refuses it with that
    reason when given. ``fixed``: flag -> (the only value, why); any other value is refused. ``dests``: flag -> the benchmark's older attribute it maps to (gpu: tiny ->
    dry_run, record -> out). ``hw_alias``: keep ``--height/--width`` (one size); ``resolutions_alias``:
    keep ``--resolutions N N ...``. Call :func:`finalize` on the parsed namespace before running.
    """
    defaults, unsupported, helps, dests = defaults or {}, unsupported or {}, helps or {}, dests or {}
    fixed = fixed or {}
    metavars = {"sizes": "N|HxW,...", "json": "FILE", "record": "FILE", "device": "DEVICE", "threads": "N",
                "repeats": "N"}
    for flag in COMMON_FLAGS:
        dest = dests.get(flag, flag)
        why = unsupported.get(flag)
        text = f"not applicable here ({why}); refused when given" if why else helps.get(flag, _HELP[flag])
        if flag == "sizes":
            if not why:
                text += f" (default {sizes}" + (f"; {tiny_sizes} with --tiny)" if tiny_sizes else ")")
            p.add_argument("--sizes", dest=dest, type=parse_sizes, default=None, help=text, metavar=metavars[flag])
        elif flag == "tiny":
            p.add_argument("--tiny", dest=dest, action="store_true", default=None if why else False, help=text)
        else:
            default = None if why else defaults.get(flag)
            if flag in fixed:
                default, text = fixed[flag][0], f"only {fixed[flag][0]} here ({fixed[flag][1]})"
            elif flag in ("device", "dtype", "threads", "repeats") and not why and default is not None:
                text += f" (default {default})"
            kw = {"choices": ["fp32", "fp16", "bf16"]} if flag == "dtype" else {"metavar": metavars[flag]}
            p.add_argument(f"--{flag}", dest=dest, type=_TYPES[flag], default=default, help=text, **kw)
    if resolutions_alias:
        p.add_argument("--resolutions", dest="sizes", type=int, nargs="+", action=_SquareSides,
                       help="square image sides, space-separated (same as --sizes)")
    if hw_alias:
        p.add_argument("--height", type=int, default=None, help="image height (same as --sizes HxW)")
        p.add_argument("--width", type=int, default=None, help="image width (same as --sizes HxW)")
    p.set_defaults(_common=dict(name=name, sizes=sizes, tiny_sizes=tiny_sizes, square=square, hw_alias=hw_alias,
                                unsupported=unsupported, fixed=fixed, dests=dests))


def finalize(args: argparse.Namespace) -> argparse.Namespace:
    """Resolve the common flags after parsing: aliases, defaults, refusals (one-line errors)."""
    spec = getattr(args, "_common", None)
    if spec is None or getattr(args, "_common_done", False):
        return args
    name = spec["name"]

    def fail(msg: str):
        raise SystemExit(f"diffdepth bench {name}: error: {msg}")

    for flag, why in spec["unsupported"].items():
        if getattr(args, spec["dests"].get(flag, flag), None) not in (None, False):
            fail(f"--{flag} does not apply to this benchmark: {why}")
    for flag, (value, why) in spec["fixed"].items():
        if getattr(args, flag) != value:
            fail(f"--{flag} {getattr(args, flag)}: this benchmark runs with {value} only ({why})")
    if spec["hw_alias"] and (args.height is not None or args.width is not None):
        if args.sizes is not None:
            fail("give either --sizes or --height/--width, not both")
        h0, w0 = parse_sizes(spec["sizes"])[0]
        h, w = args.height or h0, args.width or w0
        if h <= 0 or w <= 0:
            fail(f"--height/--width must be positive, got {h}x{w}")
        args.sizes = [(h, w)]
    if "sizes" not in spec["unsupported"]:
        if args.sizes is None:
            tiny = getattr(args, spec["dests"].get("tiny", "tiny"), False)
            args.sizes = parse_sizes(spec["tiny_sizes"] if tiny and spec["tiny_sizes"] else spec["sizes"])
        if spec["square"] and any(h != w for h, w in args.sizes):
            fail(f"--sizes {','.join(format_size(s) for s in args.sizes)}: this benchmark measures square images "
                 f"only; give N")
        if spec["hw_alias"]:  # the old attributes stay true (first size)
            args.height, args.width = args.sizes[0]
    for flag in ("repeats", "threads"):
        value = getattr(args, spec["dests"].get(flag, flag), None)
        if flag not in spec["unsupported"] and value is not None and value < (1 if flag == "repeats" else 0):
            fail(f"--{flag} {value}: must be {'>= 1' if flag == 'repeats' else '>= 0'}")
    for flag in ("json", "record"):
        path = getattr(args, spec["dests"].get(flag, flag), None)
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            fail(f"--{flag} {path}: folder {os.path.dirname(os.path.abspath(path))} does not exist; create it first")
    args._common_done = True
    return args


def write_outputs(args: argparse.Namespace, text: str, results, json_payload: Optional[dict] = None) -> None:
    """``--record``: ``text`` (the printed report); ``--json``: ``results`` (or ``json_payload`` where a
    benchmark keeps its own JSON layout) — each written atomically."""
    from ..utils import atomic_path

    if getattr(args, "record", None):
        with atomic_path(args.record) as tmp:
            tmp.write_text(text.rstrip("\n") + "\n")
    if getattr(args, "json", None):
        payload = json_payload or {"benchmark": args._common["name"], "sizes": [list(s) for s in args.sizes],
                                   "results": results}
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(payload, indent=2, default=str))
