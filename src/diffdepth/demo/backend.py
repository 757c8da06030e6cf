"""What the demo's callbacks call: a model cache, one prediction through :class:`DepthPipeline`,
and the exports through :mod:`diffdepth.io` — the same code ``diffdepth predict`` runs.

Nothing here imports gradio, so it can be tested (and reused) without it.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import DiffdepthError, InputError

log = logging.getLogger(__name__)

#: the name a pasted image (no file name of its own) has in messages and downloads
PASTED_NAME = "pasted.png"


@dataclass(frozen=True)
class Choice:
    """A model the user can pick: ``method`` (None: detected from the checkpoint) and ``checkpoint``
    (None: the method's published weights)."""

    method: Optional[str]
    checkpoint: Optional[str]

    @property
    def label(self) -> str:
        if self.checkpoint is None:
            return f"{self.method} (published weights)"
        return f"{self.method or 'auto'} @ {self.checkpoint}"


def parse_choices(methods: Sequence[str], checkpoints: Sequence[str]) -> List[Choice]:
    """Pair repeated ``--method``/``--checkpoint`` flags: equal counts pair up in order, one method
    applies to every checkpoint, no method means "detect from the checkpoint"."""
    methods, checkpoints = list(methods or []), list(checkpoints or [])
    if not checkpoints:
        return [Choice(m, None) for m in methods]
    if len(methods) == len(checkpoints):
        return [Choice(m, c) for m, c in zip(methods, checkpoints)]
    if len(methods) <= 1:
        m = methods[0] if methods else None
        return [Choice(m, c) for c in checkpoints]
    raise InputError(f"got {len(methods)} --method and {len(checkpoints)} --checkpoint flags; give one --method "
                     "for all checkpoints, or one per checkpoint in the same order")


@dataclass
class ImageResult:
    """One image's prediction and the files written for it."""

    rgb_u8: np.ndarray  # [H,W,3] the input as the model's pipeline read it
    color_u8: np.ndarray  # [H,W,3] colourised depth
    kind: str
    files: Dict[str, Path]  # format name (npy, png16, ply, uncertainty, glb) -> path
    png16_encoding: str
    intrinsics: str  # where the PLY's K came from
    uncertainty_u8: Optional[np.ndarray] = None  # [H,W] min-max scaled for display
    ignored_options: List[str] = field(default_factory=list)

    @property
    def size(self) -> Tuple[int, int]:
        return self.color_u8.shape[1], self.color_u8.shape[0]


class DemoBackend:
    """Loads each (method, checkpoint) once and keeps it; runs one image at a time per model."""

    def __init__(self, choices: Sequence[Choice] = (), device: str = "auto", dtype: str = "fp32",
                 work_dir: Optional[str] = None):
        self.choices = list(choices)
        self.device = device
        self.dtype = dtype
        self._models: Dict[Tuple[Optional[str], Optional[str]], Any] = {}
        self._lock = threading.Lock()
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="diffdepth-demo-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ models
    def model(self, method: Optional[str], checkpoint: Optional[str]):
        from ..registry import load_model

        key = (method or None, checkpoint or None)
        with self._lock:  # one load at a time; a cached model is returned at once
            if key not in self._models:
                log.info("loading %s", Choice(*key).label)
                self._models[key] = load_model(key[0], key[1], device=self.device, dtype=self.dtype)
            return self._models[key]

    def preload(self) -> None:
        for c in self.choices:
            self.model(c.method, c.checkpoint)

    # ------------------------------------------------------------------ images
    def predict_image(self, path: Union[str, np.ndarray, None], method: Optional[str], checkpoint: Optional[str],
                      options: Optional[Dict[str, Any]] = None, processing_res: Optional[int] = None,
                      cmap: str = "Spectral", focal: Optional[float] = None, fov: Optional[float] = None,
                      display_name: Optional[str] = None) -> ImageResult:
        """Predict one image file (or a pasted image: an ``[H,W,3]`` array, named ``pasted.png``)
        and export ``.npy``, 16-bit PNG and PLY (plus the uncertainty when the method gives one).
        Raises :class:`DiffdepthError` with a one-line message."""
        from ..io.export import PNG16_KEY, colorize, output_path, save_outputs
        from ..pipeline import DepthPipeline

        pasted = isinstance(path, np.ndarray)
        if not pasted and not path:
            raise InputError("no image uploaded — choose an image file or paste one first")
        name = display_name or (PASTED_NAME if pasted else Path(path).name)
        model = self.model(method, checkpoint)
        options = {k: v for k, v in (options or {}).items() if v is not None and v is not False}
        accepted = set(model.predict_options)
        ignored = sorted(k for k in options if k not in accepted)
        options = {k: v for k, v in options.items() if k in accepted}
        pipe = DepthPipeline(model, processing_res=processing_res, **options)
        try:
            item, pred = next(pipe.iter_predictions([path], names=[name]))
        except InputError as err:  # the reader names the upload's temporary path: show the file name
            raise InputError(str(err) if pasted else str(err).replace(str(path), name)) from None

        out = Path(tempfile.mkdtemp(prefix="run-", dir=self.work_dir))
        base = out / (Path(name).stem or "image")
        formats = {"npy", "png16", "ply", "glb"} | ({"uncertainty"} if pred.uncertainty is not None else set())
        res = save_outputs(base, pred, item.rgb, formats, overwrite=True, focal=focal, fov=fov,
                           exif_focal_px=getattr(item.meta, "focal_px", None), cmap=cmap)
        by_format = {f: output_path(base, f) for f in formats}
        from PIL import Image

        with Image.open(by_format["png16"]) as im:
            encoding = im.text.get(PNG16_KEY, "")
        unc = None
        if pred.uncertainty is not None:
            u = np.nan_to_num(np.asarray(pred.uncertainty, dtype=np.float64))
            span = float(u.max() - u.min())
            unc = np.round((u - u.min()) / span * 255.0).astype(np.uint8) if span > 0 else np.zeros(u.shape, np.uint8)
        return ImageResult(rgb_u8=np.round(item.rgb * 255.0).astype(np.uint8),
                           color_u8=colorize(pred.depth, pred.kind, cmap), kind=pred.kind, files=by_format,
                           png16_encoding=encoding, intrinsics=res.K_source, uncertainty_u8=unc,
                           ignored_options=ignored)

    # ------------------------------------------------------------------ videos
    def predict_video(self, path: str, method: Optional[str], checkpoint: Optional[str],
                      options: Optional[Dict[str, Any]] = None, processing_res: Optional[int] = None,
                      cmap: str = "Spectral", display_name: Optional[str] = None,
                      progress: Optional[Callable[[int, Optional[int]], None]] = None) -> Tuple[Path, Path, int]:
        """Frames in order through the method's temporal hook -> (colour depth ``.mp4``, ``.npz``,
        frame count), as ``diffdepth predict`` writes them. ``progress(done, total)`` after each frame."""
        from ..io.video import iter_video_frames, save_depth_video, save_npz_frames, video_info
        from ..pipeline import DepthPipeline

        if not path:
            raise InputError("no video uploaded — choose a video file first")
        name = display_name or Path(path).name
        try:
            model = self.model(method, checkpoint)
            options = {k: v for k, v in (options or {}).items()
                       if v is not None and v is not False and k in model.predict_options}
            pipe = DepthPipeline(model, processing_res=processing_res, **options)
            fps, n, _, _ = video_info(path)
            depths, kind = [], None
            for pred in pipe.video(iter_video_frames(path)):
                kind = pred.kind
                depths.append(pred.depth)
                if progress is not None:
                    progress(len(depths), n)
            if not depths:
                raise InputError(f"cannot read video {name}: it contains no frames")
        except InputError as err:
            raise InputError(str(err).replace(str(path), name)) from None
        out = Path(tempfile.mkdtemp(prefix="video-", dir=self.work_dir))
        base = out / (Path(name).stem or "video")
        mp4 = save_depth_video(base.with_name(base.name + "_depth.mp4"), depths, kind, fps, cmap=cmap)
        npz = save_npz_frames(base.with_name(base.name + ".npz"), np.stack(depths), kind, fps)
        return Path(mp4), Path(npz), len(depths)

    def close(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)


def one_line(err: BaseException) -> str:
    """The message the UI shows: the library's one-line message, or the exception type for a bug."""
    if isinstance(err, DiffdepthError):
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    text = str(err).splitlines()[0] if str(err) else ""
    return f"internal error ({type(err).__name__}{': ' + text if text else ''}) — see the server log"
