"""``diffdepth predict``: images, folders, globs and videos -> depth files."""
from __future__ import annotations

import argparse
import glob
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

from ..errors import InputError

HELP = "predict depth for images, folders (recursive), globs or videos"

# CLI flag -> predict option name (the method says which it accepts)
METHOD_OPTIONS = ("steps", "ensemble_size", "seed", "prompt", "reduction", "flip", "scale", "timestep_spacing")


def add_method_options(p: argparse.ArgumentParser):
    """The method-option flags shared by ``predict`` and ``eval``; returns their group."""
    g = p.add_argument_group("method options (only those the method accepts)")
    g.add_argument("--steps", type=int, default=None, help="denoising steps (marigold/metricgold)")
    g.add_argument("--ensemble-size", type=int, default=None, help="ensemble members (marigold/metricgold)")
    g.add_argument("--seed", type=int, default=None, help="random seed for noise")
    g.add_argument("--prompt", default=None, help="text prompt (primedepth; default empty)")
    g.add_argument("--reduction", default=None, choices=["median", "mean"], help="ensemble reduction")
    g.add_argument("--timestep-spacing", default=None, choices=["leading", "trailing"], help="DDIM spacing")
    g.add_argument("--flip", action="store_true", default=None, help="test-time horizontal flip averaging")
    g.add_argument("--scale", type=float, default=None, help="multiply relative depth by a known factor (diffsql)")
    g.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="any other method option (YAML-typed value); repeatable")
    return g


def method_options(args: argparse.Namespace) -> Dict[str, object]:
    """The method options the user set (flags + ``--opt``), for ``DepthPipeline``."""
    options = {name: getattr(args, name) for name in METHOD_OPTIONS if getattr(args, name) is not None}
    options.update(_parse_opts(args.opt))
    return options


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image/video files, folders (searched recursively) or globs")
    p.add_argument("--method", default=None, help="method id (default: from the checkpoint, else marigold); see `diffdepth info`")
    p.add_argument("--checkpoint", default=None, help="local folder or hub id (default: the method's published weights)")
    p.add_argument("--out", default="depth_out", help="output folder; the tree mirrors the inputs (default: depth_out)")
    p.add_argument("--save", default="npy,png16,color",
                   help="comma list of npy,png16,color,side,ply,uncertainty,seg (default: npy,png16,color)")
    p.add_argument("--processing-res", type=int, default=None,
                   help="long side the model sees (default: the method's; 0 = native size)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N|mps")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: keep them)")
    p.add_argument("--workers", type=int, default=2,
                   help="reader and writer threads that decode/resize inputs and write outputs while the model "
                        "runs (default 2; 0 = one input after another)")
    add_fast_path_options(p)
    g = add_method_options(p)
    g.add_argument("--ensemble-with", default=None, metavar="DIR",
                   help="average (aligned disparities) with another model's .npy predictions at the same relative paths")
    e = p.add_argument_group("export")
    e.add_argument("--focal", type=float, default=None, help="focal length in pixels for the PLY point cloud")
    e.add_argument("--fov", type=float, default=None, help="horizontal field of view in degrees for the PLY")
    e.add_argument("--cmap", default="Spectral", help="colour map for color/side outputs (Spectral, turbo, inferno, gray)")


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


def apply_fast_path_options(model, args: argparse.Namespace):
    from ..fast import apply_fast_paths

    return apply_fast_paths(model, dtype=args.dtype, channels_last=args.channels_last, compile=args.compile,
                            cuda_graphs=args.cuda_graphs, vae_tiling_above=args.vae_tiling_above,
                            vae_slicing=args.vae_slicing)


@dataclass
class Job:
    source: Path
    rel: Path  # output path relative to --out, without suffix


def _split_glob(pattern: str) -> Path:
    """The non-magic leading directory of a glob pattern."""
    parts = Path(pattern).parts
    base = []
    for part in parts:
        if glob.has_magic(part):
            break
        base.append(part)
    return Path(*base) if base else Path(".")


def collect_inputs(inputs: List[str]) -> Tuple[List[Job], List[Tuple[str, str]]]:
    """Expand files, folders and globs into jobs with output paths mirroring the inputs."""
    from ..io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

    jobs: List[Job] = []
    failures: List[Tuple[str, str]] = []
    known = tuple(IMAGE_EXTENSIONS) + tuple(VIDEO_EXTENSIONS)
    for text in inputs:
        path = Path(text).expanduser()
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in known
                           and not any(part.startswith(".") for part in f.relative_to(path).parts))
            if not found:
                failures.append((text, "folder holds no image or video files"))
            jobs += [Job(f, f.relative_to(path).with_suffix("")) for f in found]
        elif path.is_file():
            jobs.append(Job(path, Path(path.stem)))
        elif glob.has_magic(text):
            base = _split_glob(text)
            found = sorted(Path(f) for f in glob.glob(text, recursive=True) if Path(f).is_file())
            if not found:
                failures.append((text, "pattern matches no file"))
            for f in found:
                try:
                    rel = f.relative_to(base)
                except ValueError:
                    rel = Path(f.name)
                jobs.append(Job(f, rel.with_suffix("")))
        else:
            failures.append((text, "no such file or folder"))
    return jobs, failures


def _safe_rel(rel: Path) -> Path:
    """Strip anything that could leave the output folder (absolute parts, '..')."""
    parts = [p for p in rel.parts if p not in ("", ".", "..", "/") and not Path(p).is_absolute()]
    return Path(*parts) if parts else Path("output")


def _parse_opts(items: List[str]) -> Dict[str, object]:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--opt expects KEY=VALUE, got {item!r}")
        out[key.replace("-", "_")] = yaml.safe_load(value)
    return out


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .. import distributed
    from ..errors import DiffdepthError
    from ..io import VIDEO_EXTENSIONS
    from ..io.export import parse_formats, output_path, save_outputs
    from ..pipeline import DepthPipeline
    from ..registry import load_model

    formats = parse_formats(args.save)
    out_root = Path(args.out).expanduser()
    jobs, failures = collect_inputs(args.inputs)
    # unique output names: two inputs must never write the same files
    seen: Dict[Path, Path] = {}
    unique: List[Job] = []
    for job in jobs:
        job.rel = _safe_rel(job.rel)
        if job.rel in seen:
            failures.append((str(job.source), f"its outputs would collide with those of {seen[job.rel]}; predict it separately"))
            continue
        seen[job.rel] = job.source
        unique.append(job)
    jobs = distributed.shard(unique)

    options = method_options(args)
    if "seg" in formats:
        options["with_segmentation"] = True

    if not args.overwrite:  # outputs all present: nothing to compute
        todo = []
        for job in jobs:
            base = out_root / job.rel
            is_video = job.source.suffix.lower() in VIDEO_EXTENSIONS
            wanted = [base.with_name(base.name + "_depth.mp4"), base.with_name(base.name + ".npz")] if is_video else \
                [output_path(base, f) for f in formats if f not in ("uncertainty", "seg")]
            if wanted and all(p.exists() for p in wanted):
                continue
            todo.append(job)
        kept = len(jobs) - len(todo)
        if kept:
            print(f"{kept} input(s) already have all outputs in {out_root} (use --overwrite to redo)", file=sys.stderr)
        jobs = todo

    if not jobs:
        return _finish(failures, 0)

    model = load_model(args.method, args.checkpoint, device=args.device, dtype=args.dtype)
    apply_fast_path_options(model, args)
    pipe = DepthPipeline(model, processing_res=args.processing_res, batch_size=args.batch_size,
                         workers=args.workers, **options)
    ensemble = _external_ensembler(args.ensemble_with) if args.ensemble_with else None

    images = [j for j in jobs if j.source.suffix.lower() not in VIDEO_EXTENSIONS]
    videos = [j for j in jobs if j.source.suffix.lower() in VIDEO_EXTENSIONS]
    done = 0
    start = time.perf_counter()

    def on_error(index, source, err):
        failures.append((str(images[index].source), str(err)))
        bar.write(f"skipped {images[index].source}: {err}")

    def write(item, pred):  # runs on the pipeline's writer threads
        job = images[item.index]
        if ensemble is not None:
            pred = ensemble(job.rel, pred)
        save_outputs(out_root / job.rel, pred, item.rgb, formats, overwrite=args.overwrite,
                     focal=args.focal, fov=args.fov, exif_focal_px=getattr(item.meta, "focal_px", None),
                     cmap=args.cmap)

    with tqdm(total=len(images), unit="img", desc="predict", disable=None, file=sys.stderr) as bar:
        for item, err in pipe.process([j.source for j in images], write, on_error=on_error, catch=(DiffdepthError,)):
            job = images[item.index]
            if err is None:
                done += 1
            else:
                failures.append((str(job.source), str(err)))
                bar.write(f"skipped {job.source}: {err}")
            bar.update(1)
    for job in videos:
        try:
            _predict_video(pipe, job, out_root, args)
            done += 1
        except DiffdepthError as err:
            failures.append((str(job.source), str(err)))
            print(f"skipped {job.source}: {err}", file=sys.stderr)
    elapsed = time.perf_counter() - start
    if done:
        print(f"wrote depth for {done} input(s) to {out_root} in {elapsed:.1f} s ({done / max(elapsed, 1e-9):.2f} img/s)",
              file=sys.stderr)
    return _finish(failures, done)


def _finish(failures, done) -> int:
    if failures:
        print(f"{len(failures)} input(s) failed:", file=sys.stderr)
        for source, reason in failures:
            print(f"  {source}: {reason}", file=sys.stderr)
        return 1
    return 0


def _predict_video(pipe, job: Job, out_root: Path, args) -> None:
    """Frames in order through the method's temporal hook -> colourised mp4 + per-frame .npz.

    The colour range is shared by all frames (no flicker), so frames are coloured at the end.
    """
    import numpy as np
    from tqdm import tqdm

    from ..io.video import iter_video_frames, save_depth_video, save_npz_frames, video_info

    fps, n, _, _ = video_info(job.source)
    base = out_root / job.rel
    depths, kind = [], None
    for pred in tqdm(pipe.video(iter_video_frames(job.source)), total=n, unit="frame",
                     desc=job.source.name, disable=None, file=sys.stderr):
        kind = pred.kind
        depths.append(pred.depth)
    if not depths:
        raise InputError(f"{job.source}: the video has no frames")
    save_depth_video(base.with_name(base.name + "_depth.mp4"), depths, kind, fps, cmap=args.cmap)
    save_npz_frames(base.with_name(base.name + ".npz"), np.stack(depths), kind, fps)


def _external_ensembler(folder: str):
    """Average our disparity with another model's prediction at the same relative path.

    PrimeDepth's paper averages its disparity with Depth Anything's; the external map is
    inverted if its ``kind.txt`` says depth, aligned to ours by least squares, then averaged.
    """
    from ..methods.primedepth.ensemble import ensemble_with, external_kind_of, find_external, read_external
    from ..types import AFFINE_DISPARITY, DepthPrediction

    root = Path(folder).expanduser()
    kind = external_kind_of(root)

    def apply(rel: Path, pred):
        if pred.kind != AFFINE_DISPARITY:
            raise InputError(f"--ensemble-with averages affine-invariant disparities; this method gives {pred.kind}")
        external = read_external(find_external(root, str(rel)))
        return DepthPrediction(ensemble_with(pred.depth, external, kind), pred.kind, pred.uncertainty, pred.extras)

    if not root.is_dir():
        raise InputError(f"--ensemble-with {folder}: no such folder")
    return apply
