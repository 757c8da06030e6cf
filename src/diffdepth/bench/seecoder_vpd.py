"""``diffdepth bench seecoder-vpd``: time and peak memory of one SeeCoder-VPD forward pass,
split into SeeCoder / VAE encoder / UNet (taps) / decoder (aggregation + task head).

The full-size architecture is built in code with random weights (no download):
SeeCoder with Swin-L (SEECODER_LARGE, DC+SA), the SD 2.1 UNet (320/640/1280/1280,
context 1024, linear projections; ``--unet sd15`` for the SD 1.5 layout, context 768) and the
SD VAE encoder, VPD head (1536-ch aggregation, 3 deconvs of 32 ch, 192 ch). Default input is
one KITTI-size image (352x1216, padded to 384x1216 for the UNet). Memory is the peak resident
set size of the process while a stage runs minus the RSS before it (sampled every 5 ms from
/proc/self/statm; CPU only) — the activations and workspace that stage adds on top of the
weights. On CUDA the same is read from torch.cuda.max_memory_allocated.
"""
from __future__ import annotations

import argparse
import os
import platform
import threading
import time

from ..backbone.configs import SD15_UNET, SD21_UNET, SD_VAE

HELP = "SeeCoder-VPD: time/peak memory per image split into SeeCoder / VAE / UNet / decoder"



def add_arguments(p: argparse.ArgumentParser) -> None:
    from .common import add_common_arguments

    add_common_arguments(
        p, "seecoder-vpd", sizes="352x1216", tiny_sizes="64x96", hw_alias=True,
        defaults=dict(repeats=1, device="cpu", dtype="fp32", threads=0),
        helps={"sizes": "comma list of HxW or N (default 352x1216: the KITTI KB crop)",
               "repeats": "timed passes per stage (after --warmup)",
               "tiny": "tiny UNet/VAE and SeeCoder (= --unet tiny --seecoder tiny): seconds"})
    p.add_argument("--batch", type=int, default=1, help="images per pass")
    p.add_argument("--unet", choices=("sd21", "sd15", "tiny"), default=None, help="UNet/VAE size (default sd21)")
    p.add_argument("--seecoder", choices=("large", "tiny"), default=None, help="SeeCoder size (default large)")
    p.add_argument("--enhancement", default="dc+sa", help="none | dc | sa | dc+sa")
    p.add_argument("--warmup", type=int, default=0, help="untimed passes before timing")
    p.add_argument("--enhancement-ablation", action="store_true",
                   help="also time the SeeCoder stage with enhancement none / dc / sa / dc+sa (same weights)")


class _PeakRSS:
    """Peak resident set size (bytes) of this process while the context is open."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self):
        self.start = self.rss()
        self.peak = self.start
        self._stop = threading.Event()

        def poll():
            while not self._stop.is_set():
                self.peak = max(self.peak, self.rss())
                time.sleep(self.interval)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def build_model(unet: str = "sd21", seecoder: str = "large", enhancement: str = "dc+sa"):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from ..backbone import StableDiffusion, make_tiny_sd
    from ..methods.seecoder_vpd import SEECODER_LARGE, SEECODER_TINY, SeeCoderVPD

    if unet == "tiny":
        sd = make_tiny_sd(seed=0)
        head = dict(agg_dim=32, head_channels=16, deconv_filters=8)
    else:
        cfg = SD21_UNET if unet == "sd21" else SD15_UNET
        sd = StableDiffusion(vae=AutoencoderKL(**SD_VAE), unet=UNet2DConditionModel(**cfg), source=f"random-{unet}")
        head = {}
    sc = dict(SEECODER_LARGE if seecoder == "large" else SEECODER_TINY, enhancement=enhancement)
    model = SeeCoderVPD(sd, seecoder=sc, **head)
    return model.eval()


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def run(args: argparse.Namespace) -> int:
    import torch

    from ..utils import parse_device, parse_dtype
    from .common import finalize, write_outputs

    finalize(args)
    if args.tiny:
        big = [f"--{k} {v}" for k, v in (("unet", args.unet), ("seecoder", args.seecoder)) if v not in (None, "tiny")]
        if big:
            raise SystemExit(f"diffdepth bench seecoder-vpd: error: --tiny means --unet tiny --seecoder tiny; "
                             f"drop {' '.join(big)} or --tiny")
        args.unet, args.seecoder = "tiny", "tiny"
    args.unet, args.seecoder = args.unet or "sd21", args.seecoder or "large"
    lines, results = [], []

    def say(line: str = "") -> None:  # the report: printed, and written by --record
        print(line)
        lines.append(line)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = parse_device(args.device)
    dtype = parse_dtype(args.dtype) or torch.float32
    t0 = time.perf_counter()
    model = build_model(args.unet, args.seecoder, args.enhancement).to(device=device, dtype=dtype)
    build_s = time.perf_counter() - t0
    def n_params(*modules):
        return sum(p.numel() for m in modules if m is not None for p in m.parameters())

    counts = {
        "SeeCoder": n_params(model.seecoder),
        "VAE": n_params(model.sd.vae.encoder, getattr(model.sd.vae, "quant_conv", None)),
        "UNet": n_params(model.sd.unet),
        "decoder": n_params(model.aggregation, model.decoder, model.context_proj),
    }
    for h, w in args.sizes:
        m = model.size_multiple
        hp, wp = -(-h // m) * m, -(-w // m) * m
        g = torch.Generator().manual_seed(0)
        images = torch.rand(args.batch, 3, h, w, generator=g).to(device=device, dtype=dtype)
        padded = torch.nn.functional.pad(images, (0, wp - w, 0, hp - h), value=0.5)

        state = {}

        def seecoder():
            state["tokens"] = model.context(images)

        def vae():
            state["z"] = model.sd.encode_image(padded)

        def unet():
            pre = model.sd.taps(state["z"], t=1, context=state["tokens"], outputs=model.taps, stop_after=model.taps[-1])
            state["feats"] = [pre.outputs[n] for n in model.taps]

        def decoder():
            state["depth"] = model.head(state["feats"], (h, w))

        stages = [("SeeCoder", seecoder), ("VAE encoder", vae), ("UNet (taps)", unet), ("decoder", decoder)]
        rows = []
        with torch.inference_mode():
            for _ in range(args.warmup):
                for _, fn in stages:
                    fn()
            for name, fn in stages:
                times, cpus, mems = [], [], []
                for _ in range(max(1, args.repeats)):
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                        base = torch.cuda.memory_allocated()
                        _sync(device)
                        t = time.perf_counter()
                        fn()
                        _sync(device)
                        times.append(time.perf_counter() - t)
                        mems.append(torch.cuda.max_memory_allocated() - base)
                    else:
                        with _PeakRSS() as mon:
                            t, c = time.perf_counter(), time.process_time()
                            fn()
                            times.append(time.perf_counter() - t)
                            cpus.append(time.process_time() - c)
                        mems.append(mon.peak - mon.start)
                rows.append((name, min(times), min(cpus) if cpus else float("nan"), max(mems)))
        total = sum(r[1] for r in rows)
        total_cpu = sum(r[2] for r in rows)
        if device.type == "cuda":
            dev = torch.cuda.get_device_name(device)
        else:
            dev = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
        say(f"SeeCoder-VPD forward, {args.batch} x {h}x{w} (padded {hp}x{wp}), UNet {args.unet}, SeeCoder {args.seecoder} "
              f"({args.enhancement}), {args.dtype}, {dev}, torch {torch.__version__}; build {build_s:.1f} s")
        say(f"{'stage':<14}{'params (M)':>12}{'wall (s)':>10}{'CPU (s)':>10}{'share':>8}{'peak extra mem (MiB)':>23}")
        keys = ["SeeCoder", "VAE", "UNet", "decoder"]
        for (name, t, c, mem), k in zip(rows, keys):
            share = c / total_cpu if device.type == "cpu" else t / total
            say(f"{name:<14}{counts[k] / 1e6:>12.1f}{t:>10.2f}{c:>10.2f}{share:>8.1%}{mem / 2**20:>23.0f}")
        say(f"{'total':<14}{sum(counts.values()) / 1e6:>12.1f}{total:>10.2f}{total_cpu:>10.2f}{1:>8.0%}")
        say("share: of CPU time on CPU (robust on a shared machine), of wall time on CUDA")
        if args.enhancement_ablation:
            _ablation(model, images, device, dtype, args.repeats, say)
        say(f"per image: {total / args.batch:.2f} s wall, {total_cpu / args.batch:.2f} s CPU; depth range of the random model "
              f"{float(state['depth'].min()):.2f}-{float(state['depth'].max()):.2f} m")
        results.append({"size": [h, w], "stages": [dict(zip(("stage", "wall_s", "cpu_s", "peak_extra_bytes"), r))
                                                   for r in rows], "params": counts})
    write_outputs(args, "\n".join(lines), results)
    return 0


def _ablation(model, images, device, dtype, repeats: int, say=print) -> None:
    """SeeCoder stage per enhancement switch, with the shared weights of ``model.seecoder``."""
    import torch

    from ..methods.seecoder_vpd import SeeCoder

    base = model.get_config()["seecoder"]
    state = model.seecoder.state_dict()
    rows = []
    for enh in ("none", "dc", "sa", "dc+sa"):
        sc = SeeCoder(**dict(base, enhancement=enh))
        sc.load_state_dict(state, strict=False)
        sc = sc.to(device=device, dtype=dtype).eval()
        extra = sum(p.numel() for p in sc.enhancement_parameters())
        wall, cpu = [], []
        with torch.inference_mode():
            for _ in range(max(1, repeats)):
                _sync(device)
                t, c = time.perf_counter(), time.process_time()
                sc(images)
                _sync(device)
                wall.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
        rows.append((enh, extra, min(wall), min(cpu)))
        del sc
    ref = rows[0][3] if device.type == "cpu" else rows[0][2]
    say(f"{'SeeCoder enhancement':<22}{'extra params (M)':>18}{'wall (s)':>10}{'CPU (s)':>10}{'vs none':>9}")
    for enh, extra, w, c in rows:
        val = c if device.type == "cpu" else w
        say(f"{enh:<22}{extra / 1e6:>18.2f}{w:>10.2f}{c:>10.2f}{val / ref:>9.2f}")
