"""``diffdepth bench marigold``: one trailing DDIM step vs the paper's 50 steps × 10 members.

The model is Marigold at SD 2.1 size (UNet 320/640/1280/1280 with an 8-channel conv_in, VAE
128/256/512/512) with random weights, run through our own code paths
(``StableDiffusion.encode_image``, ``MarigoldDepth.denoise`` / ``decode_depth`` and ``ensemble_affine``).
The empty-prompt context is a fixed random [1,2,1024] tensor (the text encoder runs once per
model, not per image, so it is not part of the per-image cost).

What is measured, per resolution (wall time, and process CPU time beside it — on a shared
machine wall time also counts waiting for a core): VAE encode, ``--measure-steps`` UNet+DDIM steps (mean),
VAE decode, and the BFGS ensembling of ``--members`` maps. What is extrapolated:

    t(1 trailing step)   = encode + 1 · step + decode
    t(S steps × M)       = encode + S·M · step + M · decode + ensembling

(members run one after the other, batch 1, as in Marigold). Peak memory: on CUDA
``torch.cuda.max_memory_allocated`` per phase; on CPU the process resident set size sampled
every 5 ms by a background thread (``/proc/self/statm``), reported as the peak during the phase
and the increase over the resident size just before it (weights already loaded).
"""
from __future__ import annotations

import argparse
import os
import threading
import time
from contextlib import contextmanager

from ..backbone.configs import SD21_UNET as _SD21_UNET, SD_VAE

HELP = "Marigold at SD 2.1 size: one trailing step vs 50 steps x 10 members (time, peak memory)"

#: Stable Diffusion 2.1 architecture with conv_in already widened to 8 channels as Marigold does
SD21_UNET = dict(_SD21_UNET, in_channels=8)
SD21_VAE = SD_VAE
SD21_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1, clip_sample=False,
                      timestep_spacing="trailing")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .common import add_common_arguments

    add_common_arguments(
        p, "marigold", sizes="256,512", tiny_sizes="32", square=True, resolutions_alias=True,
        defaults=dict(device="cpu", dtype="fp32", threads=0),
        helps={"sizes": "comma list of square image sides", "tiny": "the tiny random Marigold (make_tiny): seconds"},
        unsupported={"repeats": "it times --measure-steps UNet steps (mean) and extrapolates; use --measure-steps"})
    p.add_argument("--steps", type=int, default=50, help="steps of the multi-step setting (default 50)")
    p.add_argument("--members", type=int, default=10, help="ensemble members of the multi-step setting (default 10)")
    p.add_argument("--measure-steps", type=int, default=2, help="UNet steps actually timed per resolution (mean)")
    p.add_argument("--no-ensemble", action="store_true", help="skip timing the BFGS ensembling")
    p.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the untimed 64² warm-up pass")


def _init_random(module, seed: int = 0):
    """Random weights without diffusers' slow per-layer init: N(0, 0.02), norms = 1 / 0."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1 and ("norm" in name or name.endswith("bias")):
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return module


def build_model(device, dtype, tiny: bool = False):
    """MarigoldDepth at SD 2.1 size with random weights (no text encoder: fixed random context);
    ``tiny``: the tiny random model of ``make_tiny`` (its own tiny text encoder)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from ..backbone import StableDiffusion
    from ..methods.marigold import MarigoldDepth

    if tiny:
        return MarigoldDepth.make_tiny(seed=0).eval().to(device=device, dtype=dtype)

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD21_UNET)
        vae = AutoencoderKL(**SD21_VAE)
    unet = _init_random(unet.to_empty(device="cpu"), 0)
    vae = _init_random(vae.to_empty(device="cpu"), 1)
    sd = StableDiffusion(vae=vae, unet=unet, scheduler=dict(SD21_SCHEDULER))
    model = MarigoldDepth(sd, default_denoising_steps=1, default_processing_resolution=768).eval()
    model = model.to(device=device, dtype=dtype)
    sd._empty_prompt = (torch.randn(1, 2, 1024, generator=torch.Generator().manual_seed(2)) * 0.5).to(device, dtype)
    return model


class MemoryMeter:
    """Peak memory of a phase (see module docstring for how)."""

    def __init__(self, device):
        self.device = device
        self.page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self.page
        except OSError:  # not Linux: fall back to the (process-lifetime) high-water mark
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    @contextmanager
    def phase(self, out: dict, key: str):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            yield
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            before = self._rss()
            state = {"peak": before, "run": True}

            def sample():
                while state["run"]:
                    state["peak"] = max(state["peak"], self._rss())
                    time.sleep(0.005)

            th = threading.Thread(target=sample, daemon=True)
            th.start()
            try:
                yield
            finally:
                state["run"] = False
                th.join()
            peak = max(state["peak"], self._rss())
        out[key] = (peak, peak - before)


#: process CPU seconds of every timed call, in order (wall time is what the table shows; CPU time
#: is printed beside it because on a shared machine wall time also counts waiting for a core)
CPU_TIMES: list = []


def _timed(device, fn):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    CPU_TIMES.append(time.process_time() - c0)
    return result, time.perf_counter() - t0


def measure(model, side: int, args, meter: MemoryMeter) -> dict:
    import torch

    from ..methods.marigold.ensemble import ensemble_affine

    device = model.device
    g = torch.Generator().manual_seed(side)
    x = torch.rand(1, 3, side, side, generator=g).to(device)
    mem: dict = {}
    res: dict = {"side": side}
    with torch.inference_mode():
        with meter.phase(mem, "encode"):
            z_img, res["encode"] = _timed(device, lambda: model.sd.encode_image(x))
        cpu = {"encode": CPU_TIMES[-1]}
        z = torch.randn(z_img.shape, generator=g).to(device, model.dtype)
        step_times, one_step = [], model.ddim(1, "trailing")  # t = 999
        with meter.phase(mem, "step"):
            for k in range(max(1, args.measure_steps)):
                z, dt = _timed(device, lambda: model.denoise(z_img, z, one_step))
                step_times.append(dt)
        cpu["step"] = sum(CPU_TIMES[-len(step_times):]) / len(step_times)
        res["step"] = sum(step_times) / len(step_times)
        res["step_first"] = step_times[0]
        with meter.phase(mem, "decode"):
            depth, res["decode"] = _timed(device, lambda: model.decode_depth(z))
        cpu["decode"] = CPU_TIMES[-1]
    res["ensemble"] = cpu["ensemble"] = 0.0
    if not args.no_ensemble and args.members > 1:
        # members: the decoded map under random scales/shifts plus noise (what BFGS sees in practice)
        base = depth.float().cpu()
        s = 0.5 + torch.rand(args.members, 1, 1, 1, generator=g)
        t = torch.rand(args.members, 1, 1, 1, generator=g) - 0.5
        members = s * base + t + 0.01 * torch.randn(args.members, 1, side, side, generator=g)
        with meter.phase(mem, "ensemble"):
            _, res["ensemble"] = _timed(torch.device("cpu"), lambda: ensemble_affine(members))
        cpu["ensemble"] = CPU_TIMES[-1]

    def totals(t: dict):
        one = t["encode"] + t["step"] + t["decode"]
        multi = t["encode"] + args.steps * args.members * t["step"] + args.members * t["decode"] + t["ensemble"]
        return one, multi

    res["one_step"], res["multi"] = totals(res)
    res["ratio"] = res["multi"] / res["one_step"]
    res["cpu"] = cpu
    res["cpu_one_step"], res["cpu_multi"] = totals(cpu)
    res["mem"] = mem
    return res


def run(args: argparse.Namespace) -> int:
    import platform

    import torch

    from ..utils import parse_device, parse_dtype
    from .common import finalize, write_outputs

    finalize(args)
    lines = []

    def say(line: str = "") -> None:  # the report: printed, and written by --record
        print(line)
        lines.extend(line.split("\n"))

    if args.threads:
        torch.set_num_threads(args.threads)
    device = parse_device(args.device)
    dtype = parse_dtype(args.dtype)
    meter = MemoryMeter(device)
    t0 = time.perf_counter()
    model = build_model(device, dtype, args.tiny)
    n_unet = sum(p.numel() for p in model.sd.unet.parameters()) / 1e6
    n_vae = sum(p.numel() for p in model.sd.vae.parameters()) / 1e6
    say(f"device {device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
          f"torch {torch.__version__}, {args.dtype}; UNet {n_unet:.0f} M + VAE {n_vae:.0f} M parameters, "
          f"random weights{' (TINY model)' if args.tiny else ''}, built in {time.perf_counter() - t0:.1f} s")
    if args.warmup:  # first calls pay one-off kernel selection and allocator growth
        t1 = time.perf_counter()
        with torch.inference_mode():
            x = torch.rand(1, 3, 64, 64).to(device)
            z = model.sd.encode_image(x)
            model.decode_depth(model.denoise(z, torch.randn_like(z), model.ddim(1, "trailing")))
        say(f"warm-up at 64² (untimed in the table): {time.perf_counter() - t1:.1f} s")
    rows = [measure(model, side, args, meter) for side, _ in args.sizes]
    S, M = args.steps, args.members
    say(f"\nmeasured (s): encode, one UNet+DDIM step (mean of {args.measure_steps}; first), decode, "
          f"ensembling of {M}")
    for r in rows:
        say(f"  {r['side']:>4}²  encode {r['encode']:7.2f}  step {r['step']:7.2f} ({r['step_first']:.2f})  "
              f"decode {r['decode']:7.2f}  ensemble {r['ensemble']:6.2f}")
    say("process CPU seconds of the same calls (all threads):")
    for r in rows:
        c = r["cpu"]
        say(f"  {r['side']:>4}²  encode {c['encode']:7.2f}  step {c['step']:7.2f}  decode {c['decode']:7.2f}  "
              f"ensemble {c['ensemble']:6.2f}")
    say(f"\n{'side':>6} | {'1 trailing step (s)':>20} | {f'{S} steps x {M} (s, extrap.)':>27} | {'ratio':>7} | "
          f"{'CPU s: 1 step':>13} | {f'{S}x{M}':>9} | {'ratio':>6}")
    say("-" * 106)
    for r in rows:
        say(f"{r['side']:>5}² | {r['one_step']:20.2f} | {r['multi']:27.1f} | {r['ratio']:6.0f}x | "
              f"{r['cpu_one_step']:13.2f} | {r['cpu_multi']:9.1f} | {r['cpu_multi'] / r['cpu_one_step']:5.0f}x")
    unit = "allocated" if device.type == "cuda" else "process RSS"
    say(f"\npeak memory ({unit}; peak / increase over the start of the phase, MiB):")
    for r in rows:
        parts = "  ".join(f"{k} {p / 2**20:.0f}/+{d / 2**20:.0f}" for k, (p, d) in r["mem"].items())
        say(f"  {r['side']:>4}²  {parts}")
    write_outputs(args, "\n".join(lines), rows)
    return 0
