"""Predict jobs (what ``diffdepth predict`` calls): inputs (files, folders, globs, videos) ->
one job per input with an output path mirroring the inputs -> the outputs each still needs ->
model (+ ensemble) -> depth files."""
from __future__ import annotations

import glob
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .errors import InputError

#: video outputs (``formats`` name -> suffix of ``<out>/<rel>``)
VIDEO_OUTPUTS = {"mp4": "_depth.mp4", "npz": ".npz", "side": "_side.mp4"}


@dataclass
class Job:
    source: Path
    rel: Path  # output path relative to the output folder, without suffix


def is_video(job: Job) -> bool:
    from .io import VIDEO_EXTENSIONS

    return job.source.suffix.lower() in VIDEO_EXTENSIONS


def _split_glob(pattern: str) -> Path:
    """The non-magic leading directory of a glob pattern."""
    base = []
    for part in Path(pattern).parts:
        if glob.has_magic(part):
            break
        base.append(part)
    return Path(*base) if base else Path(".")


def collect_inputs(inputs: List[str], out_root: Optional[Path] = None,
                   skipped: Optional[Dict[str, int]] = None) -> Tuple[List[Job], List[Tuple[str, str]]]:
    """Expand files, folders and globs into jobs with output paths mirroring the inputs.

    Folders and globs never yield files of an output folder (``out_root``, or any folder
    holding a ``predictions.json``) nor ground-truth maps (``X_depth.png`` beside ``X.png``);
    ``skipped`` counts what was left out and why.
    """
    from .io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
    from .io.sidecar import excluded_input

    jobs: List[Job] = []
    failures: List[Tuple[str, str]] = []
    known = tuple(IMAGE_EXTENSIONS) + tuple(VIDEO_EXTENSIONS)
    skipped = skipped if skipped is not None else {}
    cache: Dict[Path, bool] = {}

    def keep(f: Path) -> bool:
        reason = excluded_input(f, out_root, cache)
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
        return reason is None

    for text in inputs:
        path = Path(text).expanduser()
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in known
                           and not any(part.startswith(".") for part in f.relative_to(path).parts))
            if not found:
                failures.append((text, "folder holds no image or video files"))
            kept = [f for f in found if keep(f)]
            if found and not kept:
                failures.append((text, "folder holds only outputs of diffdepth (predictions.json) or ground-truth maps"))
            jobs += [Job(f, f.relative_to(path).with_suffix("")) for f in kept]
        elif path.is_file():
            jobs.append(Job(path, Path(path.stem)))
        elif glob.has_magic(text):
            base = _split_glob(text)
            found = sorted(Path(f) for f in glob.glob(text, recursive=True) if Path(f).is_file())
            found = [f for f in found if f.suffix.lower() not in known or keep(f)]
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


def safe_rel(rel: Path) -> Path:
    """Strip anything that could leave the output folder (absolute parts, '..')."""
    parts = [p for p in rel.parts if p not in ("", ".", "..", "/") and not Path(p).is_absolute()]
    return Path(*parts) if parts else Path("output")


def unique_jobs(jobs: List[Job], failures: List[Tuple[str, str]]) -> List[Job]:
    """Jobs with safe, unique output names: the same file named twice is one job; two inputs that
    would write the same files keep the first and add a failure for the other."""
    seen: Dict[Path, Path] = {}
    unique: List[Job] = []
    for job in jobs:
        job.rel = safe_rel(job.rel)
        if job.rel in seen:
            if seen[job.rel].resolve() != job.source.resolve():
                failures.append((str(job.source), f"its outputs would collide with those of {seen[job.rel]}; "
                                                  f"predict it separately"))
            continue
        seen[job.rel] = job.source
        unique.append(job)
    return unique


def pending(jobs: List[Job], out_root: Path, formats, index, overwrite: bool = False
            ) -> Tuple[List[Job], Dict[Path, List[str]]]:
    """The jobs that still need outputs and, per output name, which: missing files, files made
    with other settings or unrecorded in ``index`` (an :class:`~diffdepth.io.sidecar.OutputIndex`);
    all of them with ``overwrite``. Videos get mp4 + npz (+ side)."""
    from .io.export import output_path

    video_formats = ["mp4", "npz"] + (["side"] if "side" in formats else [])
    todo: List[Job] = []
    needs: Dict[Path, List[str]] = {}
    for job in jobs:
        base = out_root / job.rel
        if is_video(job):
            paths = {f: base.with_name(base.name + VIDEO_OUTPUTS[f]) for f in video_formats}
        else:
            paths = {f: output_path(base, f) for f in sorted(formats)}
        want = list(paths) if overwrite else index.missing(job.rel.as_posix(), paths, paths)
        if want:
            needs[job.rel] = want
            todo.append(job)
    return todo, needs


def build_pipeline(method: str, checkpoint, options: dict, formats=(), *, device: str = "auto", dtype: str = "fp32",
                   fast: Optional[dict] = None, caption: Optional[str] = None, ensemble_with: Optional[str] = None,
                   workers: int = 2, **pipeline_args):
    """Load the model (+ captioner, ``fast`` paths of :func:`diffdepth.fast.apply_fast_paths`) into a
    :class:`~diffdepth.pipeline.DepthPipeline`; returns it and the :class:`~diffdepth.ensemble.Ensembler`
    of ``ensemble_with`` (None without)."""
    from .fast import apply_fast_paths
    from .pipeline import DepthPipeline
    from .registry import load_model

    model = load_model(method, checkpoint, device=device, dtype=dtype)
    if "uncertainty" in formats and "ensemble_size" in model.predict_options and "ensemble_size" not in options:
        members = int((getattr(model, "config", None) or {}).get("default_ensemble_size", 1))
        preset = getattr(model, "presets", {}).get(options.get("preset"))
        if preset is not None:
            members = int(preset[1].get("ensemble_size", members))
        if members < 2:  # uncertainty needs an ensemble: from the flags, a preset or the checkpoint
            source = f"--preset {options['preset']}" if preset is not None else "this checkpoint"
            raise InputError(f"--save uncertainty needs an ensemble; {source} predicts {members} member(s) "
                             f"by default — add --ensemble-size N (N >= 2)")
    captioner = None
    if caption is not None:
        from .backbone.captions import load_captioner

        captioner = load_captioner(caption, device=device)
    apply_fast_paths(model, dtype=dtype, **(fast or {}))
    ensemble = None
    if ensemble_with:
        from .ensemble import Ensembler

        ensemble = Ensembler(ensemble_with, device=device, dtype=dtype)
    # a second model runs inside write(): keep it on this thread (workers = 0), one call at a time
    workers = 0 if ensemble is not None and ensemble.pipe is not None else workers
    pipe = DepthPipeline(model, captioner=captioner, workers=workers, **pipeline_args, **options)
    return pipe, ensemble


class StopRun(InputError):
    """An error that is the same for every input: the run stops instead of failing each."""


def skipped_text(source: Path, err: Exception) -> str:
    """``skipped SOURCE: message``, naming the path once when the message already does."""
    text = str(err)
    return f"skipped: {text}" if str(source) in text else f"skipped {source}: {text}"


def _unavailable_hint(names: List[str]) -> str:
    hints = {"uncertainty": "uncertainty comes from an ensemble: marigold/metricgold with --ensemble-size N >= 2",
             "seg": "seg needs a method with a segmentation head, e.g. primedepth"}
    return "; ".join(hints[n] for n in names if n in hints)


def run_jobs(pipe, jobs: List[Job], needs: Dict[Path, List[str]], out_root: Path, index, failures: list, *,
             ensemble=None, export: Optional[dict] = None, video: Optional[dict] = None) -> dict:
    """Predict ``jobs`` (images through the pipeline's reader/writer threads, then videos), write the
    outputs ``needs`` names with ``export`` (:func:`~diffdepth.io.export.save_outputs` options) and
    ``video`` (:func:`predict_video` options), record them in ``index``, append ``(source, reason)`` to
    ``failures``; returns counts (images, videos, frames, seconds)."""
    from tqdm import tqdm

    from .errors import DiffdepthError
    from .io.export import output_path, save_outputs
    from .io.intrinsics import k_from_file
    from .io.sidecar import image_record

    export = dict(export or {})
    colour = {k: export[k] for k in ("cmap", "vmin", "vmax", "percentiles") if k in export}
    images = [j for j in jobs if not is_video(j)]
    videos = [j for j in jobs if is_video(j)]
    stats = {"images": 0, "videos": 0, "frames": 0, "seconds": 0.0}
    start = time.perf_counter()

    def on_error(index_, source, err):
        failures.append((str(images[index_].source), str(err)))
        bar.write(skipped_text(images[index_].source, err), file=sys.stderr)

    written = {}  # input index -> (kind, save_outputs result), filled by the writer threads

    def write(item, pred):  # runs on the pipeline's writer threads (each input writes its own files)
        job = images[item.index]
        if ensemble is not None:
            pred = ensemble(pred, rel=job.rel, image=item.rgb)
        meta = item.meta
        size = (meta.width, meta.height) if meta is not None else None
        K_file = K_src = None
        if export.get("focal") is None and export.get("fov") is None:  # flags win; else NAME_K.txt, folder, EXIF
            K_file, K_src = k_from_file(job.source, size or pred.depth.shape[-2:][::-1])
        res = save_outputs(out_root / job.rel, pred, item.rgb, needs[job.rel], overwrite=True,
                           exif_focal_px=getattr(meta, "focal_px", None),
                           exif_source=getattr(meta, "focal_source", None), K_file=K_file, K_file_source=K_src,
                           K_file_size=size, **export)
        res_shape = tuple(int(x) for x in pred.depth.shape[-2:])
        info = image_record(pred.kind, settings=index.settings, valid_range=res.valid_range, size=res_shape,
                            K=res.K, K_source=res.K_source, processing_res=pipe.processing_res, source=job.source,
                            outputs={f: output_path(job.rel, f).as_posix() for f in needs[job.rel]
                                     if f not in res.unavailable})
        written[item.index] = (pred.kind, res, info)

    with tqdm(total=len(images), unit="img", desc="predict", disable=None, file=sys.stderr) as bar:
        stream = pipe.process([j.source for j in images], write, on_error=on_error, catch=(DiffdepthError,))
        for item, err in stream:
            job = images[item.index]
            if err is None:  # the index and the summary are kept on this thread
                kind, res, info = written.pop(item.index)
                index.record(job.rel.as_posix(), [f for f in needs[job.rel] if f not in res.unavailable], kind, info)
                stats["images"] += 1
                if res.unavailable:
                    stream.close()
                    raise StopRun(f"--save {','.join(res.unavailable)}: this method gives no "
                                  f"{' or '.join(res.unavailable)} ({_unavailable_hint(res.unavailable)}); "
                                  f"drop it from --save")
            else:
                failures.append((str(job.source), str(err)))
                bar.write(skipped_text(job.source, err), file=sys.stderr)
            bar.update(1)
    for job in videos:
        try:
            kind, n = predict_video(pipe, job.source, out_root / job.rel, needs[job.rel], **colour, **(video or {}))
            base = job.rel.as_posix()
            info = image_record(kind, settings=index.settings, processing_res=pipe.processing_res,
                                source=job.source, outputs={f: base + VIDEO_OUTPUTS[f] for f in needs[job.rel]})
            index.record(base, needs[job.rel], kind, info)
            stats["videos"] += 1
            stats["frames"] += n
        except DiffdepthError as err:
            failures.append((str(job.source), str(err)))
            print(skipped_text(job.source, err), file=sys.stderr)
    stats["seconds"] = time.perf_counter() - start
    return stats


def predict_video(pipe, source: Path, base: Path, formats=("mp4", "npz"), *, start: int = 0,
                  end: Optional[int] = None, stride: int = 1, max_frames: Optional[int] = None,
                  temporal: str = "latent", temporal_window: int = 8, cmap: str = "spectral",
                  vmin: Optional[float] = None, vmax: Optional[float] = None,
                  percentiles: Optional[Tuple[float, float]] = None) -> Tuple[str, int]:
    """Frames in order through the method's temporal hook -> colourised ``<base>_depth.mp4`` +
    per-frame ``<base>.npz`` (+ ``<base>_side.mp4``, RGB beside depth, with ``side``); returns the
    kind and the frame count.

    Memory stays flat with the clip's length: each frame's depth is streamed to a temporary
    float32 file next to the outputs (:class:`~diffdepth.io.video.DepthSpool`). The colour
    range is shared by all frames (no flicker), so a second pass reads the depth back one frame
    at a time to write the videos and the .npz; ``side`` decodes the video again for the RGB.
    """
    from tqdm import tqdm

    from .io.video import (DepthSpool, iter_video_frames, save_depth_video, save_npz_frames, select_frames,
                           selected_count, video_depth_range, video_info)

    fps, n, _, _ = video_info(source)
    pick = dict(start=start, end=end, stride=stride, max_frames=max_frames)
    n = selected_count(n, **pick)
    fps = fps / stride
    kind = None
    with DepthSpool(base) as spool:
        stream = pipe.video(select_frames(iter_video_frames(source), **pick), temporal=temporal,
                            temporal_window=temporal_window)
        for pred in tqdm(stream, total=n, unit="frame", desc=source.name, disable=None, file=sys.stderr):
            kind = pred.kind
            spool.append(pred.depth)
        if not spool.count:
            raise InputError(f"{source}: no frames (the video is empty or --start-frame is past its end)")
        depths = spool.frames()
        rng = None
        if vmin is not None or vmax is not None or percentiles is not None:
            auto = video_depth_range(depths, kind, percentiles=percentiles)
            rng = (vmin if vmin is not None else auto[0], vmax if vmax is not None else auto[1])
        elif "mp4" in formats or "side" in formats:
            rng = video_depth_range(depths, kind)  # once for both videos
        if "mp4" in formats:
            save_depth_video(base.with_name(base.name + "_depth.mp4"), depths, kind, fps, cmap=cmap, value_range=rng)
        if "side" in formats:
            import numpy as np

            rgbs = (np.round(f * 255).astype(np.uint8) for f in select_frames(iter_video_frames(source), **pick))
            save_depth_video(base.with_name(base.name + "_side.mp4"), depths, kind, fps, cmap=cmap,
                             rgb_frames=rgbs, value_range=rng)
        if "npz" in formats:
            save_npz_frames(base.with_name(base.name + ".npz"), depths, kind, fps)
        return kind, spool.count
