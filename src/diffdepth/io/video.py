"""Video input/output: frames in, depth videos and per-frame depth archives out.

Reading uses PyAV (FFmpeg). Frames come out as float32 ``[H,W,3]`` RGB in ``[0,1]``, with the container's rotation metadata
(display matrix, e.g. phone videos shot upright) applied. Unreadable, corrupt or empty
videos raise :class:`diffdepth.errors.InputError` naming the file.

Writing (:class:`VideoWriter`) encodes H.264 (libx264, yuv420p, CRF 18) when PyAV's FFmpeg
has it, else MPEG-4 Part 2, into a temporary file that is renamed onto the target only
when the writer closes without an exception.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence as _SequenceABC
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import InputError
from ..types import check_kind
from ..utils import atomic_path
from .images import check_file, to_float_rgb

import av as _av

PathLike = Union[str, os.PathLike]

#: fps reported when a container does not state its frame rate
DEFAULT_FPS = 30.0
#: encoders tried in order by VideoWriter (first available wins)
ENCODERS = ("libx264", "h264", "mpeg4")


def _rotate(frame: np.ndarray, degrees_ccw: float) -> np.ndarray:
    """Apply a display-matrix rotation (degrees counter-clockwise, multiple of 90)."""
    k = int(round(degrees_ccw / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(frame, k)) if k else frame


_AV_ERRORS = (OSError, ValueError, EOFError, _av.FFmpegError)


def _open_av(p: Path):
    """Open with PyAV and return (container, first video stream)."""
    try:
        container = _av.open(os.fspath(p), mode="r")
    except _AV_ERRORS as err:
        raise InputError(f"cannot read video {p}: not a video file or corrupt ({err})") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"cannot read video {p}: it has no video stream")
    return container, container.streams.video[0]


def video_info(path: PathLike) -> Tuple[float, Optional[int], int, int]:
    """(fps, number of frames or None if the container does not say, width, height).

    Width/height are those of the frames :func:`iter_video_frames` yields (rotation
    applied). The first frame is decoded to make sure the video is readable.
    """
    p = check_file(path, "video")
    container, stream = _open_av(p)
    try:
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else DEFAULT_FPS
        n = int(stream.frames) if stream.frames else None
        first = None
        try:
            for frame in container.decode(stream):
                first = frame
                break
        except _AV_ERRORS as err:
            raise InputError(f"cannot read video {p}: corrupt ({err})") from None
        if first is None:
            raise InputError(f"cannot read video {p}: it contains no frames")
        w, h = first.width, first.height
        if int(round(getattr(first, "rotation", 0) or 0)) % 180 != 0:
            w, h = h, w
        return fps, n, w, h
    finally:
        container.close()


def iter_video_frames(path: PathLike) -> Iterator[np.ndarray]:
    """Frames of a video in order as float32 ``[H,W,3]`` RGB in ``[0,1]``.

    The file is opened (and checked) when this is called; decoding happens lazily. A
    decoding error mid-stream raises InputError naming the file and the frame index; a
    video with no frames raises InputError when the iterator ends.
    """
    p = check_file(path, "video")
    container, stream = _open_av(p)
    return _av_frames(p, container, stream)


def _av_frames(p: Path, container, stream) -> Iterator[np.ndarray]:
    count = 0
    try:
        decoder = container.decode(stream)
        while True:
            try:
                frame = next(decoder)
            except StopIteration:
                break
            except _AV_ERRORS as err:
                raise InputError(f"cannot read video {p}: corrupt at frame {count} ({err})") from None
            rgb = frame.to_ndarray(format="rgb24")  # [H,W,3] uint8
            rgb = _rotate(rgb, getattr(frame, "rotation", 0) or 0)
            count += 1
            yield rgb.astype(np.float32) / 255.0
    finally:
        container.close()
    if count == 0:
        raise InputError(f"cannot read video {p}: it contains no frames")


def _fps_fraction(fps: float) -> Fraction:
    if not (isinstance(fps, (int, float, Fraction)) and float(fps) > 0 and np.isfinite(float(fps))):
        raise InputError(f"frame rate must be a positive number, got {fps!r}")
    return Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps


def pick_encoder() -> str:
    """First encoder of :data:`ENCODERS` that PyAV's FFmpeg build can write."""
    for name in ENCODERS:
        try:
            _av.codec.Codec(name, "w")
            return name
        except Exception:
            continue
    raise InputError(f"PyAV's FFmpeg has none of the encoders {', '.join(ENCODERS)}")


class VideoWriter:
    """Write frames to an .mp4/.mov/.mkv video, atomically.

    ``with VideoWriter("out.mp4", fps=24) as vw: vw.write(frame)`` where frames are
    ``[H,W,3]`` uint8 or float in ``[0,1]`` (any input :func:`to_float_rgb` takes), all of
    one size. yuv420p needs even sizes: odd widths/heights are padded by repeating the last
    column/row. The file appears only when the block exits without an exception and at
    least one frame was written; otherwise nothing (and no temporary file) is left.
    """

    def __init__(self, path: PathLike, fps: float = DEFAULT_FPS, crf: int = 18):
        self.path = Path(path)
        if self.path.suffix.lower() not in (".mp4", ".mov", ".mkv"):
            raise InputError(f"video output {self.path} must end in .mp4, .mov or .mkv")
        self.fps = _fps_fraction(fps)
        self.crf = crf
        self.codec = pick_encoder()
        self.frames_written = 0
        self._atomic = None
        self._container = None
        self._stream = None
        self._size: Optional[Tuple[int, int]] = None  # (H, W) of the input frames

    def __enter__(self) -> "VideoWriter":
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        try:
            fmt = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}[self.path.suffix.lower()]
            self._container = _av.open(os.fspath(tmp), mode="w", format=fmt)
        except BaseException:
            self._atomic.__exit__(*sys.exc_info())
            raise
        return self

    def _open_stream(self, h: int, w: int) -> None:
        stream = self._container.add_stream(self.codec, rate=self.fps)
        stream.width, stream.height = w + (w % 2), h + (h % 2)
        stream.pix_fmt = "yuv420p"
        if self.codec in ("libx264", "h264"):
            stream.options = {"crf": str(self.crf), "preset": "medium"}
        else:
            stream.bit_rate = 8_000_000
        self._stream = stream
        self._size = (h, w)

    def write(self, frame: Any) -> None:
        """Append one frame ([H,W,3] uint8 or float in [0,1])."""
        if self._container is None:
            raise RuntimeError("VideoWriter.write called outside its 'with' block")
        if isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3:
            u8 = frame
        else:
            u8 = np.round(to_float_rgb(frame, name=f"frame {self.frames_written}") * 255.0).astype(np.uint8)
        h, w = u8.shape[:2]
        if self._stream is None:
            self._open_stream(h, w)
        elif (h, w) != self._size:
            raise InputError(f"frame {self.frames_written} is {w}x{h} but the video is "
                             f"{self._size[1]}x{self._size[0]}; all frames must have one size")
        if h % 2 or w % 2:
            u8 = np.pad(u8, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        vf = _av.VideoFrame.from_ndarray(np.ascontiguousarray(u8), format="rgb24")
        vf.pts = self.frames_written
        vf.time_base = 1 / self.fps
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        self.frames_written += 1

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self._abort(exc_type, exc, tb)
            return False
        try:
            if self._stream is None:
                raise InputError(f"no frames were written to {self.path}; nothing saved")
            for packet in self._stream.encode(None):  # flush the encoder
                self._container.mux(packet)
            self._container.close()  # writes the trailer (moov atom)
            self._container = None
        except BaseException:
            self._abort(*sys.exc_info())
            raise
        self._atomic.__exit__(None, None, None)  # rename the temporary file onto the target
        return False

    def _abort(self, exc_type, exc, tb) -> None:
        """Close what is open and delete the temporary file; never masks the original error."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:
                pass
            self._container = None
        try:
            self._atomic.__exit__(exc_type, exc, tb)
        except BaseException:
            pass  # the atomic context re-raises `exc`; our caller raises it


#: at most this many depth values (summed over the frames) feed a video's shared colour range
RANGE_SAMPLES = 1_000_000


def video_depth_range(depths: Sequence[Any], kind: str, robust: bool = True,
                      max_samples: Optional[int] = None, percentiles: Optional[Tuple[float, float]] = None
                      ) -> Tuple[float, float]:
    """One colour range for all frames (so colours do not flicker): 2nd/98th percentiles
    (or ``percentiles``, or min/max) of the valid values of every frame, on an evenly strided
    (deterministic, not random) subsample of each frame: about ``max_samples``
    (default :data:`RANGE_SAMPLES`) values in all, at most twice that, whatever the clip's length.
    Frames are read one at a time, so ``depths`` may be a :class:`SpooledFrames` of a long clip."""
    from .export import as_depth_2d, valid_mask

    check_kind(kind)
    max_samples = RANGE_SAMPLES if max_samples is None else max_samples
    per = max(1, max_samples // max(1, len(depths)))
    vals = []
    for d in depths:
        a = as_depth_2d(d)
        v = a[valid_mask(a, kind)]
        vals.append(v[:: max(1, v.size // per)].copy())  # a copy: a strided view would keep the whole frame
    v = np.concatenate(vals).astype(np.float64) if vals else np.zeros(0)
    if v.size == 0:
        return float("nan"), float("nan")
    if robust:
        lo, hi = np.percentile(v, percentiles or (2.0, 98.0))
        return float(lo), float(hi)
    return float(v.min()), float(v.max())


def save_depth_video(path: PathLike, depths: Sequence[Any], kind: str, fps: float, cmap: str = "Spectral",
                     near_warm: bool = True, value_range: Optional[Tuple[float, float]] = None,
                     rgb_frames: Optional[Iterable[Any]] = None) -> Path:
    """Write a colourised depth video (side by side with ``rgb_frames`` when given).

    All frames share one colour range: ``value_range`` or :func:`video_depth_range`. Frames
    are read one at a time (``depths`` may be :class:`SpooledFrames`); ``rgb_frames`` may be any
    iterable (e.g. the video decoded again), consumed in step with ``depths``."""
    from .export import colorize, side_by_side

    if len(depths) == 0:
        raise InputError(f"no depth frames to write to {path}")
    if rgb_frames is not None and hasattr(rgb_frames, "__len__") and len(rgb_frames) != len(depths):
        raise InputError(f"{len(rgb_frames)} RGB frames but {len(depths)} depth frames for {path}")
    rng = value_range if value_range is not None else video_depth_range(depths, kind)
    rgb_iter = iter(rgb_frames) if rgb_frames is not None else None
    with VideoWriter(path, fps=fps) as vw:
        for i in range(len(depths)):
            d = depths[i]
            if rgb_iter is None:
                vw.write(colorize(d, kind, cmap, near_warm, value_range=rng))
                continue
            rgb = next(rgb_iter, None)
            if rgb is None:
                raise InputError(f"{i} RGB frames but {len(depths)} depth frames for {path}")
            vw.write(side_by_side(rgb, d, kind, cmap, near_warm, value_range=rng))
    return Path(path)


def _frame_2d(d: Any) -> np.ndarray:
    f = np.asarray(d.detach().float().cpu().numpy() if hasattr(d, "detach") else d, dtype=np.float32)
    return f.reshape(f.shape[-2:]) if f.ndim > 2 and np.prod(f.shape[:-2]) == 1 else f


def save_npz_frames(path: PathLike, depths: Union[Sequence[Any], np.ndarray], kind: str, fps: float) -> Path:
    """Write per-frame depth of a video as ``.npz``: ``depth`` float32 ``[N,H,W]``, ``kind``
    (string), ``fps`` (float) -- what ``np.savez_compressed`` writes, but the ``depth`` member
    is streamed frame by frame (``depths`` may be :class:`SpooledFrames` of a long clip; no ``[N,H,W]``
    copy is made in memory). Written atomically: a temporary file renamed onto ``path``."""
    import zipfile

    check_kind(kind)
    n = len(depths)
    if n == 0:
        raise InputError(f"no depth frames to write to {path}")
    shape = _frame_2d(depths[0]).shape
    if len(shape) != 2:
        raise InputError(f"depth frames for {path} must all be [H,W] of one size, got {[shape]}")
    path = Path(path)
    with atomic_path(path) as tmp:
        # the zip layout of np.savez_compressed: deflated members, zip64 forced, one .npy each
        with zipfile.ZipFile(tmp, mode="w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            with zf.open("depth.npy", "w", force_zip64=True) as fid:
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
                          "shape": (n,) + tuple(shape)}
                np.lib.format.write_array_header_1_0(fid, header)
                for i in range(n):
                    f = _frame_2d(depths[i])
                    if f.shape != shape:
                        raise InputError(f"depth frames for {path} must all be [H,W] of one size, "
                                         f"got {[shape, f.shape]}")
                    fid.write(np.ascontiguousarray(f, dtype="<f4").tobytes())
            for key, val in (("kind", np.array(kind)), ("fps", np.array(float(fps)))):
                with zf.open(key + ".npy", "w", force_zip64=True) as fid:
                    np.lib.format.write_array(fid, val, allow_pickle=False)
    return path


class SpooledFrames(_SequenceABC):
    """Read-only ``[N,H,W]`` float32 frames of a :class:`DepthSpool`, each read from the file when
    indexed (one ``np.fromfile`` per frame): unlike a memory map, pages read back do not stay
    mapped into the process, so its resident memory stays flat over a long clip."""

    def __init__(self, path: Path, count: int, shape: Tuple[int, int]):
        self.path, self.count, self.shape = path, count, tuple(shape)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> np.ndarray:
        if not isinstance(i, (int, np.integer)):
            raise TypeError("spooled frames are read one at a time, by integer index")
        i = int(i) + (self.count if i < 0 else 0)
        if not 0 <= i < self.count:
            raise IndexError(f"frame {i} of {self.count}")
        size = self.shape[0] * self.shape[1]
        with open(self.path, "rb") as f:
            f.seek(i * size * 4)
            return np.fromfile(f, dtype="<f4", count=size).reshape(self.shape)


class DepthSpool:
    """Depth frames of a clip streamed to a temporary raw float32 file next to ``near`` (hidden
    name, removed on :meth:`close` and on error), then read back one at a time
    (:class:`SpooledFrames`): memory stays flat however long the clip. A context manager."""

    def __init__(self, near: PathLike):
        import tempfile

        near = Path(near)
        near.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{near.name}.", suffix=".depth.f32", dir=near.parent)
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self.shape: Optional[Tuple[int, int]] = None
        self.count = 0

    def append(self, depth: Any) -> None:
        f = _frame_2d(depth)
        if f.ndim != 2 or (self.shape is not None and f.shape != self.shape):
            raise InputError(f"depth frame {self.count} is {f.shape}, expected one [H,W] size {self.shape}")
        self.shape = f.shape
        self._file.write(np.ascontiguousarray(f, dtype="<f4").tobytes())
        self.count += 1

    def frames(self) -> SpooledFrames:
        """The frames written so far, as a sequence read from the file frame by frame."""
        self._file.flush()
        return SpooledFrames(self.path, self.count, self.shape or (0, 0))

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self.path.exists():
            self.path.unlink()

    def __enter__(self) -> "DepthSpool":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def load_npz_frames(path: PathLike) -> Tuple[np.ndarray, str, float]:
    """Read what :func:`save_npz_frames` wrote -> (depth [N,H,W], kind, fps)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["depth"], str(z["kind"]), float(z["fps"])
    except (OSError, KeyError, ValueError) as err:
        raise InputError(f"cannot read depth frames {os.fspath(path)}: {err}") from None


def select_frames(frames: Iterable[Any], start: int = 0, end: Optional[int] = None, stride: int = 1,
                  max_frames: Optional[int] = None) -> Iterator[Any]:
    """Frames ``start, start+stride, ...`` before ``end`` (exclusive), at most ``max_frames`` of them
    (``predict --start-frame/--end-frame/--frame-stride/--max-frames``); decoding stops at the last one."""
    import itertools

    picked = itertools.islice(frames, start, end, stride)
    return itertools.islice(picked, max_frames) if max_frames is not None else picked


def selected_count(n: Optional[int], start: int = 0, end: Optional[int] = None, stride: int = 1,
                   max_frames: Optional[int] = None) -> Optional[int]:
    """How many frames :func:`select_frames` yields from a video of ``n`` frames (None: unknown)."""
    if n is None:
        return max_frames
    count = len(range(start, n if end is None else min(end, n), stride))
    return count if max_frames is None else min(count, max_frames)
