"""Predict jobs (what ``diffdepth predict`` calls): inputs (files, folders, globs, videos) ->
one job per input with an output path mirroring the inputs -> the outputs each still needs ->
model (+ ensemble) -> depth files; :func:`predict` runs the whole plan."""
from __future__ import annotations

import glob
import io
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .errors import InputError

#: video outputs (``formats`` name -> suffix of ``<out>/<rel>``)
VIDEO_OUTPUTS = {"mp4": "_depth.mp4", "npz": ".npz", "side": "_side.mp4"}
#: defaults of :func:`predict`'s ``export`` (:func:`~diffdepth.io.export.save_outputs`) and ``video``
#: (:func:`predict_video`) options
EXPORT = dict(focal=None, fov=None, cmap="spectral", vmin=None, vmax=None, percentiles=None, ply_stride=1,
              ply_max_depth=None)
VIDEO = dict(start=0, end=None, stride=1, max_frames=None, temporal="latent", temporal_window=8)


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
    with other settings or from an input (or K file) that has changed since, or unrecorded in ``index``
    (an :class:`~diffdepth.io.sidecar.OutputIndex`); all of them with ``overwrite``. Videos get mp4 + npz (+ side)."""
    from .io.export import output_path
    from .io.sidecar import input_stamp

    video_formats = ["mp4", "npz"] + (["side"] if "side" in formats else [])
    todo: List[Job] = []
    needs: Dict[Path, List[str]] = {}
    for job in jobs:
        base = out_root / job.rel
        if is_video(job):
            paths = {f: base.with_name(base.name + VIDEO_OUTPUTS[f]) for f in video_formats}
        else:
            paths = {f: output_path(base, f) for f in sorted(formats)}
        want = index.missing(job.rel.as_posix(), paths, paths, input_stamp(job.source))
        if overwrite:
            want = list(paths)
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
    export = dict(export or {})
    stats = {"images": 0, "videos": 0, "frames": 0, "seconds": 0.0}
    start = time.perf_counter()
    _run_images(pipe, [j for j in jobs if not is_video(j)], needs, out_root, index, failures, stats, ensemble, export)
    colour = {k: export[k] for k in ("cmap", "vmin", "vmax", "percentiles") if k in export}
    _run_videos(pipe, [j for j in jobs if is_video(j)], needs, out_root, index, failures, stats,
                {**colour, **(video or {})})
    stats["seconds"] = time.perf_counter() - start
    return stats


def _skip(failures: list, source: Path, err: Exception, say=print) -> None:
    failures.append((str(source), str(err)))
    say(skipped_text(source, err), file=sys.stderr)


def _run_images(pipe, images: List[Job], needs, out_root: Path, index, failures: list, stats: dict, ensemble,
                export: dict) -> None:
    from tqdm import tqdm

    from .errors import DiffdepthError
    from .io.export import output_path, save_outputs
    from .io.intrinsics import k_from_file
    from .io.sidecar import image_record

    written = {}  # input index -> (kind, save_outputs result, record), filled by the writer threads

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
        stream = pipe.process([j.source for j in images], write, catch=(DiffdepthError,),
                              on_error=lambda i, _, err: _skip(failures, images[i].source, err, bar.write))
        for item, err in stream:
            job = images[item.index]
            if err is not None:
                _skip(failures, job.source, err, bar.write)
                bar.update(1)
                continue
            kind, res, info = written.pop(item.index)  # the index and the summary are kept on this thread
            index.record(job.rel.as_posix(), [f for f in needs[job.rel] if f not in res.unavailable], kind, info)
            stats["images"] += 1
            if res.unavailable:
                stream.close()
                raise StopRun(f"--save {','.join(res.unavailable)}: this method gives no "
                              f"{' or '.join(res.unavailable)} ({_unavailable_hint(res.unavailable)}); "
                              f"drop it from --save")
            bar.update(1)


def _run_videos(pipe, videos: List[Job], needs, out_root: Path, index, failures: list, stats: dict,
                video: dict) -> None:
    from .errors import DiffdepthError
    from .io.sidecar import image_record

    for job in videos:
        try:
            kind, n = predict_video(pipe, job.source, out_root / job.rel, needs[job.rel], **video)
        except DiffdepthError as err:
            _skip(failures, job.source, err)
            continue
        base = job.rel.as_posix()
        info = image_record(kind, settings=index.settings, processing_res=pipe.processing_res,
                            source=job.source, outputs={f: base + VIDEO_OUTPUTS[f] for f in needs[job.rel]})
        index.record(base, needs[job.rel], kind, info)
        stats["videos"] += 1
        stats["frames"] += n


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


def check_method(method: str, options: Dict[str, object], formats, caption: Optional[str] = None) -> None:
    """Method options, outputs and a caption the method cannot take, named before its model is loaded."""
    from .registry import get_method

    cls = get_method(method).load_class()
    accepted = getattr(cls, "predict_options", None)
    unknown = sorted(set(options) - set(accepted)) if accepted is not None else []
    if unknown:
        allowed = ", ".join(sorted(set(accepted) - {"with_segmentation"})) or "none"
        flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise InputError(f"method {method} does not take {flags} (it takes: {allowed})")
    if hasattr(cls, "check_options"):  # values against their declared types, choices, minimums
        cls.check_options(options)
    seg = set(formats) & {"seg", "seg_ids"}
    if seg and accepted is not None and "with_segmentation" not in accepted:
        raise InputError(f"--save {','.join(sorted(seg))}: method {method} has no segmentation head (primedepth has one)")
    if "uncertainty" in formats and "ensemble_size" in (accepted or ()) and int(options.get("ensemble_size", 2)) < 2:
        raise InputError(f"--save uncertainty needs an ensemble of at least 2 members; "  # else told after an image
                         f"got --ensemble-size {options['ensemble_size']}")
    if caption is not None and options.get("prompt") is not None:
        raise InputError("--caption and --prompt both set the prompt; give one of them")
    if caption is not None and "prompt" not in (accepted or ()):
        raise InputError(f"--caption: {method} takes no prompt; captions are used by primedepth")


def run_settings(method: str, checkpoint, options: Dict[str, object], *, processing_res=None, dtype="fp32",
                 caption=None, temporal="latent", temporal_window=8, tile=None, tile_overlap=None,
                 vae_tiling_above=None, ensemble_with=None) -> dict:
    """What determines the predicted values of a run (recorded in predictions.json; a change recomputes)."""
    from .io.sidecar import checkpoint_identity

    opts = {k: v for k, v in options.items() if k != "with_segmentation"}
    opts.update(processing_res=processing_res, dtype=dtype)
    if caption:
        opts["caption"] = caption
    if temporal != "latent":  # videos: another temporal stage changes the values
        opts["temporal"] = [temporal, temporal_window]
    if tile:  # tiled inference changes the values
        opts["tile"] = [tile, tile_overlap if tile_overlap is not None else tile // 4]
    if vae_tiling_above:  # tiled VAE coding changes the values (blended seams)
        opts["vae_tiling_above"] = vae_tiling_above
    if ensemble_with:
        from .ensemble import parse_spec

        spec = parse_spec(ensemble_with)
        opts["ensemble_with"] = (str(spec[1].resolve()) if spec[0] == "folder"
                                 else f"{spec[1]}:{checkpoint_identity(str(spec[2])) if spec[2] else ''}")
    return {"method": method, "checkpoint": checkpoint_identity(str(checkpoint)), "options": opts}


def render_settings(export: dict, video: dict) -> Dict[str, dict]:
    """Per output format, the export options its file depends on (a change redraws only it)."""
    colour = {k: export[k] for k in ("cmap", "vmin", "vmax", "percentiles")}
    if str(colour["cmap"]).lower() == "turbo":  # the published 256-entry table, no longer the polynomial:
        colour["turbo"] = "table-256"  # turbo images drawn before are redrawn; other maps keep their ids
    frames = {"start": video["start"], "end": video["end"], "stride": video["stride"], "max": video["max_frames"]}
    cloud = {"focal": export["focal"], "fov": export["fov"], "stride": export["ply_stride"],
             "max_depth": export["ply_max_depth"]}
    return {"color": colour, "side": {**colour, **frames}, "mp4": {**colour, **frames}, "npz": frames,
            "ply": cloud, "points": cloud, "glb": {"focal": export["focal"], "fov": export["fov"]}}


def describe_change(old: dict, new: dict) -> str:
    """The run settings that differ, as ``name old -> new``."""
    a, b = old.get("options") or {}, new.get("options") or {}
    pairs = [(k, old.get(k), new.get(k)) for k in ("method", "checkpoint")]
    pairs += [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))]
    return ", ".join(f"{k} {x} -> {y}" for k, x, y in pairs if x != y) or "settings changed"


@dataclass
class PredictResult:
    """What :func:`predict` did: on the main process summed over all, with the summary ``messages``."""

    rc: int = 0
    kept: int = 0  # inputs whose outputs were all there already
    images: int = 0
    videos: int = 0
    frames: int = 0
    seconds: float = 0.0
    failures: List[Tuple[str, str]] = field(default_factory=list)
    messages: List[str] = field(default_factory=list)


def predict(inputs: List[str], out, *, method: Optional[str] = None, checkpoint=None,
            formats=("npy", "png16", "color"), options: Optional[dict] = None, overwrite: bool = False,
            device: str = "auto", dtype: str = "fp32", processing_res: Optional[int] = None, batch_size: int = 1,
            tile: Optional[int] = None, tile_overlap: Optional[int] = None, workers: int = 2,
            caption: Optional[str] = None, ensemble_with: Optional[str] = None, fast: Optional[dict] = None,
            export: Optional[dict] = None, video: Optional[dict] = None, align_to=None, align_out=None,
            align_options: Optional[dict] = None) -> PredictResult:
    """``diffdepth predict``: ``inputs`` -> this process's shard -> outputs missing in ``out`` -> model ->
    files -> one summary from every process; ``align_to`` anchors then give metric depth (``align_options``
    of :func:`~.io.aligned.align_folder`). ``fast``: :func:`~.fast.apply_fast_paths` switches; ``export``,
    ``video``: see :data:`EXPORT`, :data:`VIDEO`. Progress notes go to stderr as the run goes."""
    from . import distributed
    from .io.sidecar import OutputIndex
    from .registry import resolve_method

    formats, out_root, options = set(formats), Path(out).expanduser(), dict(options or {})
    export, video = {**EXPORT, **(export or {})}, {**VIDEO, **(video or {})}
    method, checkpoint = resolve_method(method, checkpoint)
    skipped: Dict[str, int] = {}
    jobs, failures = collect_inputs(inputs, out_root, skipped)
    for reason, count in sorted(skipped.items()) if distributed.is_main() else ():
        print(f"left out {count} file(s) of the input folders: {reason}", file=sys.stderr)
    unique = unique_jobs(jobs, failures)  # two inputs must never write the same files
    if align_to is not None and Path(align_to).expanduser().is_file() and len(unique) > 1:
        raise InputError(f"--align-to {align_to} is one anchors file for {len(unique)} inputs; give a folder "
                         f"of anchor files named like the outputs (<name>.npy|png|csv|bin)")
    mine = distributed.shard(unique)  # under torchrun/accelerate each process predicts its block
    caption = None if caption is not None and caption.lower() == "none" else caption
    check_method(method, options, formats, caption)
    if formats & {"seg", "seg_ids"}:
        options["with_segmentation"] = True
    settings = run_settings(method, checkpoint, options, processing_res=processing_res, dtype=dtype, caption=caption,
                            temporal=video["temporal"], temporal_window=video["temporal_window"], tile=tile,
                            tile_overlap=tile_overlap, vae_tiling_above=(fast or {}).get("vae_tiling_above"),
                            ensemble_with=ensemble_with)
    index = OutputIndex(out_root, settings, render=render_settings(export, video), writer=distributed.is_main())
    todo, needs = pending(mine, out_root, formats, index, overwrite)
    changed = index.settings_changed()
    stats = {"images": 0, "videos": 0, "frames": 0, "seconds": 0.0}
    if todo:
        if any(is_video(j) for j in todo):
            _video_notes(formats, ensemble_with, method)
        try:
            pipe, ensemble = build_pipeline(method, checkpoint, options, formats, device=device, dtype=dtype,
                                            fast=fast, caption=caption, ensemble_with=ensemble_with, workers=workers,
                                            processing_res=processing_res, batch_size=batch_size, tile=tile,
                                            tile_overlap=tile_overlap)
            stats = run_jobs(pipe, todo, needs, out_root, index, failures, ensemble=ensemble, export=export,
                             video=video)
        finally:
            index.flush()
    # one summary for all processes (under torchrun/accelerate each handled its shard)
    images = [j.rel.as_posix() for j in mine if not is_video(j)]
    per_rank = distributed.gather_objects((len(mine) - len(todo), bool(todo), stats, failures, index.new, images))
    if not distributed.is_main():
        return PredictResult(rc=1 if failures else 0, kept=len(mine) - len(todo), failures=failures, **stats)
    index.merge([r[4] for r in per_rank[1:]])
    index.flush()
    change = describe_change(changed, index.settings) if changed is not None else None
    res = _summary(per_rank, out_root, None if overwrite else change)
    if align_to is not None:
        res.rc = max(res.rc, _align_outputs(out_root, [j for r in per_rank for j in r[5]], align_to, align_out,
                                            align_options or {}, res.messages))
    return res


def _video_notes(formats: set, ensemble_with: Optional[str], method: str) -> None:
    """What of the request videos do not get (said once, before the run)."""
    ignored = sorted(formats & {"png16", "ply", "points", "glb", "uncertainty", "seg", "seg_ids"})
    if ignored:
        print(f"note: --save {','.join(ignored)} applies to images only; videos get NAME_depth.mp4, "
              f"NAME.npz (and NAME_side.mp4 with side)", file=sys.stderr)
    if ensemble_with:
        print(f"note: --ensemble-with applies to images only; videos are predicted by {method} alone",
              file=sys.stderr)


def _summary(per_rank: list, out_root: Path, change: Optional[str]) -> PredictResult:
    """The processes' ``(kept, ran, stats, failures, records, images)`` summed, with the user's summary
    (``change``: the settings that differ from the folder's record; None with ``--overwrite``)."""
    total = {k: sum(r[2][k] for r in per_rank) for k in ("images", "videos", "frames")}
    res = PredictResult(kept=sum(r[0] for r in per_rank), failures=[f for r in per_rank for f in r[3]],
                        seconds=max(r[2]["seconds"] for r in per_rank), **total)
    say = res.messages.append
    if change is not None and any(r[1] for r in per_rank):
        say(f"{out_root} holds outputs made with other settings ({change}); recomputed them")
    if res.kept:  # never with --overwrite
        say(f"{res.kept} input(s) already have all outputs in {out_root} (use --overwrite to redo)")
    if res.images or res.videos:
        rate = ([f"{res.images} image(s)"] if res.images else []) + (
            [f"{res.videos} video(s), {res.frames} frames"] if res.videos else [])
        n = res.images + res.frames
        say(f"wrote depth for {' and '.join(rate)} to {out_root} in {res.seconds:.1f} s "
            f"({n / max(res.seconds, 1e-9):.2f} {'frames' if res.frames else 'img'}/s)")
    if res.failures:
        res.rc = 1
        say(f"{len(res.failures)} input(s) failed:")
        res.messages += [f"  {reason}" if source in reason else f"  {source}: {reason}"
                         for source, reason in res.failures]
    return res


def _align_outputs(out_root: Path, names: List[str], align_to, align_out, options: dict, messages: list) -> int:
    """``--align-to``: the images' .npy predictions (new or kept) -> metric depth in ``align_out``."""
    from .io.aligned import align_folder, print_report

    names = sorted({n for n in names if (out_root / f"{n}.npy").is_file()})
    if not names:
        messages.append("--align-to: no image prediction to align")
        return 1
    align_out = Path(align_out).expanduser() if align_out else out_root / "metric"
    text = io.StringIO()
    rc = print_report(align_folder(out_root, align_to, align_out, names=names, **options), align_out, text)
    messages += text.getvalue().splitlines()
    return rc
