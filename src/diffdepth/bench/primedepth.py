"""``diffdepth bench primedepth``: full-size PrimeDepth (SD 2.1 + official options), random weights.

Measured like the official numbers in issue 5: one forward pass from the SD latent — the
tapped UNet pass with preimage fusion, the refiner and the depth head (no VAE encode, no
captioner, no segmentation head) — batch 1, fp32 by default. Each size runs in its own
subprocess: build the model (SD 2.1 UNet from its config on the meta device, Gaussian
weights; PrimeDepth modules likewise), one warm-up pass at 64², then

* time: wall time of ``--repeats`` passes (median),
* forward peak: the kernel's peak resident set (``VmHWM``, reset through
  ``/proc/self/clear_refs``) during one pass minus the resident set before it, i.e. the
  memory the forward needs above the weights (torch's CPU allocations are invisible to
  tracemalloc, the kernel sees them all).

A Marigold-style run (50 DDIM steps x 10 ensemble members) is extrapolated from one measured
SD 2.1 UNet step at the same latent size (the 8-channel conv_in of Marigold changes <0.1 % of
the cost; VAE encode/decodes not counted, which favours Marigold).
"""
from __future__ import annotations

import argparse
import json
import sys

HELP = "PrimeDepth full-size forward (SD 2.1, random weights): time and forward peak vs the official code and Marigold"

#: official PrimeDepth code on this project's 2-core machines, fp32, random weights (issue 5)
OFFICIAL = {256: (11.0, 0.54), 512: (50.4, 1.46), 768: (150.0, 4.37)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", default="256,512", help="comma list of square image sizes (default 256,512; 768 works)")
    p.add_argument("--repeats", type=int, default=1, help="timed passes per size (median)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--steps", type=int, default=50, help="Marigold-style denoising steps to extrapolate")
    p.add_argument("--members", type=int, default=10, help="Marigold-style ensemble members to extrapolate")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    p.add_argument("--json", default=None, help="also write the results as JSON to this file")
    p.add_argument("--fixed-mmap-threshold", action="store_true",
                   help="run the workers with MALLOC_MMAP_THRESHOLD_=131072 (glibc returns freed maps to the OS at "
                        "once: the resident peak is the live peak; slower page faults)")


def _init_(module, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, p[0].numel() ** -0.5, generator=g)
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
    return module


def build(device, dtype, channels_last: bool = False):
    """SD 2.1 (random) + PrimeDepth with the official options, minus the segmentation head."""
    import torch

    from ..backbone.configs import random_sd
    from ..methods.primedepth import PrimeDepth
    from ..methods.primedepth.layout import OFFICIAL_OPTIONS

    sd = random_sd("sd21", with_vae=False)
    with torch.device("meta"):
        model = PrimeDepth(sd, **{**OFFICIAL_OPTIONS, "use_segmentation_head": False, "channels_last": channels_last})
    for i, name in enumerate(("fusions", "refiner", "depth_head")):
        part = getattr(model, name).to_empty(device="cpu")
        setattr(model, name, _init_(part, 10 + i))
    model = model.to(device=device, dtype=dtype).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def worker(size: int, repeats: int, device: str, dtype: str, channels_last: bool) -> dict:
    import torch

    from ..utils import parse_device, parse_dtype
    from .common import peak_memory, timed

    torch.set_flush_denormal(True)
    dev, dt = parse_device(device), parse_dtype(dtype)
    model = build(dev, dt, channels_last)
    sd = model.sd
    ctx = sd.empty_prompt().to(dev, dt)
    n_params = sum(p.numel() for p in model.parameters())
    n_ours = sum(p.numel() for p in model.trainable_parameters())

    def latent(s):
        return torch.randn(1, 4, s // 8, s // 8, generator=torch.Generator().manual_seed(0)).to(dev, dt)

    def forward(z):
        with torch.inference_mode():
            h = model.refine(None, ctx, torch.Generator().manual_seed(0), latent=z)
            return model.depth_from_features(h)

    forward(latent(64))  # warm-up: kernels, allocator
    z = latent(size)
    with peak_memory(dev) as mem:
        out = forward(z)
    assert out.shape[-1] == size and torch.isfinite(out).all()
    del out
    import time

    cpu0 = time.process_time()
    seconds = timed(lambda: forward(z), dev, repeats=repeats)
    cpu_s = (time.process_time() - cpu0) / max(1, repeats)  # all threads: robust to other load on the machine
    t = torch.ones(1, dtype=torch.long, device=dev)

    def unet_step():
        with torch.inference_mode():
            sd.unet(z, t, encoder_hidden_states=ctx, return_dict=False)

    cpu0 = time.process_time()
    unet_seconds = timed(unet_step, dev, repeats=1)
    unet_cpu_s = time.process_time() - cpu0
    return {"seconds": seconds, "cpu_s": cpu_s, "peak_gb": mem["peak_gb"], "unet_step_s": unet_seconds,
            "unet_step_cpu_s": unet_cpu_s, "threads": torch.get_num_threads(),
            "params_total_m": n_params / 1e6, "params_primedepth_m": n_ours / 1e6}


def run(args: argparse.Namespace) -> int:

    from ..utils import parse_device
    from .common import machine_description, run_worker

    import os

    sizes = [int(s) for s in args.sizes.split(",")]
    if args.fixed_mmap_threshold:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
        os.environ["MALLOC_TRIM_THRESHOLD_"] = "131072"
    rows = []
    for size in sizes:
        print(f"  {size}²: building SD 2.1 + PrimeDepth (random) and running ...", file=sys.stderr, flush=True)
        rows.append((size, run_worker("diffdepth.bench.primedepth",
                                      ["--worker", str(size), str(args.repeats), args.device, args.dtype,
                                       "1" if args.channels_last else "0"])))
    dev = parse_device(args.device)
    r0 = rows[0][1]
    print(f"PrimeDepth benchmark — SD 2.1 UNet + preimage + refiner + depth head from the latent (no VAE encode, "
          f"no captioner, no segmentation head), random weights, {args.dtype}, batch 1, "
          f"{r0['params_total_m']:.0f} M parameters ({r0['params_primedepth_m']:.0f} M PrimeDepth); "
          f"{machine_description(dev)}")
    print(f"| size | ours s | official s | speed-up | ours forward peak GB | official GB | memory ratio | "
          f"UNet step s | Marigold {args.steps}x{args.members} est. s | Marigold / ours | ours CPU s | UNet step CPU s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for size, r in rows:
        off_s, off_gb = OFFICIAL.get(size, (None, None))
        mg = r["unet_step_s"] * args.steps * args.members
        sp = f"{off_s / r['seconds']:.2f}×" if off_s else "–"
        mr = f"{off_gb / max(r['peak_gb'], 1e-3):.2f}×" if off_gb else "–"
        print(f"| {size}² | {r['seconds']:.2f} | {off_s if off_s else '–'} | {sp} | {r['peak_gb']:.2f} | "
              f"{off_gb if off_gb else '–'} | {mr} | {r['unet_step_s']:.2f} | {mg:.0f} | {mg / r['seconds']:.0f}× | "
              f"{r.get('cpu_s', float('nan')):.1f} | {r.get('unet_step_cpu_s', float('nan')):.1f} |")
        results.append({"size": size, **r, "official_s": off_s, "official_peak_gb": off_gb, "marigold_est_s": mg})
    if args.json:
        from pathlib import Path

        from ..utils import atomic_path

        with atomic_path(Path(args.json)) as tmp:
            tmp.write_text(json.dumps({"machine": machine_description(dev), "dtype": args.dtype,
                                       "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        size, repeats, device, dtype, cl = sys.argv[2:7]
        print(json.dumps(worker(int(size), int(repeats), device, dtype, cl == "1")))
    else:
        raise SystemExit("use `diffdepth bench primedepth`")
