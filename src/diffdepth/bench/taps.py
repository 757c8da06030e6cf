"""``diffdepth bench taps``: attention-map taps, SDPA regional maps vs the naive reference.

For each resolution, three subprocesses run one tapped pass of the SD 2.1 UNet
(random weights) that records what PrimeDepth needs — the self-attention maps (8x8
regions) and cross-attention maps of every transformer — once with no maps (the plain
UNet pass), once with our SDPA regional maps and once with the naive reference that
materialises the NxN attention. "maps peak" = peak memory of the tapped pass minus the
peak of the plain pass, i.e. what recording the maps costs. A fourth subprocess checks
that both give the same maps.
"""
from __future__ import annotations

import argparse
import json
import sys

HELP = "attention-map taps on the SD 2.1 UNet: SDPA regional maps vs the naive NxN reference"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .common import add_common_arguments

    add_common_arguments(p, "taps", sizes="256,512", tiny_sizes="64",
                         defaults=dict(repeats=2, device="cpu", dtype="fp32", threads=0),
                         helps={"repeats": "timed repeats (median), after one warm-up",
                                "tiny": "the tiny random SD (make_tiny_sd) instead of the full-size UNet: seconds"})
    p.add_argument("--arch", default="sd21", choices=["sd21", "sd15"])


def _attention_names(sd):
    names = [l["attention"] for l in sd.encoder_layers() + sd.mid_layers() + sd.decoder_layers() if l["attention"]]
    return names


def worker(h: int, w: int, variant: str, repeats: int, device: str, dtype: str, arch: str, tiny: bool = False,
           threads: int = 0) -> dict:
    import torch

    from ..backbone.configs import random_sd
    from ..utils import parse_device, parse_dtype
    from .common import peak_memory, timed

    if threads:
        torch.set_num_threads(threads)
    dev, dt = parse_device(device), parse_dtype(dtype)
    if tiny:
        from ..backbone import make_tiny_sd

        sd = make_tiny_sd(seed=0, arch=arch).to(dev, dt)
    else:
        sd = random_sd(arch, with_vae=False, device=dev, dtype=dt)
    z = torch.randn(1, 4, h // 8, w // 8, generator=torch.Generator().manual_seed(0)).to(dev, dt)
    names = _attention_names(sd)
    kwargs = {} if variant == "plain" else dict(self_attn=names, cross_attn=names, reference=variant == "naive")

    def run():
        with torch.inference_mode():
            return sd.taps(z, t=1, **kwargs)

    if variant == "check":  # equality of the two implementations
        with torch.inference_mode():
            fast = sd.taps(z, t=1, self_attn=names, cross_attn=names)
            slow = sd.taps(z, t=1, self_attn=names, cross_attn=names, reference=True)
        diff = max((fast.self_attn[n].float() - slow.self_attn[n].float()).abs().max().item() for n in names)
        return {"max_abs_diff": diff, "maps": len(names)}
    run()  # warm-up (allocator, kernels)
    with peak_memory(dev) as mem:
        run()
    seconds = timed(run, dev, repeats=repeats)
    return {"seconds": seconds, "peak_gb": mem["peak_gb"]}


def run(args: argparse.Namespace) -> int:

    from ..utils import parse_device
    from .common import finalize, format_size, machine_description, run_worker, write_outputs

    finalize(args)
    rows = []
    for size in args.sizes:
        res = {}
        for variant in ("plain", "sdpa", "naive", "check"):
            print(f"  {format_size(size)}: {variant} ...", file=sys.stderr, flush=True)
            res[variant] = run_worker("diffdepth.bench.taps", ["--worker", str(size[0]), str(size[1]), variant,
                                                                str(args.repeats), args.device, args.dtype, args.arch,
                                                                "1" if args.tiny else "0", str(args.threads)])
        rows.append((size, res))
    dev = parse_device(args.device)
    lines = []
    say = lines.append  # the report: printed, and written by --record
    say(f"taps benchmark — {args.arch} UNet{' (TINY random model)' if args.tiny else ''}, random weights, {args.dtype}, batch 1, all {rows[0][1]['check']['maps']} "
          f"transformers: self-attn 8x8 regional maps + cross-attn maps; {machine_description(dev)}")
    say("| size | plain UNet s | SDPA taps s | naive taps s | speed-up | maps peak SDPA GB | maps peak naive GB | memory ratio | max |diff| |")
    say("|---|---|---|---|---|---|---|---|---|")
    for size, r in rows:
        base = r["plain"]["peak_gb"]
        fast_mem = max(r["sdpa"]["peak_gb"] - base, 1e-3)
        slow_mem = max(r["naive"]["peak_gb"] - base, 1e-3)
        say(f"| {format_size(size)} | {r['plain']['seconds']:.2f} | {r['sdpa']['seconds']:.2f} | {r['naive']['seconds']:.2f} | "
              f"{r['naive']['seconds'] / r['sdpa']['seconds']:.2f}× | {fast_mem:.3f} | {slow_mem:.3f} | "
              f"{slow_mem / fast_mem:.1f}× | {r['check']['max_abs_diff']:.1e} |")
    text = "\n".join(lines)
    print(text)
    write_outputs(args, text, [{"size": list(size), **r} for size, r in rows])
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        h, w, variant, repeats, device, dtype, arch, tiny, threads = sys.argv[2:11]
        print(json.dumps(worker(int(h), int(w), variant, int(repeats), device, dtype, arch, tiny == "1", int(threads))))
    else:
        raise SystemExit("use `diffdepth bench taps`")
