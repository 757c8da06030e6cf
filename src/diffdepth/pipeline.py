"""Images in any form -> batches -> model -> a :class:`DepthMap` at each input's size.

The pipeline owns everything around the tensor-in/tensor-out model (DESIGN.md,
principle 1): reading, the processing resolution (long side) or the model's exact input
size, padding to the multiple the model needs, batching, un-padding and resizing back.
Methods never see a file.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Deque, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError
from .model import DepthModel
from .types import METRIC_DEPTH, RELATIVE_DEPTH, DepthMap, DepthPrediction

#: how predicted depth is resized back to the input size: in depth, or as its inverse
#: (disparity: bilinear on 1/depth, then inverted — Monodepth2's evaluation)
RESIZE_SPACES = ("depth", "disparity")

ImageInput = Union[str, Path, np.ndarray, torch.Tensor, Any]  # Any: PIL.Image.Image


@dataclass
class Prepared:
    """One input ready for the model: ``image [3,h,w]`` at processing resolution."""

    index: int
    name: str
    image: torch.Tensor  # [3,h,w] float32 in [0,1] (resized, not padded)
    original_size: Tuple[int, int]  # (H, W) of the input
    rgb: np.ndarray  # [H,W,3] float32 in [0,1] at the input size (for exports)
    meta: Any = None  # diffdepth.io.images.ImageMeta for files


def _to_float_rgb(x: ImageInput, name: str) -> Tuple[np.ndarray, Any]:
    from .io.images import read_image_with_meta, to_float_rgb

    if isinstance(x, (str, Path)):
        return read_image_with_meta(x)
    if isinstance(x, torch.Tensor):
        if x.ndim != 3 or x.shape[0] not in (1, 3):
            raise InputError(f"{name}: a tensor image must be [3,H,W] (or [1,H,W]) in [0,1], got shape {tuple(x.shape)}")
        x = x.detach().float().cpu()
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        arr = x.permute(1, 2, 0).numpy()
        if not np.isfinite(arr).all():
            raise InputError(f"{name}: the image tensor holds NaN or inf values")
        return np.clip(arr, 0.0, 1.0).astype(np.float32), None
    return to_float_rgb(x, name=name), None


def _helper_thread() -> None:
    """Reader/writer threads run torch ops single-threaded: the model's thread keeps the cores
    (torch's thread count is per calling thread, so this leaves the model's untouched)."""
    torch.set_num_threads(1)


def fit_long_side(height: int, width: int, long_side: int, floor: bool = False) -> Tuple[int, int]:
    """Size with the long side equal to ``long_side`` and the aspect ratio kept: sides rounded, or
    floored (``side * long_side // max(height, width)``, diffusers' Marigold ``resize_to_max_edge``)."""
    if floor:
        m = max(height, width)
        return max(1, height * long_side // m), max(1, width * long_side // m)
    scale = long_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize(x: torch.Tensor, size: Tuple[int, int], mode: str = "bilinear",
           antialias: Optional[bool] = None) -> torch.Tensor:
    """Resize ``[B,C,h,w]``; antialiased when shrinking (or as ``antialias`` says), exact no-op
    when the size matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    if antialias is None:
        antialias = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=antialias)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> Tuple[torch.Tensor, Tuple[int, int, int, int]]:
    """Replicate-pad ``[B,C,h,w]`` symmetrically to multiples of ``multiple``.

    Returns the padded tensor and ``(left, right, top, bottom)``.
    """
    h, w = x.shape[-2:]
    ph = (-h) % multiple
    pw = (-w) % multiple
    pads = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    if ph or pw:
        x = F.pad(x, pads, mode="replicate")
    return x, pads


def unpad(x: torch.Tensor, pads: Tuple[int, int, int, int]) -> torch.Tensor:
    left, right, top, bottom = pads
    h, w = x.shape[-2:]
    return x[..., top:h - bottom, left:w - right]


def resize_depth(x: torch.Tensor, size: Tuple[int, int], space: str = "depth",
                 antialias: Optional[bool] = None) -> torch.Tensor:
    """Resize depth ``[B,1,h,w]`` bilinearly, in depth or in disparity space.

    ``space="disparity"``: resize ``1/x`` and invert the result (Monodepth2's evaluation);
    non-positive depths count as disparity 0 and come back as depth 0.
    """
    if space == "depth" or tuple(x.shape[-2:]) == tuple(size):
        return resize(x, size, antialias=antialias)
    if space != "disparity":
        raise ValueError(f"resize space must be one of {', '.join(RESIZE_SPACES)}, got {space!r}")
    disp = torch.where(x > 0, 1.0 / x.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x))
    disp = resize(disp, size, antialias=antialias)
    return torch.where(disp > 0, 1.0 / disp.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(disp))


class DepthPipeline:
    """Run a :class:`DepthModel` on images given as paths, PIL images, arrays or tensors.

    ``processing_res``: long side the images are resized to before the model (``None``:
    the model's default; ``0``: keep each input's size), the aspect ratio kept and the
    result padded to ``model.size_multiple``. For a model with ``processing_res_is_cap`` it
    only shrinks larger inputs (PrimeDepth caps at 1024). ``input_size=(H, W)``: resize every
    input to exactly this size instead (no padding); by default a model's
    ``fixed_input_size`` is used when no ``processing_res`` is given (DiffSQL: 640×192, as
    Monodepth2 and SQLdepth feed their networks). The prediction is always resized back to
    the input's size, in ``resize_space`` (``depth``, or ``disparity``: relative and metric
    depth are resized as their inverse, as Monodepth2 evaluates; other kinds as they are). ``predict_options`` go to
    ``model.predict`` (e.g. ``steps``, ``ensemble_size``) and are checked against what the
    method accepts. ``tile=SIZE`` (``tile_overlap`` px shared, default ``SIZE // 4``): the
    prediction is refined by overlapping native-resolution tiles aligned to it and blended
    (:mod:`diffdepth.tiling`).
    """

    def __init__(self, model: DepthModel, processing_res: Optional[int] = None, batch_size: int = 1,
                 input_size: Optional[Sequence[int]] = None, resize_space: str = "depth",
                 captioner: Optional[Callable[[Any], List[str]]] = None, workers: int = 0,
                 tile: Optional[int] = None, tile_overlap: Optional[int] = None,
                 **predict_options: Any):
        if batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {batch_size}")
        if workers < 0:
            raise InputError(f"workers must be >= 0, got {workers}")
        if processing_res is not None and processing_res < 0:
            raise InputError(f"processing resolution must be >= 0, got {processing_res}")
        if resize_space not in RESIZE_SPACES:
            raise InputError(f"resize space must be one of {', '.join(RESIZE_SPACES)}, got {resize_space!r}")
        if input_size is not None and processing_res is not None:
            raise InputError(f"give either a processing resolution ({processing_res}) or an exact input size "
                             f"({tuple(input_size)}), not both")
        if input_size is None and processing_res is None:
            input_size = getattr(model, "fixed_input_size", None)
        if input_size is not None:
            input_size = tuple(int(v) for v in input_size)
            m = int(model.size_multiple)
            if len(input_size) != 2 or min(input_size) < 1 or input_size[0] % m or input_size[1] % m:
                raise InputError(f"input size {input_size} must be (H, W) with both sides multiples of {m} "
                                 f"(the model's size multiple)")
        self.model = model
        self.input_size: Optional[Tuple[int, int]] = input_size
        self.processing_res = model.default_processing_res if processing_res is None else processing_res
        self.resize_space = resize_space
        self.batch_size = batch_size
        #: reader threads (decode + resize ahead of the model) and writer threads of
        #: :meth:`process`; 0 = everything in the calling thread, one input after another
        self.workers = workers
        self.predict_options = model.check_options({k: v for k, v in predict_options.items() if v is not None})
        if captioner is not None and "prompt" not in getattr(model, "predict_options", ()):
            raise InputError(f"captions are prompts; {model.method or 'this model'} takes no prompt "
                             f"(use a method that does, e.g. primedepth)")
        if captioner is not None and self.predict_options.get("prompt") is not None:
            raise InputError("give either a prompt or a captioner, not both")
        #: ``images (original size) -> list[str]``: one caption per input, used as its prompt
        self.captioner = captioner
        if tile_overlap is not None and tile is None:
            raise InputError("a tile overlap needs a tile size (--tile SIZE)")
        #: tiled inference (:mod:`diffdepth.tiling`): the global pass refined by native-resolution tiles
        self.tiler = None
        if tile is not None:
            from .tiling import Tiler

            self.tiler = Tiler(self, tile, tile_overlap)

    # ------------------------------------------------------------------ preparation
    @property
    def _marigold_resize(self) -> bool:
        return getattr(self.model, "resize_convention", "default") == "marigold"

    @property
    def _param(self) -> torch.Tensor:
        return next(self.model.parameters())

    def prepare(self, x: ImageInput, index: int = 0, name: Optional[str] = None) -> Prepared:
        name = name or (str(x) if isinstance(x, (str, Path)) else f"input {index}")
        rgb, meta = _to_float_rgb(x, name)
        h, w = rgb.shape[:2]
        if min(h, w) < self.model.min_size:
            raise InputError(f"{name}: image is {w}x{h} px; {self.model.method or 'this model'} needs at least "
                             f"{self.model.min_size} px on each side — upsample it or use a larger image")
        image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)  # [3,H,W]
        if self.input_size is not None:  # exactly the model's size: aspect ratio not kept, nothing padded
            image = resize(image[None], self.input_size)[0].clamp(0, 1)
        elif self.processing_res and not (self.model.processing_res_is_cap and max(h, w) <= self.processing_res):
            size = fit_long_side(h, w, self.processing_res, floor=self._marigold_resize)
            image = resize(image[None], size)[0].clamp(0, 1)
        return Prepared(index, name, image, (h, w), rgb, meta)

    @staticmethod
    def _expand(inputs: Any) -> List[ImageInput]:
        if isinstance(inputs, torch.Tensor) and inputs.ndim == 4:
            return list(inputs)
        if isinstance(inputs, (list, tuple)):
            out: List[ImageInput] = []
            for item in inputs:
                out.extend(DepthPipeline._expand(item) if isinstance(item, torch.Tensor) and item.ndim == 4 else [item])
            return out
        return [inputs]

    # ------------------------------------------------------------------ running
    def run_batch(self, items: Sequence[Prepared], video_state: Any = None, video: bool = False):
        """Predict a batch of prepared items of equal processed size."""
        p = self._param
        batch = torch.stack([it.image for it in items])  # [B,3,h,w]
        if p.device.type == "cuda":  # page-locked host memory: the copy overlaps with queued kernels
            batch = batch.pin_memory().to(device=p.device, dtype=p.dtype, non_blocking=True)
        else:
            batch = batch.to(device=p.device, dtype=p.dtype)
        if getattr(self.model, "_diffdepth_channels_last", False):
            batch = batch.contiguous(memory_format=torch.channels_last)
        batch, pads = pad_to_multiple(batch, self.model.size_multiple)
        if getattr(self.model, "_diffdepth_cuda_graphs", False):
            torch.compiler.cudagraph_mark_step_begin()  # the previous batch's graph outputs are consumed
        options = self.predict_options
        captions = None
        if self.captioner is not None:  # captions of the inputs as given (the official code's order)
            captions = [str(c) for c in self.captioner([it.rgb for it in items])]
            if len(captions) != len(items):
                raise InputError(f"the captioner returned {len(captions)} captions for {len(items)} images")
            options = {**options, "prompt": captions}
        with torch.inference_mode():
            if video:
                pred, video_state = self.model.video_step(batch, video_state, **options)
            else:
                pred = self.model.predict(batch, **options)
        results = []
        for i, it in enumerate(items):
            results.append(self._finish(pred, i, pads, it.original_size))
            if captions is not None:
                results[-1].extras["caption"] = captions[i]
        return results, video_state

    def _finish(self, pred: DepthPrediction, i: int, pads, size) -> DepthMap:
        def back(t: Optional[torch.Tensor], mode: str = "bilinear", space: str = "depth") -> Optional[np.ndarray]:
            if t is None:
                return None
            t = unpad(t[i:i + 1].float(), pads)
            antialias = False if self._marigold_resize else None
            t = (resize_depth(t, size, space, antialias=antialias) if mode == "bilinear"
                 else resize(t, size, mode=mode, antialias=antialias))
            return t[0, 0].cpu().numpy().astype(np.float32)

        extras = {}
        for key, value in (pred.extras or {}).items():
            if isinstance(value, torch.Tensor) and value.ndim == 4:
                extras[key] = back(value, "nearest" if not value.is_floating_point() or key == "segmentation" else "bilinear")
            else:
                extras[key] = value
        # only depth up to scale (relative, metric) is resized as its inverse: an affine-invariant
        # depth has an unknown shift (its inverse means nothing), a disparity is resized as it is
        space = self.resize_space if pred.kind in (RELATIVE_DEPTH, METRIC_DEPTH) else "depth"
        return DepthMap(back(pred.depth, space=space), pred.kind, back(pred.uncertainty), extras)

    def iter_predictions(self, inputs: Iterable[ImageInput], on_error: Optional[Callable[[int, Any, Exception], None]] = None,
                         names: Optional[Sequence[str]] = None) -> Iterator[Tuple[Prepared, DepthMap]]:
        """Yield ``(prepared, prediction)`` in input order, batching equal processed sizes.

        With ``on_error``, unreadable inputs are reported through it and skipped;
        otherwise the :class:`InputError` propagates. With ``workers > 0``, inputs are
        read and resized by a thread pool ahead of the model (in order, a bounded window).
        """
        pending: List[Prepared] = []

        def flush():
            if not pending:
                return
            preds, _ = self.run_batch(pending)
            for it, pr in zip(pending, preds):
                yield it, (self.tiler.refine(it, pr) if self.tiler is not None else pr)
            pending.clear()

        for index, x, item in self._prepared(inputs, names):
            if isinstance(item, InputError):
                if on_error is None:
                    raise item
                on_error(index, x, item)
                continue
            if pending and (pending[0].image.shape != item.image.shape or len(pending) >= self.batch_size):
                yield from flush()
            pending.append(item)
        yield from flush()

    def _prepared(self, inputs: Iterable[ImageInput], names: Optional[Sequence[str]]
                  ) -> Iterator[Tuple[int, Any, Union[Prepared, InputError]]]:
        """``(index, input, Prepared or the InputError)`` in input order; read ahead by the pool."""
        def prep(index: int, x: Any) -> Union[Prepared, InputError]:
            try:
                return self.prepare(x, index, names[index] if names else None)
            except InputError as err:
                return err

        if self.workers == 0:
            for index, x in enumerate(inputs):
                yield index, x, prep(index, x)
            return
        window = 2 * self.workers + self.batch_size
        with ThreadPoolExecutor(self.workers, thread_name_prefix="diffdepth-read", initializer=_helper_thread) as pool:
            queue: Deque[Tuple[int, Any, Future]] = deque()
            try:
                for index, x in enumerate(inputs):
                    queue.append((index, x, pool.submit(prep, index, x)))
                    while len(queue) > window:
                        i, xi, fut = queue.popleft()
                        yield i, xi, fut.result()
                while queue:
                    i, xi, fut = queue.popleft()
                    yield i, xi, fut.result()
            finally:  # a consumer that stops early: drop what was read ahead
                for _, _, fut in queue:
                    fut.cancel()

    def process(self, inputs: Sequence[ImageInput], write: Callable[[Prepared, DepthMap], Any],
                on_error: Optional[Callable[[int, Any, Exception], None]] = None,
                names: Optional[Sequence[str]] = None,
                catch: Tuple[type, ...] = ()) -> Iterator[Tuple[Prepared, Optional[BaseException]]]:
        """Predict every input and call ``write(prepared, prediction)`` on it; yield
        ``(prepared, error or None)`` in input order once its write has finished.

        The folder pipeline: with ``workers > 0`` reading/decoding/resizing runs ahead in one
        thread pool, the model runs in this thread, and ``write`` (encoding and saving the
        outputs) runs behind in another, so decoding and writing overlap with compute; with
        ``workers == 0`` it is the plain sequential loop. Exceptions of the types in ``catch``
        raised by ``write`` are yielded; any other exception propagates. ``write`` must be
        safe to run concurrently for different inputs (each input writes its own files).
        """
        def guarded(item: Prepared, pred: DepthMap) -> Optional[BaseException]:
            try:
                write(item, pred)
            except catch as err:  # noqa: PERF203 - one try per item
                return err
            return None

        stream = self.iter_predictions(inputs, on_error=on_error, names=names)
        if self.workers == 0:
            for item, pred in stream:
                yield item, guarded(item, pred)
            return
        try:
            yield from self._write_behind(stream, guarded)
        finally:
            stream.close()  # stops the readers when the consumer stops early

    def _write_behind(self, stream, guarded) -> Iterator[Tuple[Prepared, Optional[BaseException]]]:
        window = 2 * self.workers + self.batch_size
        with ThreadPoolExecutor(self.workers, thread_name_prefix="diffdepth-write", initializer=_helper_thread) as pool:
            queue: Deque[Tuple[Prepared, Future]] = deque()
            try:
                for item, pred in stream:
                    queue.append((item, pool.submit(guarded, item, pred)))
                    while queue and (len(queue) > window or queue[0][1].done()):
                        item0, fut = queue.popleft()
                        yield item0, fut.result()
                while queue:
                    item0, fut = queue.popleft()
                    yield item0, fut.result()
            finally:
                for _, fut in queue:
                    fut.cancel()

    def __call__(self, inputs: Union[ImageInput, Sequence[ImageInput]]) -> Union[DepthMap, List[DepthMap]]:
        """Predict depth. A single input gives one prediction, a list (or ``[B,3,H,W]``) a list."""
        single = not isinstance(inputs, (list, tuple)) and not (isinstance(inputs, torch.Tensor) and inputs.ndim == 4)
        preds = [pr for _, pr in self.iter_predictions(self._expand(inputs))]
        return preds[0] if single else preds

    def video(self, frames: Iterable[np.ndarray], temporal: str = "latent",
              temporal_window: int = 8) -> Iterator[DepthMap]:
        """Frames in order, one at a time (streaming). ``temporal`` (:mod:`diffdepth.temporal`):
        ``latent`` (default) through ``model.video_step``, the per-method temporal hook;
        ``none`` every frame alone; ``align`` / ``align+latent`` add the alignment of each frame
        to the median of the last ``temporal_window`` aligned frames."""
        from .temporal import TEMPORAL_MODES, TemporalAligner

        if temporal not in TEMPORAL_MODES:
            raise InputError(f"temporal mode must be one of {', '.join(TEMPORAL_MODES)}, got {temporal!r}")
        aligner = TemporalAligner(temporal_window) if temporal.startswith("align") else None
        hook = temporal in ("latent", "align+latent")
        state = None
        for index, frame in enumerate(frames):
            item = self.prepare(frame, index, f"frame {index}")
            (pred,), state = self.run_batch([item], video_state=state, video=hook)
            if self.tiler is not None:
                pred = self.tiler.refine(item, pred)
            yield aligner(pred) if aligner is not None else pred

