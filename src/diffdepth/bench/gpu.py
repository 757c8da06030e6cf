"""``diffdepth bench gpu``: every method on one GPU in one short run, with the baselines side by side.

One process, full-size architectures with random weights (nothing is downloaded): each model
is built from its published config with its parameters on the meta device (buffers real),
then allocated on the GPU and filled with scaled Gaussian weights there, so construction
takes seconds. Models are built one after the other and freed.

Per method and image size (bf16 by default, images already on the device):

* latency: ``model.predict`` on one image, ``--warmup`` untimed calls, then the median of
  ``--repeats`` timed calls (CUDA events on a GPU, ``perf_counter`` on a CPU);
* images/s at the best batch size: batches of 1, 2, 4, ... (``--batches``) timed the same way;
* peak memory: ``torch.cuda.max_memory_allocated`` over the timed calls (total, and above
  what was allocated before: the weights); on a CPU the kernel's peak resident set
  (``VmHWM``, reset through ``/proc/self/clear_refs``), total and above the start.

Baselines measured in the same run: PrimeDepth by the official procedure
(:mod:`diffdepth.bench.official`: materialised attention matrices, its pooling of the maps,
the UNet run to its end, the head as one plain forward) on the same weights, in float32 as the
official code runs and in the benchmark dtype; Marigold's paper protocol, 50 DDIM steps x 10
members, extrapolated from the measured VAE encode, UNet step, VAE decode and ensembling:
``encode + 500 * step + 10 * decode + ensemble``.

Budget: every measurement stops timing after ``--cap-s`` seconds (with at least one timed
call), and nothing new starts after ``--budget-s`` seconds of the run (marked "skipped");
the markdown is rewritten after every measurement, so a run killed by a timeout still leaves
its table. ``--dry-run`` runs the same code on the CPU with the tiny models at 1/16 of the
sizes, in seconds (tested in the suite).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

HELP = "every method on one GPU in one short run (bf16): latency, images/s, peak memory, baselines side by side"

METHODS = ("primedepth", "marigold", "seecoder-vpd", "diffsql", "metricgold")
#: image sides per method (full size); --dry-run divides them by 16
SIZES = {"primedepth": (512, 1024, 768), "marigold": (768, 512, 1024), "seecoder-vpd": (512, 1024),
         "diffsql": (512, 1024), "metricgold": (512, 1024)}
#: batch sizes tried for images/s, per (full) image side
BATCHES = {512: (2, 4, 8, 16), 1024: (2, 4)}
#: goals of issue 18 (ms, GB, ratios)
GOALS = {"primedepth_512_ms": 30.0, "primedepth_1024_ms": 120.0, "primedepth_1024_gb": 4.0,
         "marigold_768_ms": 40.0, "official_speedup": 10.0, "official_memory": 9.0}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .common import add_common_arguments

    p.add_argument("--dry-run", action="store_true",
                   help="same code on the CPU, one thread, tiny models at 1/16 of the sizes (what the tests run)")
    add_common_arguments(
        p, "gpu", defaults=dict(repeats=10), dests={"tiny": "dry_run", "record": "out"},
        helps={"device": "default: cuda (cpu with --dry-run)",
               "dtype": "default bf16 (fp32 with --dry-run: bf16 kernels are slow on CPUs)",
               "repeats": "timed calls per measurement (median)", "tiny": "same as --dry-run",
               "record": "same as --out: the markdown report"},
        unsupported={"sizes": "each method runs at its own published sizes (1/16 with --dry-run)",
                     "threads": "GPU run; --dry-run uses one thread"})
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list (default {','.join(METHODS)})")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (default 2)")
    p.add_argument("--cap-s", type=float, default=20.0, help="stop timing a measurement after this (default 20 s)")
    p.add_argument("--budget-s", type=float, default=330.0,
                   help="start nothing new after this many seconds of the run (default 330)")
    p.add_argument("--baseline-dtypes", default="fp32,same",
                   help="dtypes of the official-procedure baseline: fp32 (as the official code) and/or same "
                        "(the benchmark dtype), or fp16/bf16; default fp32,same. The model is converted for the "
                        "baseline and back (exact when the baseline dtype is the wider one)")
    p.add_argument("--no-batches", dest="batches", action="store_false", help="skip the images/s batch sweep")
    p.add_argument("--channels-last", action="store_true",
                   help="measure our models with NHWC weights (diffdepth.fast.apply_fast_paths; the "
                        "official-procedure baseline is measured as the official code runs, NCHW)")
    p.add_argument("--out", default=None,
                   help="markdown report (default benchmarks/gpu-<device>.md; --dry-run: none unless given)")


# ------------------------------------------------------------------------------------ construction
def build_random(factory: Callable[[], Any], device, dtype, seed: int = 0):
    """``factory()`` with parameters on the meta device (buffers are computed as usual), then the
    parameters allocated on ``device`` and filled there: N(0, 1/fan_in) for matrices and kernels,
    1 for 1-D weights (norm scales), 0 for biases, N(0, 0.02²) otherwise."""
    import torch
    from accelerate import init_empty_weights
    from torch import nn

    with init_empty_weights(include_buffers=False):
        model = factory()
    made: Dict[int, nn.Parameter] = {}
    for module in model.modules():
        for key, p in list(module._parameters.items()):
            if p is None:
                continue
            if id(p) not in made:
                dt = dtype if p.is_floating_point() else p.dtype
                made[id(p)] = nn.Parameter(torch.empty(p.shape, device=device, dtype=dt), requires_grad=False)
            module._parameters[key] = made[id(p)]
    gen = torch.Generator(device=device).manual_seed(seed)
    for module in model.modules():  # buffers computed from parameters (a stored prompt context): random
        for key, b in list(module._buffers.items()):
            if b is not None and b.is_meta:
                new = torch.zeros(b.shape, device=device, dtype=b.dtype)
                module._buffers[key] = new.normal_(0.0, 0.5, generator=gen) if new.is_floating_point() else new
    model = model.to(device)  # the other buffers, computed as usual on the CPU
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, p[0].numel() ** -0.5, generator=gen)
            elif name.endswith("bias"):
                p.zero_()
            elif name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return model.to(dtype=dtype).eval()


def _random_context(device, dtype):
    """A fixed random [1,77,1024] empty-prompt context (no text encoder is built)."""
    import torch

    ctx = torch.randn(1, 77, 1024, generator=torch.Generator().manual_seed(7)) * 0.5
    return ctx.to(device, dtype)


def make_model(method: str, tiny: bool, device, dtype):
    """The method's model, full size (random) or tiny, built by :func:`build_random`."""
    import torch

    if method == "primedepth":
        from ..methods.primedepth import PrimeDepth
        from ..methods.primedepth.layout import OFFICIAL_OPTIONS

        if tiny:
            return build_random(lambda: PrimeDepth.make_tiny(seed=0, use_segmentation_head=False), device, dtype)

        def factory():
            from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

            from ..backbone import StableDiffusion
            from ..backbone.configs import SD21_UNET, SD_SCHEDULER, SD_VAE

            sd = StableDiffusion(vae=AutoencoderKL(**SD_VAE), unet=UNet2DConditionModel(**SD21_UNET),
                                 scheduler=DDPMScheduler(**SD_SCHEDULER, prediction_type="v_prediction"),
                                 source="random-sd21")
            return PrimeDepth(sd, **{**OFFICIAL_OPTIONS, "use_segmentation_head": False})

        model = build_random(factory, device, dtype)
        model.sd._empty_prompt = _random_context(device, dtype)
        return model
    if method in ("marigold", "metricgold"):
        from ..methods.marigold import MarigoldDepth, MetricGoldDepth

        cls = MarigoldDepth if method == "marigold" else MetricGoldDepth
        if tiny:
            return build_random(lambda: cls.make_tiny(seed=0), device, dtype)

        def factory():
            from diffusers import AutoencoderKL, UNet2DConditionModel

            from ..backbone import StableDiffusion
            from .marigold import SD21_SCHEDULER, SD21_UNET, SD21_VAE

            sd = StableDiffusion(vae=AutoencoderKL(**SD21_VAE), unet=UNet2DConditionModel(**SD21_UNET),
                                 scheduler=dict(SD21_SCHEDULER))
            return cls(sd, default_denoising_steps=1, default_processing_resolution=768)

        model = build_random(factory, device, dtype)
        ctx = torch.randn(1, 2, 1024, generator=torch.Generator().manual_seed(2)) * 0.5
        model.sd._empty_prompt = ctx.to(device, dtype)
        return model
    if method == "seecoder-vpd":
        from .seecoder_vpd import build_model

        return build_random(lambda: build_model(*(("tiny", "tiny") if tiny else ("sd21", "large"))), device, dtype)
    if method == "diffsql":
        from ..methods.diffsql import DiffSQL
        from .diffsql import build_model as build_diffsql

        if tiny:
            return build_random(lambda: DiffSQL.make_tiny(seed=0), device, dtype)
        return build_random(lambda: build_diffsql("resnet50", True), device, dtype)
    raise ValueError(f"unknown method {method!r}; use {', '.join(METHODS)}")


# --------------------------------------------------------------------------------- measurement
class Meter:
    """Timing (CUDA events / perf_counter) and peak memory (max_memory_allocated / VmHWM)."""

    def __init__(self, device):
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize(self.device)

    def call_seconds(self, fn) -> float:
        import torch

        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000.0
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    @contextmanager
    def peak(self) -> Iterator[Dict[str, float]]:
        """``{"total_gb", "above_gb"}``: peak during the block, and its part above the start."""
        import torch

        out: Dict[str, float] = {}
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            start = torch.cuda.memory_allocated(self.device)
            yield out
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            from .common import _status_kb, reset_peak

            reset_peak()
            start = _status_kb("VmRSS") * 1024
            yield out
            peak = _status_kb("VmHWM") * 1024
        out["total_gb"], out["above_gb"] = peak / 1e9, max(0, peak - start) / 1e9

    def measure(self, fn, repeats: int, warmup: int, cap_s: float) -> Dict[str, Any]:
        """Warm-up calls (stopped early when one alone exceeds the cap), then timed calls until
        ``repeats`` or the cap: median seconds, the number of calls, peak memory."""
        import torch

        t0 = time.perf_counter()
        with torch.inference_mode():
            for _ in range(warmup):
                fn()
                self.sync()
                if time.perf_counter() - t0 > cap_s:
                    break
            times: List[float] = []
            t1 = time.perf_counter()
            with self.peak() as mem:
                while len(times) < max(1, repeats):
                    times.append(self.call_seconds(fn))
                    if time.perf_counter() - t1 > cap_s:
                        break
        times.sort()
        n = len(times)
        median = times[n // 2] if n % 2 else 0.5 * (times[n // 2 - 1] + times[n // 2])
        return {"s": median, "runs": n, "min_s": times[0], **mem}


def _is_oom(err: BaseException) -> bool:
    return "out of memory" in str(err).lower() or type(err).__name__ == "OutOfMemoryError"


# ------------------------------------------------------------------------------------ the run
class Run:
    def __init__(self, args: argparse.Namespace):
        import torch

        from ..utils import parse_device, parse_dtype

        self.args = args
        self.tiny = bool(args.dry_run)
        self.device = parse_device(args.device or ("cpu" if self.tiny else "cuda"))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("diffdepth bench gpu: error: no CUDA device here — run it on a GPU machine, "
                             "or use --dry-run to check the benchmark on the CPU")
        self.dtype = parse_dtype(args.dtype)
        self.meter = Meter(self.device)
        self.t0 = time.perf_counter()
        self.rows: List[Dict[str, Any]] = []  # one per measurement, in run order
        self.notes: List[str] = []
        self.finished = False  # set when every method has run: until then the report says partial
        self.env = environment(self.device)
        self.command = command_line(args)
        out = args.out
        if out is None and not self.tiny:
            out = str(Path("benchmarks") / f"gpu-{self.env['slug']}.md")
        self.out = Path(out) if out else None

    # -- helpers
    def scale(self, side: int) -> int:
        return side // 16 if self.tiny else side

    def over_budget(self) -> bool:
        return time.perf_counter() - self.t0 > self.args.budget_s

    def images(self, batch: int, side: int):
        import torch

        g = torch.Generator().manual_seed(batch * 10007 + side)
        return torch.rand(batch, 3, side, side, generator=g).to(self.device, self.dtype)

    def record(self, method: str, setting: str, side: int, batch: int, fn, **extra) -> Dict[str, Any]:
        """Measure ``fn`` under the budget; a failure or OOM is recorded, never fatal."""
        import torch

        row: Dict[str, Any] = {"method": method, "setting": setting, "size": side, "batch": batch, **extra}
        if self.over_budget():
            row["status"] = "skipped (budget)"
        else:
            print(f"  {method} {setting} {side}² x{batch} ...", file=sys.stderr, flush=True)
            try:
                row.update(self.meter.measure(fn, self.args.repeats, self.args.warmup, self.args.cap_s))
                row["status"] = "ok"
            except Exception as err:  # noqa: BLE001 - a benchmark row, not a crash
                row["status"] = "OOM" if _is_oom(err) else f"error: {type(err).__name__}: {str(err)[:160]}"
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        self.rows.append(row)
        self.write()
        return row

    def find(self, method: str, setting: str, side: int, batch: int = 1) -> Optional[Dict[str, Any]]:
        for r in self.rows:
            if (r["method"], r["setting"], r["size"], r["batch"]) == (method, setting, side, batch) \
                    and r["status"] == "ok":
                return r
        return None

    # -- per method
    def run_method(self, method: str) -> None:
        import torch

        if self.over_budget():
            for side in SIZES[method]:
                self.rows.append({"method": method, "setting": "predict", "size": self.scale(side), "batch": 1,
                                  "status": "skipped (budget)"})
            self.write()
            return
        print(f"{method}: building (random weights) ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        try:
            model = make_model(method, self.tiny, self.device, self.dtype)
        except Exception as err:  # noqa: BLE001
            self.notes.append(f"{method}: build failed: {type(err).__name__}: {str(err)[:200]}")
            self.write()
            return
        self.meter.sync()
        n_params = sum(p.numel() for p in model.parameters())
        self.notes.append(f"{method}: {n_params / 1e6:.0f} M parameters, built in {time.perf_counter() - t:.1f} s")
        if self.args.channels_last:
            from ..fast import apply_fast_paths

            apply_fast_paths(model, channels_last=True)
        try:
            getattr(self, "_" + method.replace("-", "_"), self._plain)(method, model)
        finally:
            del model
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _sweep(self, method: str, predict: Callable, sides, setting: str = "predict") -> None:
        if not self.args.batches:
            return
        for side in sides:
            for batch in BATCHES.get(side, ()):
                s = self.scale(side)
                if self.tiny and batch > 2:
                    break
                x = self.images(batch, s)
                row = self.record(method, setting, s, batch, lambda: predict(x))
                del x
                if row["status"] != "ok":
                    break

    def _plain(self, method: str, model) -> None:
        def predict(x):
            return model.predict(x)

        for side in SIZES[method]:
            x = self.images(1, self.scale(side))
            self.record(method, "predict", self.scale(side), 1, lambda: predict(x))
        self._sweep(method, predict, (512,))

    def _primedepth(self, method: str, model) -> None:
        import torch

        from .official import OfficialProcedure

        def predict(x):
            return model.predict(x, seed=0)

        official = OfficialProcedure(model)
        names = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
        base_dtypes = []  # unique dtypes, in the order asked
        for bd in (d.strip() for d in self.args.baseline_dtypes.split(",") if d.strip()):
            dt = self.dtype if bd == "same" else names[bd]
            if dt not in base_dtypes:
                base_dtypes.append(dt)
        for side in SIZES[method]:
            s = self.scale(side)
            x = self.images(1, s)
            self.record(method, "predict", s, 1, lambda: predict(x))
            if side == 768:
                continue  # ours only at 768² (the baselines at 512² and 1024²)
            for dt in base_dtypes:
                name = {v: k for k, v in names.items()}[dt]
                model.to(dtype=dt)  # and back below (exact when widening, as bf16 -> fp32 -> bf16)
                if self.args.channels_last:  # the official code runs NCHW
                    model.to(memory_format=torch.contiguous_format)
                xb = x.to(dt)
                try:
                    self.record(method, f"official procedure {name}", s, 1, lambda: official.predict(xb))
                finally:
                    model.to(dtype=self.dtype)
                    if self.args.channels_last:
                        model.to(memory_format=torch.channels_last)
                    del xb
        self._sweep(method, predict, (512, 1024))

    def _marigold(self, method: str, model) -> None:
        import torch

        from ..methods.marigold.ensemble import ensemble_affine

        def predict(x):
            return model.predict(x, steps=1, ensemble_size=1, timestep_spacing="trailing")

        for side in SIZES[method]:
            s = self.scale(side)
            x = self.images(1, s)
            self.record(method, "1 step", s, 1, lambda: predict(x))
            with torch.inference_mode():
                z_img = model.sd.encode_image(x)
            z = torch.randn(z_img.shape, generator=torch.Generator().manual_seed(s)).to(self.device, self.dtype)
            self.record(method, "VAE encode", s, 1, lambda: model.sd.encode_image(x))
            self.record(method, "UNet step", s, 1, lambda: model.denoise(z_img, z, model.ddim(1, "trailing")))
            self.record(method, "VAE decode", s, 1, lambda: model.decode_depth(z))
            with torch.inference_mode():
                depth = model.decode_depth(z).float()
            g = torch.Generator().manual_seed(1)
            members = (0.5 + torch.rand(10, 1, 1, 1, generator=g)).to(depth.device) * depth \
                + (torch.rand(10, 1, 1, 1, generator=g) - 0.5).to(depth.device) \
                + 0.01 * torch.randn(10, 1, s, s, generator=g).to(depth.device)
            saved = self.args.repeats, self.args.warmup
            self.args.repeats, self.args.warmup = 1, 0  # BFGS on the CPU: one call says enough
            try:
                self.record(method, "ensemble of 10", s, 1, lambda: ensemble_affine(members))
            finally:
                self.args.repeats, self.args.warmup = saved
            del z_img, z, depth, members
        self._sweep(method, predict, (512,), "1 step")

    def _metricgold(self, method: str, model) -> None:
        def predict(x):
            return model.predict(x, steps=1, ensemble_size=1, timestep_spacing="trailing")

        for side in SIZES[method]:
            x = self.images(1, self.scale(side))
            self.record(method, "1 step", self.scale(side), 1, lambda: predict(x))

    # -- the report
    def marigold_protocol_s(self, s: int) -> Optional[float]:
        parts = [self.find("marigold", k, s) for k in ("VAE encode", "UNet step", "VAE decode", "ensemble of 10")]
        if any(p is None for p in parts):
            return None
        enc, step, dec, ens = (p["s"] for p in parts)
        return enc + 500 * step + 10 * dec + ens

    def render(self) -> str:
        a, env = self.args, self.env
        skipped = any(r["status"] == "skipped (budget)" for r in self.rows)
        lines = [f"# `diffdepth bench gpu` on {env['device']}{' — DRY RUN (tiny models, CPU)' if self.tiny else ''}", "",
                 f"* device: {env['device']}; driver {env['driver']}; CUDA {env['cuda']}; torch {env['torch']}; "
                 f"diffusers {env['diffusers']}; host {env['host']}",
                 f"* command: `{self.command}`",
                 f"* {a.dtype}, random weights (full-size architectures{'' if not self.tiny else ' → tiny models'}), "
                 f"images already on the device; median of up to {a.repeats} timed calls after {a.warmup} warm-up "
                 f"calls ({'CUDA events' if self.device.type == 'cuda' else 'perf_counter'}), each measurement capped "
                 f"at {a.cap_s:.0f} s; peak memory = "
                 + ("`torch.cuda.max_memory_allocated` (total incl. weights / above the weights)"
                    if self.device.type == "cuda" else "peak resident set VmHWM (total / above the start)"),
                 f"* run time {time.perf_counter() - self.t0:.0f} s; "
                 + ("complete" if self.finished and not skipped else
                    f"**partial**: measurements after {a.budget_s:.0f} s were skipped" if self.finished else
                    f"**partial**: in progress or stopped after {len(self.rows)} measurements"),
                 ""]
        # baselines
        lines += ["## Against the baselines, same run", "",
                  "| PrimeDepth | size | ours ms | baseline ms | speed-up | ours peak GB | baseline peak GB | "
                  "memory ratio | ours / baseline GB above weights |", "|---|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            if r["method"] != "primedepth" or not r["setting"].startswith("official") or r["batch"] != 1:
                continue
            ours = self.find("primedepth", "predict", r["size"])
            if r["status"] != "ok" or ours is None:
                lines.append(f"| {r['setting']} | {r['size']}² | {_ms(ours)} | {r['status']} | | | | | |")
                continue
            lines.append(f"| {r['setting']} | {r['size']}² | {_ms(ours)} | {_ms(r)} | {r['s'] / ours['s']:.1f}× | "
                         f"{ours['total_gb']:.2f} | {r['total_gb']:.2f} | {r['total_gb'] / ours['total_gb']:.1f}× | "
                         f"{ours['above_gb']:.2f} / {r['above_gb']:.2f} |")
        lines += ["", "| Marigold | size | 1 step ms | encode / step / decode / ensemble ms | 50 steps × 10 s (extrap.) | "
                  "ratio |", "|---|---|---|---|---|---|"]
        for side in SIZES["marigold"]:
            s = self.scale(side)
            one = self.find("marigold", "1 step", s)
            multi = self.marigold_protocol_s(s)
            parts = " / ".join(_ms(self.find("marigold", k, s)) for k in
                               ("VAE encode", "UNet step", "VAE decode", "ensemble of 10"))
            ratio = f"{multi / one['s']:.0f}×" if one and multi else "–"
            lines.append(f"| 1 trailing step vs 50×10 | {s}² | {_ms(one)} | {parts} | "
                         f"{'–' if multi is None else f'{multi:.1f}'} | {ratio} |")
        # all measurements
        lines += ["", "## Every measurement", "",
                  "| method | setting | size | batch | median ms | runs | images/s | peak GB | above weights GB | status |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            ok = r["status"] == "ok"
            ips = f"{r['batch'] / r['s']:.1f}" if ok and r["setting"] in ("predict", "1 step") else ""
            gb = f"{r['total_gb']:.2f} | {r['above_gb']:.2f}" if ok else " | "
            lines.append(f"| {r['method']} | {r['setting']} | {r['size']}² | {r['batch']} | {_ms(r) if ok else ''} | "
                         f"{r.get('runs', '')} | {ips} | {gb} | {r['status']} |")
        # best throughput
        lines += ["", "## Images/s at the best batch size", "", "| method | size | best batch | images/s | ms per batch |",
                  "|---|---|---|---|---|"]
        for m in METHODS:
            for side in SIZES[m]:
                s = self.scale(side)
                cand = [r for r in self.rows if r["method"] == m and r["size"] == s and r["status"] == "ok"
                        and r["setting"] in ("predict", "1 step")]
                if cand:
                    best = max(cand, key=lambda r: r["batch"] / r["s"])
                    lines.append(f"| {m} | {s}² | {best['batch']} | {best['batch'] / best['s']:.1f} | {_ms(best)} |")
        lines += ["", "## Goals (issue 18)", ""] + self.goals() + [""]
        if self.notes:
            lines += ["## Notes", ""] + [f"* {n}" for n in self.notes] + [""]
        return "\n".join(lines)

    def goals(self) -> List[str]:
        if self.tiny:
            return ["(not judged in a dry run)"]
        out = []

        def line(what, value, goal, unit, le=True):
            if value is None:
                return f"* {what}: not measured (goal {'≤' if le else '≥'} {goal:g} {unit})"
            met = value <= goal if le else value >= goal
            return f"* {what}: {value:.3g} {unit} (goal {'≤' if le else '≥'} {goal:g}) — {'met' if met else 'NOT met'}"

        p512, p1024 = self.find("primedepth", "predict", 512), self.find("primedepth", "predict", 1024)
        m768 = self.find("marigold", "1 step", 768)
        out.append(line("PrimeDepth 512²", p512 and p512["s"] * 1e3, GOALS["primedepth_512_ms"], "ms"))
        out.append(line("PrimeDepth 1024²", p1024 and p1024["s"] * 1e3, GOALS["primedepth_1024_ms"], "ms"))
        out.append(line("PrimeDepth 1024² peak", p1024 and p1024["total_gb"], GOALS["primedepth_1024_gb"], "GB"))
        out.append(line("Marigold 1 step 768²", m768 and m768["s"] * 1e3, GOALS["marigold_768_ms"], "ms"))
        for side in (512, 1024):
            ours, off = self.find("primedepth", "predict", side), self.find("primedepth", "official procedure fp32", side)
            sp = off["s"] / ours["s"] if ours and off else None
            mr = off["total_gb"] / ours["total_gb"] if ours and off else None
            out.append(line(f"speed-up vs official procedure fp32, {side}²", sp, GOALS["official_speedup"], "×",
                            le=False))
            out.append(line(f"memory ratio vs official procedure fp32, {side}²", mr, GOALS["official_memory"], "×",
                            le=False))
        return out

    def write(self) -> None:
        text = self.render()
        if self.out is not None:
            from ..utils import atomic_path

            with atomic_path(self.out) as tmp:
                tmp.write_text(text + "\n")
        if self.args.json:
            from ..utils import atomic_path

            with atomic_path(Path(self.args.json)) as tmp:
                tmp.write_text(json.dumps({"env": self.env, "command": self.command, "rows": self.rows,
                                           "notes": self.notes}, indent=2))


def _ms(r: Optional[Dict[str, Any]]) -> str:
    return "–" if not r or r.get("status") != "ok" else f"{r['s'] * 1e3:.1f}"


def command_line(a: argparse.Namespace) -> str:
    """The explicit command that repeats this run (every option spelled out)."""
    parts = ["diffdepth", "bench", "gpu"] + (["--dry-run"] if a.dry_run else [])
    parts += ["--device", str(a.device)] if a.device else []
    parts += ["--dtype", a.dtype, "--methods", a.methods, "--repeats", str(a.repeats), "--warmup", str(a.warmup),
              "--cap-s", f"{a.cap_s:g}", "--budget-s", f"{a.budget_s:g}", "--baseline-dtypes", a.baseline_dtypes]
    parts += [] if a.batches else ["--no-batches"]
    parts += ["--channels-last"] if a.channels_last else []
    parts += ["--out", a.out] if a.out else []
    return " ".join(_quote(p) for p in parts)


def _quote(a: str) -> str:
    return a if re.fullmatch(r"[\w.,=/:+-]+", a) else "'" + a.replace("'", "'\\''") + "'"


def environment(device) -> Dict[str, str]:
    import diffusers
    import torch

    env = {"torch": torch.__version__, "diffusers": diffusers.__version__, "cuda": torch.version.cuda or "none",
           "host": f"{platform.node()}, {os.cpu_count()} CPUs", "driver": "n/a"}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        total = torch.cuda.get_device_properties(device).total_memory / 2 ** 30
        env["device"] = f"{name} ({total:.0f} GiB)"
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            env["driver"] = "unknown"
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower().replace("nvidia", "")).strip("-")
    else:
        env["device"] = f"CPU {platform.machine()} ({torch.get_num_threads()} threads)"
        slug = "cpu"
    env["slug"] = slug or "gpu"
    return env


def run(args: argparse.Namespace) -> int:
    import torch

    from .common import finalize

    finalize(args)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise SystemExit(f"diffdepth bench gpu: error: unknown method(s) {', '.join(bad)}; use {', '.join(METHODS)}")
    bad = [d for d in args.baseline_dtypes.split(",") if d.strip() not in ("fp32", "fp16", "bf16", "same", "")]
    if bad:
        raise SystemExit(f"diffdepth bench gpu: error: --baseline-dtypes {','.join(bad)}: use fp32, fp16, bf16 or same")
    if args.dtype is None:
        args.dtype = "fp32" if args.dry_run else "bf16"
    if args.dry_run:
        args.repeats, args.warmup = min(args.repeats, 2), min(args.warmup, 1)
    r = Run(args)
    threads, cudnn_benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    if args.dry_run:
        torch.set_num_threads(1)  # tiny models: threads only add synchronisation on a busy machine
    if r.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # both sides alike: the fastest kernels per shape
    try:
        for method in methods:
            r.run_method(method)
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = cudnn_benchmark
    r.finished = True
    r.write()
    print(r.render())
    if r.out is not None:
        print(f"written: {r.out}", file=sys.stderr)
    return 0
