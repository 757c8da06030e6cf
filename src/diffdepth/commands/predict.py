"""``diffdepth predict``: images, folders, globs and videos -> depth files."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List

from ..errors import InputError

HELP = "predict depth for images, folders (recursive), globs or videos"


def declared_options() -> Dict[str, tuple]:
    """The predict options registered methods declare with a help (a flag each):
    name -> (spec, ids of the methods that take it), in registry order."""
    from ..registry import list_methods

    found: Dict[str, tuple] = {}
    for info in list_methods():
        try:
            declared = getattr(info.load_class(), "predict_options", None)
        except ImportError:  # a broken optional method does not break the others
            continue
        for name, spec in (declared.items() if isinstance(declared, dict) else ()):
            if spec.get("help"):
                found.setdefault(name, (spec, []))[1].append(info.id)
    return found


def add_method_options(p: argparse.ArgumentParser):
    """The method-option flags shared by ``predict`` and ``eval``, one per declared option; returns their group."""
    g = p.add_argument_group("method options (only those the method accepts)")
    for name, (spec, methods) in declared_options().items():
        kind = {"action": "store_true"} if spec["type"] is bool else {
            "type": spec["type"], "choices": spec.get("choices"), "metavar": spec.get("metavar")}
        g.add_argument("--" + name.replace("_", "-"), default=None, help=f"{spec['help']} ({', '.join(methods)})",
                       **kind)
    g.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="any other method option (YAML-typed value); repeatable")
    return g


def method_options(args: argparse.Namespace) -> Dict[str, object]:
    """The method options the user set (flags + ``--opt``), for ``DepthPipeline``."""
    options = {name: getattr(args, name) for name in declared_options() if getattr(args, name, None) is not None}
    options.update(_parse_opts(args.opt))
    return options


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image/video files, folders (searched recursively) or globs")
    p.add_argument("--method", default=None, help="method id (default: from the checkpoint, else marigold); see `diffdepth info`")
    p.add_argument("--checkpoint", default=None, help="local folder or hub id (default: the method's published weights)")
    p.add_argument("--out", default="depth_out", help="output folder; the tree mirrors the inputs (default: depth_out)")
    p.add_argument("--save", default="npy,png16,color",
                   help="comma list of npy,png16,color,side,ply,points,glb,uncertainty,seg,seg_ids (default: npy,png16,color)")
    p.add_argument("--processing-res", type=int, default=None,
                   help="long side the model sees, aspect ratio kept (default: the method's — DiffSQL: exactly "
                        "its fixed input size, 640x192; 0 = native size)")
    p.add_argument("--tile", type=int, default=None, metavar="SIZE",
                   help="refine the prediction with overlapping SIZE x SIZE tiles at native resolution, each aligned "
                        "to the global pass and blended (1 + tiles passes; see README 'Tiled inference')")
    p.add_argument("--tile-overlap", type=int, default=None, metavar="PX",
                   help="pixels neighbouring tiles share at least (default: SIZE/4)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N|mps")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: keep them)")
    p.add_argument("--workers", type=int, default=2,
                   help="reader and writer threads that decode/resize inputs and write outputs while the model "
                        "runs (default 2; 0 = one input after another)")
    add_fast_path_options(p)
    g = add_method_options(p)
    g.add_argument("--caption", default=None, metavar="auto|none|MODEL",
                   help="caption every image and use it as its prompt (primedepth, as the paper): auto = BLIP-2 "
                        "Salesforce/blip2-opt-2.7b, or a local BLIP-2 folder / hub id; default none (the empty "
                        "prompt, or --prompt)")
    g.add_argument("--ensemble-with", default=None, metavar="DIR|METHOD:CKPT",
                   help="average (aligned disparities, PrimeDepth paper) with a second model: a folder of its .npy "
                        "predictions at the same relative paths, or a method spec run in this job "
                        "(e.g. hf:depth-anything/Depth-Anything-V2-Large-hf)")
    e = p.add_argument_group("export")
    e.add_argument("--focal", type=float, default=None,
                   help="focal length in pixels for the point clouds (ply/points/glb); overrides NAME_K.txt, the "
                        "folder's intrinsics.txt|K.txt and EXIF (default: those, else a 60 deg field of view)")
    e.add_argument("--fov", type=float, default=None, help="horizontal field of view in degrees for the point clouds")
    from ..io.colormaps import COLORMAPS

    e.add_argument("--cmap", default="Spectral", type=str.lower, choices=sorted(COLORMAPS), metavar="NAME",
                   help=f"colour map for color/side outputs: {', '.join(sorted(COLORMAPS))} (default: spectral)")
    e.add_argument("--grayscale", action="store_true", help="grey colour images (same as --cmap gray)")
    e.add_argument("--vmin", type=float, default=None, help="fixed colour range start (model units)")
    e.add_argument("--vmax", type=float, default=None, help="fixed colour range end (model units)")
    e.add_argument("--percentiles", default=None, metavar="LO,HI",
                   help="colour range from these percentiles of the valid values (default: 2,98)")
    e.add_argument("--ply-stride", type=int, default=1, metavar="N", help="PLY: keep every N-th pixel per direction")
    e.add_argument("--ply-max-depth", type=float, default=None, metavar="D",
                   help="PLY: leave out points farther than D (metres for metric methods)")
    a = p.add_argument_group("metric alignment to sparse anchors (see `diffdepth align`)")
    a.add_argument("--align-to", default=None, metavar="PATH",
                   help="anchors (known depths): one file for one image, or a folder of files named like the "
                        "inputs' outputs (<name>.npy|png|csv|bin); writes metric depth to --align-out")
    a.add_argument("--align-out", default=None, metavar="DIR",
                   help="folder for the aligned metric depth and its report (default: OUT/metric)")
    from .align import add_anchor_options

    add_anchor_options(a, prefix="align-")
    v = p.add_argument_group("video")
    v.add_argument("--start-frame", type=int, default=0, metavar="N", help="first frame (0-based)")
    v.add_argument("--end-frame", type=int, default=None, metavar="N", help="stop before this frame")
    v.add_argument("--frame-stride", type=int, default=1, metavar="N", help="every N-th frame (output fps / N)")
    v.add_argument("--max-frames", type=int, default=None, metavar="N", help="at most N frames")
    v.add_argument("--temporal", default="latent", choices=("latent", "none", "align", "align+latent"),
                   help="latent: the method's own temporal hook (default; Marigold blends latents); none: frames "
                        "alone; align: each frame aligned (scale/shift, robust) to the median of the last "
                        "--temporal-window aligned frames; align+latent: both")
    v.add_argument("--temporal-window", type=int, default=8, metavar="N",
                   help="frames in the running reference of --temporal align (default 8)")


def add_fast_path_options(p: argparse.ArgumentParser):
    """Inference fast-path switches (``diffdepth.fast.apply_fast_paths``); ``--dtype`` is separate."""
    g = p.add_argument_group("fast paths")
    g.add_argument("--channels-last", action="store_true", help="NHWC weights and inputs")
    g.add_argument("--compile", action="store_true", help="torch.compile the UNet, refiner, heads and VAE")
    g.add_argument("--cuda-graphs", action="store_true",
                   help="CUDA graphs for fixed shapes (torch.compile mode=reduce-overhead; CUDA only)")
    g.add_argument("--vae-tiling-above", type=int, default=None, metavar="PX",
                   help="VAE codes images with a side above PX in overlapping PX-sized tiles")
    g.add_argument("--vae-slicing", action="store_true", help="VAE codes a batch one image at a time")
    return g


def _parse_opts(items: List[str]) -> Dict[str, object]:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--opt expects KEY=VALUE, got {item!r}")
        out[key.replace("-", "_")] = yaml.safe_load(value)
    return out


def check_options(args: argparse.Namespace) -> set:
    """Every option checked before any input is read or model loaded; returns the output formats."""
    from ..io.export import parse_formats

    formats = parse_formats(args.save)
    if not formats:
        raise InputError("--save is empty; name at least one of npy,png16,color,side,ply,points,glb,uncertainty,seg")
    out_root = Path(args.out).expanduser()
    if out_root.exists() and not out_root.is_dir():
        raise InputError(f"--out {args.out} is a file; name a folder (it is created if missing)")
    if getattr(args, "align_to", None) is not None:
        if "npy" not in formats:
            raise InputError("--align-to aligns the .npy predictions; add npy to --save")
        if not Path(args.align_to).expanduser().exists():
            raise InputError(f"--align-to {args.align_to} does not exist; give an anchors file or folder")
    if args.focal is not None and args.fov is not None:
        raise InputError("--focal and --fov both set; give one (focal length in pixels, or field of view in degrees)")
    bounds = [("focal", ">", 0, " pixels"), ("batch_size", ">=", 1, ""), ("processing_res", ">=", 0, " (0 = native)"),
              ("temporal_window", ">=", 1, " frame"), ("tile", ">=", 1, " px"), ("ply_stride", ">=", 1, ""),
              ("frame_stride", ">=", 1, ""), ("max_frames", ">=", 1, ""), ("ply_max_depth", ">", 0, "")]
    bounds += [(name, ">=", spec["min"], "") for name, (spec, _) in declared_options().items()
               if spec.get("min") is not None]
    for name, op, lo, unit in bounds:  # NaN fails every bound
        value = getattr(args, name, None)
        if value is not None and not (value > lo if op == ">" else value >= lo):
            raise InputError(f"--{name.replace('_', '-')} must be {op} {lo}{unit}, got {value}")
    if args.fov is not None and not 0 < args.fov < 180:
        raise InputError(f"--fov must be between 0 and 180 degrees, got {args.fov}")
    if args.tile_overlap is not None and (args.tile is None or not 0 <= args.tile_overlap < args.tile):
        raise InputError(f"--tile-overlap {args.tile_overlap} needs --tile SIZE and must be in [0, SIZE)")
    if args.ensemble_with:  # a folder of predictions or METHOD:CKPT, named before any model loads
        from ..ensemble import parse_spec

        parse_spec(args.ensemble_with)
    if getattr(args, "grayscale", False):
        args.cmap = "gray"
    if args.vmin is not None and args.vmax is not None and not args.vmin < args.vmax:
        raise InputError(f"--vmin {args.vmin} must be below --vmax {args.vmax}")
    if isinstance(args.percentiles, str):
        try:
            lo, hi = (float(x) for x in args.percentiles.split(","))
        except ValueError:
            raise InputError(f"--percentiles expects LO,HI (e.g. 2,98), got {args.percentiles!r}") from None
        if not 0 <= lo < hi <= 100:
            raise InputError(f"--percentiles needs 0 <= LO < HI <= 100, got {args.percentiles}")
        args.percentiles = (lo, hi)
    if args.start_frame < 0 or (args.end_frame is not None and args.end_frame <= args.start_frame):
        raise InputError(f"--start-frame {args.start_frame} / --end-frame {args.end_frame}: need 0 <= start < end")
    from ..utils import parse_device, parse_dtype

    parse_device(args.device)
    parse_dtype(args.dtype)
    return formats


def run(args: argparse.Namespace) -> int:
    from ..data.anchors import PNG_SCALES
    from ..jobs import predict

    formats = check_options(args)
    result = predict(
        args.inputs, args.out, method=args.method, checkpoint=args.checkpoint, formats=formats,
        options=method_options(args), overwrite=args.overwrite, device=args.device, dtype=args.dtype,
        processing_res=args.processing_res, batch_size=args.batch_size, tile=args.tile,
        tile_overlap=args.tile_overlap, workers=args.workers, caption=args.caption, ensemble_with=args.ensemble_with,
        fast=dict(channels_last=args.channels_last, compile=args.compile, cuda_graphs=args.cuda_graphs,
                  vae_tiling_above=args.vae_tiling_above, vae_slicing=args.vae_slicing),
        export=dict(focal=args.focal, fov=args.fov, cmap=args.cmap, vmin=args.vmin, vmax=args.vmax,
                    percentiles=args.percentiles, ply_stride=args.ply_stride, ply_max_depth=args.ply_max_depth),
        video=dict(start=args.start_frame, end=args.end_frame, stride=args.frame_stride, max_frames=args.max_frames,
                   temporal=args.temporal, temporal_window=args.temporal_window),
        align_to=args.align_to, align_out=args.align_out,
        align_options=dict(fit=args.align_fit, seed=args.align_seed, png_scale=PNG_SCALES[args.align_png_scale],
                           calib=args.align_calib))
    for line in result.messages:
        print(line, file=sys.stderr)
    return result.rc
