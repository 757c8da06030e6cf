"""Video reading/writing and per-video depth archives (diffdepth.io.video)."""
from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from PIL import Image

from diffdepth.errors import InputError
from diffdepth.io import video as video_mod
from diffdepth.io.video import (VideoWriter, iter_video_frames, load_npz_frames, pick_encoder,
                                save_depth_video, save_npz_frames, video_depth_range, video_info)
from diffdepth.types import AFFINE_DISPARITY, METRIC_DEPTH

COLOURS = [(0.9, 0.1, 0.1), (0.1, 0.8, 0.2), (0.15, 0.2, 0.9), (0.9, 0.9, 0.2), (0.5, 0.5, 0.5)]


def _frames(h=32, w=48):
    """Flat-colour frames (float [0,1]) with a white square in the top-left corner."""
    out = []
    for c in COLOURS:
        f = np.empty((h, w, 3), np.float32)
        f[:] = c
        f[:8, :8] = 1.0
        out.append(f)
    return out


def _write(path, frames, fps=12):
    with VideoWriter(path, fps=fps) as vw:
        for f in frames:
            vw.write(f)
    return vw


def test_encoder_available():
    assert pick_encoder() in ("libx264", "h264", "mpeg4")


def test_write_then_read_back(tmp_path):
    path = tmp_path / "clip.mp4"
    vw = _write(path, _frames())
    assert vw.frames_written == 5
    assert sorted(os.listdir(tmp_path)) == ["clip.mp4"]  # temp file renamed away
    fps, n, w, h = video_info(path)
    assert fps == pytest.approx(12.0) and n in (5, None) and (w, h) == (48, 32)
    frames = list(iter_video_frames(path))
    assert len(frames) == 5
    for f, c in zip(frames, COLOURS):
        assert f.shape == (32, 48, 3) and f.dtype == np.float32
        np.testing.assert_allclose(f[16:, 16:].mean((0, 1)), c, atol=0.04)  # lossy codec
        np.testing.assert_allclose(f[2:6, 2:6].mean((0, 1)), [1, 1, 1], atol=0.06)


def test_odd_size_padded_and_uint8_frames(tmp_path):
    frame = np.zeros((17, 23, 3), np.uint8)
    frame[..., 2] = 200
    _write(tmp_path / "odd.mp4", [frame, frame])
    fps, n, w, h = video_info(tmp_path / "odd.mp4")
    assert (w, h) == (24, 18)  # padded to even by repeating the last row/column
    frames = list(iter_video_frames(tmp_path / "odd.mp4"))
    assert len(frames) == 2
    np.testing.assert_allclose(frames[0].mean((0, 1)), [0, 0, 200 / 255], atol=0.04)


def test_display_matrix_rotation_applied(tmp_path):
    """A phone-style portrait clip: frames stored landscape, the mp4 track header ('tkhd')
    matrix [0 1; -1 0] says "turn 90 degrees clockwise to display" (ffprobe: rotation -90)."""
    frame = np.zeros((16, 32, 3), np.uint8)
    frame[:6, :6] = 255  # white block in the stored top-left corner
    _write(tmp_path / "land.mp4", [frame, frame])
    data = bytearray((tmp_path / "land.mp4").read_bytes())
    m = data.find(b"tkhd") + 4 + 40  # version/flags, times, ids, duration, layer... then the matrix
    assert struct.unpack(">9i", data[m:m + 36]) == (1 << 16, 0, 0, 0, 1 << 16, 0, 0, 0, 1 << 30)
    data[m:m + 36] = struct.pack(">9i", 0, 1 << 16, 0, -(1 << 16), 0, 0, 16 << 16, 0, 1 << 30)
    (tmp_path / "portrait.mp4").write_bytes(bytes(data))
    assert video_info(tmp_path / "portrait.mp4")[2:] == (16, 32)
    f = next(iter(iter_video_frames(tmp_path / "portrait.mp4")))
    assert f.shape == (32, 16, 3)
    # a clockwise turn takes the stored top-left corner to the displayed top-right corner
    np.testing.assert_allclose(f[2, 13], [1, 1, 1], atol=0.06)
    np.testing.assert_allclose(f[2, 2], [0, 0, 0], atol=0.06)
    np.testing.assert_allclose(f[29, 2], [0, 0, 0], atol=0.06)


def test_exception_inside_writer_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="stop"):
        with VideoWriter(tmp_path / "bad.mp4", fps=5) as vw:
            vw.write(_frames()[0])
            raise RuntimeError("stop")
    assert os.listdir(tmp_path) == []


def test_writer_errors(tmp_path):
    with pytest.raises(InputError, match="no frames"):
        with VideoWriter(tmp_path / "empty.mp4", fps=5):
            pass
    with pytest.raises(InputError, match="one size"):
        with VideoWriter(tmp_path / "mixed.mp4", fps=5) as vw:
            vw.write(np.zeros((16, 16, 3), np.uint8))
            vw.write(np.zeros((16, 18, 3), np.uint8))
    assert os.listdir(tmp_path) == []
    with pytest.raises(InputError, match=".gif"):
        VideoWriter(tmp_path / "x.gif", fps=5)
    with pytest.raises(InputError, match="frame rate"):
        VideoWriter(tmp_path / "x.mp4", fps=0)


def test_bad_videos_raise_input_error_naming_file(tmp_path):
    _write(tmp_path / "good.mp4", _frames(16, 16))
    data = (tmp_path / "good.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (tmp_path / "garbage.mp4").write_bytes(os.urandom(4096))
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.webm").write_text("hello, I am not a video\n")
    for name in ["truncated.mp4", "garbage.mp4", "empty.mp4", "text.webm", "missing.mov"]:
        with pytest.raises(InputError) as ei:
            list(iter_video_frames(tmp_path / name))
        assert name in str(ei.value)
        with pytest.raises(InputError) as ei:
            video_info(tmp_path / name)
        assert name in str(ei.value)


def test_animated_gif_is_read_as_a_video(tmp_path):
    frames = [Image.new("RGB", (12, 10), tuple(int(v * 255) for v in c)) for c in COLOURS[:3]]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    got = list(iter_video_frames(tmp_path / "anim.gif"))
    assert len(got) == 3 and got[0].shape == (10, 12, 3)
    for g, c in zip(got, COLOURS[:3]):
        np.testing.assert_allclose(g.mean((0, 1)), c, atol=0.03)
    fps, n, w, h = video_info(tmp_path / "anim.gif")
    assert fps == pytest.approx(10.0) and (w, h) == (12, 10)
    (tmp_path / "bad.gif").write_bytes(b"GIF89a" + os.urandom(64))
    with pytest.raises(InputError, match="bad.gif"):
        list(iter_video_frames(tmp_path / "bad.gif"))


def test_npz_frames_roundtrip_atomic(tmp_path, monkeypatch):
    depths = [np.full((4, 6), i + 1.5, np.float32) for i in range(3)]
    p = save_npz_frames(tmp_path / "clip_depth.npz", depths, METRIC_DEPTH, 23.976)
    assert sorted(os.listdir(tmp_path)) == ["clip_depth.npz"]
    d, kind, fps = load_npz_frames(p)
    assert d.shape == (3, 4, 6) and d.dtype == np.float32 and np.array_equal(d[2], depths[2])
    assert kind == METRIC_DEPTH and fps == pytest.approx(23.976)
    # a name without .npz is kept as given (np.savez must not append a suffix to the temp file)
    p2 = save_npz_frames(tmp_path / "plain.depth", np.stack(depths), METRIC_DEPTH, 5)
    assert p2.exists() and sorted(os.listdir(tmp_path)) == ["clip_depth.npz", "plain.depth"]
    with pytest.raises(InputError, match="one size"):  # found mid-stream: no partial file is left
        save_npz_frames(tmp_path / "x.npz", [np.zeros((2, 2)), np.zeros((3, 2))], METRIC_DEPTH, 5)
    assert sorted(os.listdir(tmp_path)) == ["clip_depth.npz", "plain.depth"]

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(video_mod.np.lib.format, "write_array", boom)  # after `depth` was streamed
    with pytest.raises(RuntimeError):
        save_npz_frames(tmp_path / "fail.npz", depths, METRIC_DEPTH, 5)
    assert sorted(os.listdir(tmp_path)) == ["clip_depth.npz", "plain.depth"]


def test_depth_video_one_colour_range_for_all_frames(tmp_path):
    depths = [np.full((16, 16), v, np.float32) for v in (1.0, 2.0, 3.0)]
    assert video_depth_range(depths, METRIC_DEPTH) == pytest.approx((1.0, 3.0))
    save_depth_video(tmp_path / "d.mp4", depths, METRIC_DEPTH, fps=4)
    frames = list(iter_video_frames(tmp_path / "d.mp4"))
    assert len(frames) == 3 and frames[0].shape == (16, 16, 3)
    # constant frames still span the map because the range is global: near = Spectral red,
    # middle = Spectral's centre class, far = Spectral purple (lossy codec: loose tolerance)
    np.testing.assert_allclose(frames[0].mean((0, 1)) * 255, (158, 1, 66), atol=14)
    np.testing.assert_allclose(frames[1].mean((0, 1)) * 255, (255, 255, 191), atol=14)
    np.testing.assert_allclose(frames[2].mean((0, 1)) * 255, (94, 79, 162), atol=14)
    rgb = [np.full((16, 16, 3), 0.5, np.float32)] * 3
    save_depth_video(tmp_path / "s.mp4", depths, AFFINE_DISPARITY, fps=4, rgb_frames=rgb)
    assert video_info(tmp_path / "s.mp4")[2:] == (32, 16)
    with pytest.raises(InputError, match="RGB frames"):
        save_depth_video(tmp_path / "x.mp4", depths, METRIC_DEPTH, fps=4, rgb_frames=rgb[:1])
