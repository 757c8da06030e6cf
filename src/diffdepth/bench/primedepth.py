"""``diffdepth bench primedepth``: full-size PrimeDepth (SD 2.1 + official options), random weights,
against the official procedure measured in the same run.

Measured like the official numbers in issue 5: one forward pass from the SD latent — the
UNet pass with the preimage, the refiner and the depth head (no VAE encode, no captioner, no
segmentation head) — batch 1, fp32 by default. Per size, two subprocesses build the same
model (SD 2.1 UNet from its config on the meta device, Gaussian weights; PrimeDepth modules
likewise), run one warm-up pass at 64², then one pass of

* ``ours``: our inference path (regional maps by SDPA, fused inside the UNet hooks, UNet
  stopped after its last tapped layer, the head in row strips with sub-pixel upsampling);
* ``official``: the official procedure on the same weights, re-implemented from its
  algorithm (:mod:`diffdepth.bench.official`: materialised attention matrices, its pooling of
  the self-attention maps, the UNet run to its end, the head as one plain forward);

and report for each

* time: wall time of ``--repeats`` passes (median) and process CPU seconds (all threads; on a
  shared machine the more robust figure), split into refine (UNet + preimage + refiner) and head,
* forward peak: the kernel's peak resident set (``VmHWM``, reset through
  ``/proc/self/clear_refs``) during one pass minus the resident set before it, i.e. the
  memory the forward needs above the weights (torch's CPU allocations are invisible to
  tracemalloc, the kernel sees them all).

Speed-ups are official / ours of the same run, never a figure from another day.
A Marigold-style run (50 DDIM steps x 10 ensemble members) is extrapolated from one measured
SD 2.1 UNet step at the same latent size (in the ``ours`` worker; the 8-channel conv_in of
Marigold changes <0.1 % of the cost; VAE encode/decodes not counted, which favours Marigold).
"""
from __future__ import annotations

import argparse
import json
import sys

HELP = "PrimeDepth full-size forward (SD 2.1, random weights): time and forward peak vs the official code and Marigold"

def add_arguments(p: argparse.ArgumentParser) -> None:
    from .common import add_common_arguments

    add_common_arguments(
        p, "primedepth", sizes="256,512", tiny_sizes="32", square=True,
        defaults=dict(repeats=1, device="cpu", dtype="fp32", threads=0),
        helps={"sizes": "comma list of square image sizes (768 works)",
               "repeats": "timed passes per size (median)",
               "threads": "torch threads in the workers (0: torch's default; 1 gives the cleanest CPU seconds on a "
                          "busy machine: no thread synchronisation)",
               "tiny": "tiny random model (smoke test of the benchmark itself)"})
    p.add_argument("--steps", type=int, default=50, help="Marigold-style denoising steps to extrapolate")
    p.add_argument("--members", type=int, default=10, help="Marigold-style ensemble members to extrapolate")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    p.add_argument("--no-official", dest="official", action="store_false",
                   help="skip the official-procedure baseline (then no speed-up is printed)")
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


def build_tiny(device, dtype, channels_last: bool = False):
    from ..methods.primedepth import PrimeDepth

    model = PrimeDepth.make_tiny(seed=0, use_segmentation_head=False, channels_last=channels_last)
    return model.to(device=device, dtype=dtype).eval()


def worker(size: int, repeats: int, device: str, dtype: str, channels_last: bool, variant: str = "ours",
           tiny: bool = False, threads: int = 0) -> dict:
    """One subprocess: build the model, warm up at 64², then time ``variant`` (ours | official)."""
    import time

    import torch

    from ..utils import parse_device, parse_dtype
    from .common import peak_memory, timed
    from .official import OfficialProcedure

    torch.set_flush_denormal(True)
    if threads:
        torch.set_num_threads(threads)
    dev, dt = parse_device(device), parse_dtype(dtype)
    model = (build_tiny if tiny else build)(dev, dt, channels_last)
    sd = model.sd
    ctx = sd.encode_prompt(None, batch_size=1).to(dev, dt)
    n_params = sum(p.numel() for p in model.parameters())
    n_ours = sum(p.numel() for p in model.trainable_parameters())
    official = OfficialProcedure(model) if variant == "official" else None

    def latent(s):
        return torch.randn(1, 4, s // 8, s // 8, generator=torch.Generator().manual_seed(0)).to(dev, dt)

    stages = {"refine": [0.0, 0.0], "head": [0.0, 0.0]}  # wall, CPU seconds of the last pass

    def forward(z):
        with torch.inference_mode():
            t0, c0 = time.perf_counter(), time.process_time()
            gen = torch.Generator().manual_seed(0)
            h = official.refine_latent(z, ctx, gen) if official else model.refine(None, ctx, gen, latent=z)
            t1, c1 = time.perf_counter(), time.process_time()
            out = official.depth_from_features(h) if official else model.depth_from_features(h)
            del h
            stages["refine"] = [t1 - t0, c1 - c0]
            stages["head"] = [time.perf_counter() - t1, time.process_time() - c1]
            return out

    forward(latent(64))  # warm-up: kernels, allocator
    z = latent(size)
    with peak_memory(dev) as mem:
        out = forward(z)
    assert out.shape[-1] == size and torch.isfinite(out).all()
    del out
    cpu0 = time.process_time()
    seconds = timed(lambda: forward(z), dev, repeats=repeats)
    cpu_s = (time.process_time() - cpu0) / max(1, repeats)  # all threads: robust to other load on the machine
    result = {"seconds": seconds, "cpu_s": cpu_s, "peak_gb": mem["peak_gb"], "threads": torch.get_num_threads(),
              "refine_s": stages["refine"][0], "refine_cpu_s": stages["refine"][1],
              "head_s": stages["head"][0], "head_cpu_s": stages["head"][1],
              "params_total_m": n_params / 1e6, "params_primedepth_m": n_ours / 1e6}
    if variant == "ours":
        t = torch.ones(1, dtype=torch.long, device=dev)

        def unet_step():
            with torch.inference_mode():
                sd.unet(z, t, encoder_hidden_states=ctx, return_dict=False)

        cpu0 = time.process_time()
        result["unet_step_s"] = timed(unet_step, dev, repeats=1)
        result["unet_step_cpu_s"] = time.process_time() - cpu0
    return result


def run(args: argparse.Namespace) -> int:
    import os

    from ..utils import parse_device
    from .common import finalize, machine_description, run_worker, write_outputs

    finalize(args)
    sizes = [h for h, _ in args.sizes]
    if args.fixed_mmap_threshold:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
        os.environ["MALLOC_TRIM_THRESHOLD_"] = "131072"
    variants = ["ours", "official"] if args.official else ["ours"]
    rows = []
    for size in sizes:
        res = {}
        for variant in variants:  # back to back: same machine state for both
            print(f"  {size}²: {variant}: building SD 2.1 + PrimeDepth (random) and running ...", file=sys.stderr,
                  flush=True)
            res[variant] = run_worker("diffdepth.bench.primedepth",
                                      ["--worker", str(size), str(args.repeats), args.device, args.dtype,
                                       "1" if args.channels_last else "0", variant, "1" if args.tiny else "0",
                                       str(args.threads)])
        rows.append((size, res))
    dev = parse_device(args.device)
    r0 = rows[0][1]["ours"]
    lines = []
    say = lines.append  # the report: printed, and written by --record
    what = "TINY random model (smoke test)" if args.tiny else "SD 2.1 UNet + preimage + refiner + depth head"
    say(f"PrimeDepth benchmark — {what} from the latent (no VAE encode, no captioner, no segmentation head), "
          f"random weights, {args.dtype}, batch 1, {r0['params_total_m']:.0f} M parameters "
          f"({r0['params_primedepth_m']:.0f} M PrimeDepth); {machine_description(dev)}, worker threads {r0['threads']}; "
          f"official = the official procedure (materialised attention, its pooling, full UNet, plain head) "
          f"on the same weights, measured in this run")
    say(f"| size | ours s | official s | speed-up | ours CPU s | official CPU s | CPU speed-up | "
          f"ours refine / head CPU s | official refine / head CPU s | ours forward peak GB | official GB | "
          f"memory ratio | UNet step s | Marigold {args.steps}x{args.members} est. s | Marigold / ours |")
    say("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for size, res in rows:
        r, o = res["ours"], res.get("official")
        mg = r["unet_step_s"] * args.steps * args.members

        def fmt(x, spec=".2f"):
            return "–" if x is None else format(x, spec)

        sp = f"{o['seconds'] / r['seconds']:.2f}×" if o else "–"
        csp = f"{o['cpu_s'] / r['cpu_s']:.2f}×" if o else "–"
        mr = f"{o['peak_gb'] / max(r['peak_gb'], 1e-3):.2f}×" if o else "–"
        ost = f"{o['refine_cpu_s']:.1f} / {o['head_cpu_s']:.1f}" if o else "–"
        say(f"| {size}² | {r['seconds']:.2f} | {fmt(o and o['seconds'])} | {sp} | {r['cpu_s']:.1f} | "
              f"{fmt(o and o['cpu_s'], '.1f')} | {csp} | {r['refine_cpu_s']:.1f} / {r['head_cpu_s']:.1f} | {ost} | "
              f"{r['peak_gb']:.2f} | {fmt(o and o['peak_gb'])} | {mr} | {r['unet_step_s']:.2f} | {mg:.0f} | "
              f"{mg / r['seconds']:.0f}× |")
        results.append({"size": size, "ours": r, "official": o, "marigold_est_s": mg})
    text = "\n".join(lines)
    print(text)
    write_outputs(args, text, results,
                  json_payload={"machine": machine_description(dev), "dtype": args.dtype, "results": results})
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        size, repeats, device, dtype, cl, variant, tiny, threads = sys.argv[2:10]
        print(json.dumps(worker(int(size), int(repeats), device, dtype, cl == "1", variant, tiny == "1", int(threads))))
    else:
        raise SystemExit("use `diffdepth bench primedepth`")
