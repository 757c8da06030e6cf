"""``diffdepth bench native``: memory of a native-resolution prediction, attention chunked vs not.

The tiny PrimeDepth (``make_tiny``: head width 32, 8x8 = 64 regions) predicts one random
image of each size (``--processing-res 0``, i.e. as given) in its own subprocess, once with
the self/cross-attention maps computed on query chunks (:data:`ATTENTION_CHUNK_BYTES`,
the default) and once in one block (the behaviour before chunking). When the value width
(regions R*R) differs from the head width, SDPA uses its math kernel, which materialises
the ``N x N`` scores: memory grows with the square of the pixel count. "forward peak" =
the peak resident set during the pass minus the resident set before it.
"""
from __future__ import annotations

import argparse
import json
import sys

HELP = "native-resolution PrimeDepth (tiny): forward peak memory with chunked vs one-block attention maps"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .common import add_common_arguments

    add_common_arguments(
        p, "native", sizes="272x480,544x960", tiny_sizes="64x96", defaults=dict(threads=2),
        helps={"sizes": "comma list of HxW or N (multiples of 16; 1088x1920 unchunked needs ~20 GB)",
               "threads": "torch threads per subprocess",
               "tiny": "the model is always the tiny PrimeDepth here; --tiny picks a small default size"},
        fixed={"device": ("cpu", "it measures the CPU resident-set peak"), "dtype": ("fp32", "the tiny model")},
        unsupported={"repeats": "one pass per size: the peak memory is what it measures"})
    p.add_argument("--variants", default="chunked,one-block", help="chunked, one-block or both")


def worker(h: int, w: int, variant: str, threads: int) -> dict:
    import time

    import torch

    from ..backbone import taps
    from ..methods.primedepth import PrimeDepth
    from .common import peak_memory

    torch.set_num_threads(threads)
    if variant == "one-block":
        taps.ATTENTION_CHUNK_BYTES = 1 << 62
    model = PrimeDepth.make_tiny(seed=0).eval()
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    cpu, wall = time.process_time(), time.perf_counter()
    with peak_memory(torch.device("cpu")) as mem, torch.inference_mode():
        depth = model.predict(x).depth
    return {"peak_gb": mem["peak_gb"], "seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu,
            "checksum": float(depth.double().sum())}


def run(args: argparse.Namespace) -> int:
    import torch

    from .common import finalize, machine_description, run_worker, write_outputs

    finalize(args)
    bad = [f"{h}x{w}" for h, w in args.sizes if h % 16 or w % 16]
    if bad:
        raise SystemExit(f"diffdepth bench native: error: --sizes {','.join(bad)}: use multiples of 16")
    sizes = args.sizes
    variants = [v.strip() for v in args.variants.split(",")]
    rows = []
    for h, w in sizes:
        res = {}
        for variant in variants:
            print(f"  {h}x{w}: {variant} ...", file=sys.stderr, flush=True)
            res[variant] = run_worker("diffdepth.bench.native", ["--worker", str(h), str(w), variant,
                                                                 str(args.threads)])
        rows.append(((h, w), res))
    lines = []
    say = lines.append  # the report: printed, and written by --record
    say(f"native-resolution benchmark — tiny PrimeDepth, fp32, batch 1, {args.threads} thread(s); "
          f"{machine_description(torch.device('cpu'))}")
    say("| size | variant | forward peak GB | wall s | CPU s | peak vs chunked |")
    say("|---|---|---|---|---|---|")
    for (h, w), r in rows:
        ref = r.get("chunked", {}).get("peak_gb")
        for variant, m in r.items():
            ratio = f"{m['peak_gb'] / max(ref, 1e-3):.1f}×" if ref else "—"
            say(f"| {h}x{w} | {variant} | {m['peak_gb']:.2f} | {m['seconds']:.1f} | {m['cpu_seconds']:.1f} | {ratio} |")
        if len(r) == 2:
            a, b = (m["checksum"] for m in r.values())
            say(f"|  | same depth | |diff of sums| {abs(a - b):.2e} | | | |")
    text = "\n".join(lines)
    print(text)
    write_outputs(args, text, [{"size": [h, w], **r} for (h, w), r in rows])
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        h, w, variant, threads = sys.argv[2:6]
        print(json.dumps(worker(int(h), int(w), variant, int(threads))))
    else:
        raise SystemExit("use `diffdepth bench native`")
