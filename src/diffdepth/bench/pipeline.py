"""``diffdepth bench pipeline``: folder throughput, overlapped pipeline vs the sequential loop.

One process, one tiny random model, one folder of generated JPEGs. The same
``DepthPipeline.process`` call runs twice with the same write function as ``diffdepth
predict`` (``save_outputs``): once with ``workers=0`` (read, predict, write one image after
another) and once with ``workers=N`` (reader threads decode and resize ahead of the model,
writer threads encode and save behind it). Both write to their own folder; the files must be
byte-identical. The folder is cut into ``--rounds`` chunks and each chunk runs through both
loops back to back (alternating which goes first), so a shared machine's changing load hits
both alike. Prints images/s, wall and process CPU seconds of each, and their ratio.
"""
from __future__ import annotations

import argparse
import filecmp
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

HELP = "folder throughput: overlapped read/predict/write pipeline vs the sequential loop (tiny model)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .common import add_common_arguments

    add_common_arguments(
        p, "pipeline", sizes="768x1024", tiny_sizes="64x96", defaults=dict(repeats=4),
        dests={"tiny": "dry_run", "repeats": "rounds"},
        helps={"sizes": "JPEG size HxW (one size)",
               "threads": "torch threads of the model's thread in both loops (default: torch's, one per core)",
               "repeats": "the folder is cut into this many chunks, each run by both loops in alternating order, so "
                          "both see the same machine load",
               "tiny": "4 images in 2 rounds: checks the benchmark runs (seconds); the model is always tiny"},
        fixed={"device": ("cpu", "it measures CPU folder throughput"), "dtype": ("fp32", "the tiny model")})
    p.add_argument("--dry-run", dest="dry_run", action="store_true", default=False, help="same as --tiny")
    p.add_argument("--rounds", dest="rounds", type=int, default=4, help="same as --repeats")
    p.add_argument("--images", type=int, default=200, help="number of generated JPEGs (default 200)")
    p.add_argument("--size", default=None, help="JPEG size WxH (same as --sizes HxW; default 1024x768)")
    p.add_argument("--method", default="marigold", help="tiny random model of this method (default marigold)")
    p.add_argument("--processing-res", type=int, default=None, help="long side the model sees (default: the tiny model's)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--workers", type=int, default=2, help="reader/writer threads of the overlapped run (default 2)")
    p.add_argument("--save", default="npy,png16,color", help="outputs per image, as predict's --save")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="method option, e.g. steps=1")
    p.add_argument("--folder", default=None, help="keep the JPEGs and outputs here (default: a temporary folder)")


def make_jpegs(folder: Path, n: int, width: int, height: int) -> List[Path]:
    """``n`` deterministic textured JPEGs (gradients + noise; quality 90) in ``folder``."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    paths = []
    for i in range(n):
        path = folder / f"img_{i:04d}.jpg"
        if not path.exists():
            base = np.stack([(x * 0.25 + 7 * i) % 256, (y * 0.33 + 3 * i) % 256, ((x + y) * 0.1) % 256], -1)
            noise = rng.integers(0, 32, size=(height // 4, width // 4, 3)).repeat(4, 0).repeat(4, 1)
            img = np.clip(base + noise[:height, :width], 0, 255).astype(np.uint8)
            Image.fromarray(img).save(path, quality=90)
        paths.append(path)
    return paths


def _run(pipe, files: List[Path], out: Path, formats, workers: int) -> Dict[str, float]:
    from ..io.export import save_outputs

    def write(item, pred):
        save_outputs(out / Path(item.name).stem, pred, item.rgb, formats, overwrite=True)

    pipe.workers = workers
    wall, cpu = time.perf_counter(), time.process_time()
    n = 0
    for _, err in pipe.process(files, write):
        if err is not None:
            raise err
        n += 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"images": n, "wall": wall, "cpu": cpu}


def _same_files(a: Path, b: Path) -> bool:
    names_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    names_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return bool(names_a) and names_a == names_b and all(filecmp.cmp(a / n, b / n, shallow=False) for n in names_a)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..commands.predict import _parse_opts
    from ..errors import InputError
    from ..io.export import parse_formats
    from ..pipeline import DepthPipeline
    from ..registry import get_method
    from .common import finalize, machine_description, write_outputs

    finalize(args)
    if args.size is not None:  # the older spelling: WxH
        try:
            width, height = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            raise InputError(f"--size expects WxH, e.g. 1024x768; got {args.size!r}") from None
    else:
        if len(args.sizes) != 1:
            raise InputError(f"--sizes: this benchmark measures one JPEG size, got {len(args.sizes)}")
        height, width = args.sizes[0]
    n = 4 if args.dry_run else args.images
    if n < 1 or args.workers < 1:
        raise InputError("--images and --workers must be at least 1")
    formats = parse_formats(args.save)
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    model = get_method(args.method).load_class().make_tiny(seed=0).eval()
    options = _parse_opts(args.opt)
    if "seed" in model.predict_options:
        options.setdefault("seed", 0)  # both runs draw the same noise
    pipe = DepthPipeline(model, processing_res=args.processing_res, batch_size=args.batch_size, **options)

    with tempfile.TemporaryDirectory(prefix="diffdepth-bench-pipeline-") as tmp:
        root = Path(args.folder).expanduser() if args.folder else Path(tmp)
        print(f"generating {n} JPEGs at {width}x{height} in {root / 'jpg'} ...", file=sys.stderr, flush=True)
        files = make_jpegs(root / "jpg", n, width, height)
        _run(pipe, files[:2], root / "warmup", formats, 0)  # first-call costs (allocator, lazy imports)
        load0 = os.getloadavg()
        rounds = max(1, min(2 if args.dry_run else args.rounds, n))
        total = {w: {"images": 0, "wall": 0.0, "cpu": 0.0} for w in (0, args.workers)}
        for r in range(rounds):
            chunk = files[r * n // rounds:(r + 1) * n // rounds]
            for workers in ((0, args.workers) if r % 2 == 0 else (args.workers, 0)):
                name = "out_sequential" if workers == 0 else "out_overlapped"
                print(f"round {r + 1}/{rounds}: {len(chunk)} images, workers {workers} ...", file=sys.stderr, flush=True)
                res = _run(pipe, chunk, root / name, formats, workers)
                for key in ("images", "wall", "cpu"):
                    total[workers][key] += res[key]
        for res in total.values():
            res["ips"] = res["images"] / res["wall"]
        seq, ovl = total[0], total[args.workers]
        load1 = os.getloadavg()
        same = _same_files(root / "out_sequential", root / "out_overlapped")

    text = "\n".join([
        f"pipeline benchmark — tiny random {args.method}, {n} JPEGs {width}x{height}, processing res "
        f"{pipe.processing_res}, {rounds} alternating rounds, batch {args.batch_size}, outputs "
        f"{','.join(sorted(formats))}; {machine_description(torch.device('cpu'))}; load average "
        f"{load0[0]:.1f} → {load1[0]:.1f}",
        "| loop | images/s | wall s | process CPU s |",
        "|---|---|---|---|",
        f"| sequential (workers 0) | {seq['ips']:.2f} | {seq['wall']:.1f} | {seq['cpu']:.1f} |",
        f"| overlapped (workers {args.workers}) | {ovl['ips']:.2f} | {ovl['wall']:.1f} | {ovl['cpu']:.1f} |",
        f"speed-up: {ovl['ips'] / seq['ips']:.2f}× images/s; outputs identical: {'yes' if same else 'NO'}"])
    print(text)
    args.sizes = [(height, width)]
    write_outputs(args, text, {"sequential": seq, "overlapped": ovl, "speedup": ovl["ips"] / seq["ips"],
                               "identical": same, "images": n, "workers": args.workers})
    return 0 if same else 1
