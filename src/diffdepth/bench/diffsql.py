"""``diffdepth bench diffsql``: the cost of DiffSQL's Stable Diffusion prior.

Time and peak memory of one depth prediction at 640x192 with the full-size architecture and
random weights — ResNet-18 or -50 encoder-decoder + self-query head, with and without the SD
branch (an SD 2.1-sized VAE encoder + UNet up to the tapped block; configs below, nothing is
downloaded) — each configuration in its own subprocess, side by side, with the ratio.
The PoseNet is not run (it is used only in training). Parameter counts are those the
prediction uses (the VAE decoder is stored but never run). Peak memory is the resident-set
peak above the level before the timed frames (weights excluded).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List

from ..backbone.configs import SD21_UNET, SD_VAE as SD21_VAE  # noqa: F401 (tests import them here)

HELP = "DiffSQL depth network with vs without the SD branch: time and peak memory per 640x192 frame"

#: DiffSQL head at 640x192 (SQLdepth-like defaults, REFERENCE.md)
FULL_CONFIG = dict(decoder_features=256, model_dim=64, num_queries=64, num_bins=128, patch_size=16,
                   vit_layers=4, vit_heads=4, sd_width=64, sd_tap="up0")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoders", default="resnet18,resnet50", help="comma-separated: resnet18, resnet50")
    from .common import add_common_arguments

    add_common_arguments(p, "diffsql", sizes="192x640", tiny_sizes="64x96", hw_alias=True,
                         defaults=dict(repeats=2, device="cpu", threads=0),
                         helps={"repeats": "timed frames per configuration (median)",
                                "tiny": "tiny random model instead of the full-size one (smoke test)"},
                         fixed={"dtype": ("fp32", "the DiffSQL benchmark builds its network in fp32")})
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--sd-tap", default="up0", choices=("mid0", "up1", "up0"))


def build_model(encoder: str, use_sd: bool, sd_tap: str = "up0", tiny: bool = False):
    """Full-size DiffSQL with random weights (no download); ``tiny``: the make_tiny model."""
    import torch

    from ..methods.diffsql import DiffSQL

    if tiny:
        return DiffSQL.make_tiny(seed=0, use_sd=use_sd, sd_tap=sd_tap).eval()
    sd = None
    if use_sd:
        from diffusers import AutoencoderKL, UNet2DConditionModel

        from ..backbone import StableDiffusion

        sd = StableDiffusion(vae=AutoencoderKL(**SD21_VAE), unet=UNet2DConditionModel(**SD21_UNET),
                             source="random-sd21")
    cfg = dict(FULL_CONFIG, sd_tap=sd_tap)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return DiffSQL(sd=sd, encoder=encoder, pose_encoder="resnet18", use_sd=use_sd, **cfg).eval()


def _worker(argv: List[str]) -> None:
    import torch

    from .common import peak_memory, timed

    args = json.loads(argv[0])
    if args["threads"]:
        torch.set_num_threads(args["threads"])
    device = torch.device(args["device"])
    model = build_model(args["encoder"], args["use_sd"], args["sd_tap"], args.get("tiny", False)).to(device)
    n_depth = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("pose_net.", "sd.")))
    n_sd_used = 0
    if model.sd is not None:
        n_sd_used = sum(p.numel() for p in model.sd.vae.encoder.parameters()) + \
            sum(p.numel() for p in model.sd.vae.quant_conv.parameters())
        n_sd_used += sum(p.numel() for p in model.sd.unet.parameters())
    x = torch.rand(1, 3, args["height"], args["width"], device=device)
    with torch.inference_mode():
        for _ in range(args["warmup"]):
            model.predict(x)
        with peak_memory(device) as mem:
            seconds = timed(lambda: model.predict(x), device, repeats=args["repeats"])
    print(json.dumps({"seconds": seconds, "peak_gb": mem["peak_gb"], "params_m": (n_depth + n_sd_used) / 1e6,
                      "sd_params_m": n_sd_used / 1e6}))


def run(args: argparse.Namespace) -> int:
    import torch

    from .common import finalize, machine_description, run_worker, write_outputs

    finalize(args)
    encoders = [e.strip() for e in args.encoders.split(",") if e.strip()]
    if args.tiny:
        encoders = ["tiny"]
    rows: List[Dict] = []
    for h, w in args.sizes:
        for enc in encoders:
            res = {}
            for use_sd in (False, True):
                payload = dict(encoder=enc, use_sd=use_sd, sd_tap=args.sd_tap, height=h, width=w,
                               repeats=args.repeats, warmup=args.warmup, threads=args.threads, device=args.device,
                               tiny=args.tiny)
                print(f"running {enc} {'+ SD' if use_sd else 'alone'} at {w}x{h} ...", file=sys.stderr, flush=True)
                res[use_sd] = run_worker("diffdepth.bench.diffsql", ["--worker", json.dumps(payload)])
            rows.append({"encoder": enc, "size": [h, w], "base": res[False], "sd": res[True]})
    torch.set_num_threads(args.threads or torch.get_num_threads())
    machine = machine_description(torch.device(args.device))
    tag = " (TINY smoke-test model)" if args.tiny else ""
    frames = ", ".join(f"{w}x{h}" for h, w in args.sizes)
    lines = [f"DiffSQL depth network{tag}, one {frames} frame, "
             f"{'fp32' if args.device == 'cpu' else args.device}, random weights, "
             f"SD tap {args.sd_tap}; {machine}", "",
             "| encoder | frame | params w/o SD (M) | s/frame w/o SD | peak GB w/o SD | params with SD (M, SD part) | "
             "s/frame with SD | peak GB with SD | time ratio | memory ratio |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b, s = r["base"], r["sd"]
        lines.append(f"| {r['encoder']} | {r['size'][1]}x{r['size'][0]} | {b['params_m']:.1f} | {b['seconds']:.3f} | {b['peak_gb']:.3f} | "
                     f"{s['params_m']:.1f} ({s['sd_params_m']:.0f}) | {s['seconds']:.3f} | {s['peak_gb']:.3f} | "
                     f"{s['seconds'] / b['seconds']:.1f}x | {s['peak_gb'] / max(b['peak_gb'], 1e-9):.1f}x |")
    text = "\n".join(lines)
    print(text)
    write_outputs(args, text, rows)
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--worker":
        _worker(sys.argv[2:])
    else:  # pragma: no cover
        parser = argparse.ArgumentParser(description=HELP)
        add_arguments(parser)
        sys.exit(run(parser.parse_args()))
