"""`predict` on videos streams: outputs as when every frame was kept in memory, and memory flat with the clip."""
import tracemalloc

import numpy as np

from diffdepth import cli
from diffdepth.errors import InputError
from diffdepth.io import video as video_mod
from diffdepth.io.export import colorize, side_by_side, valid_mask
from diffdepth.io.video import VideoWriter, iter_video_frames
from diffdepth.pipeline import DepthPipeline


def _clip(path, n, h, w):
    ramp = np.tile(np.linspace(20, 120, w, dtype=np.uint8), (h, 1))
    with VideoWriter(path, fps=8) as vw:
        for i in range(n):  # brightens and shifts: every frame differs
            vw.write(np.roll(ramp, 3 * i, axis=1)[..., None].repeat(3, 2) + (7 * i) % 100)
    return path


def _ckpt(tmp_path):
    import _toy_methods

    _toy_methods.register()
    ckpt = tmp_path / "ckpt"
    if not ckpt.exists():
        _toy_methods.MeanDepth(offset=1.0).save_pretrained(ckpt)
    return ckpt


def _predict(clip, ckpt, out, window, save="npy,side"):
    return cli.main(["predict", str(clip), "--method", "test-mean", "--checkpoint", str(ckpt), "--out", str(out),
                     "--temporal", "align", "--temporal-window", str(window), "--save", save])


def test_streamed_outputs_equal_the_all_in_memory_ones(tmp_path):
    import _toy_methods

    clip = _clip(tmp_path / "clip.mp4", 6, 32, 48)
    out = tmp_path / "out"
    assert _predict(clip, _ckpt(tmp_path), out, 2) == 0
    names = sorted(p.name for p in out.iterdir())  # no hidden spool left
    assert names == ["clip.npz", "clip_depth.mp4", "clip_side.mp4", "predictions.json"]
    # what predict did before streaming: every frame's depth in a list, one range over all their values
    frames = list(iter_video_frames(clip))
    pipe = DepthPipeline(_toy_methods.MeanDepth(offset=1.0), processing_res=0)
    depths = [np.asarray(p.depth, np.float32) for p in pipe.video(iter(frames), temporal="align", temporal_window=2)]
    ref = tmp_path / "ref.npz"
    np.savez_compressed(ref, depth=np.stack(depths), kind=np.array("affine_invariant_depth"), fps=np.array(8.0))
    with np.load(out / "clip.npz", allow_pickle=False) as got, np.load(ref, allow_pickle=False) as want:
        assert got.files == want.files == ["depth", "kind", "fps"]
        for key in want.files:
            assert got[key].dtype == want[key].dtype and np.array_equal(got[key], want[key])
    rng = tuple(np.percentile(np.concatenate([d[valid_mask(d, "affine_invariant_depth")] for d in depths])
                              .astype(np.float64), (2.0, 98.0)))
    with VideoWriter(tmp_path / "ref_depth.mp4", fps=8) as vw:
        for d in depths:
            vw.write(colorize(d, "affine_invariant_depth", "Spectral", True, value_range=rng))
    with VideoWriter(tmp_path / "ref_side.mp4", fps=8) as vw:
        for f, d in zip(frames, depths):
            vw.write(side_by_side(np.round(f * 255).astype(np.uint8), d, "affine_invariant_depth", "Spectral", True,
                                  value_range=rng))
    for name in ("depth", "side"):
        got = list(iter_video_frames(out / f"clip_{name}.mp4"))
        want = list(iter_video_frames(tmp_path / f"ref_{name}.mp4"))
        assert len(got) == len(want) == 6
        assert all(np.array_equal(a, b) for a, b in zip(got, want))


def test_memory_stays_flat_with_the_clip_length(tmp_path, monkeypatch):
    # the shared colour range keeps a strided subsample of at most ~2x RANGE_SAMPLES values whatever the
    # length; make that cap small so that both clips reach it and only per-frame arrays could make a difference
    monkeypatch.setattr(video_mod, "RANGE_SAMPLES", 20_000)
    ckpt = _ckpt(tmp_path)
    h, w, window = 96, 128, 3
    assert _predict(_clip(tmp_path / "warm.mp4", 2, h, w), ckpt, tmp_path / "warm", window) == 0  # imports, caches
    peaks = {}
    for n in (3 * window, 12 * window):
        clip = _clip(tmp_path / f"c{n}.mp4", n, h, w)
        tracemalloc.start()
        try:
            assert _predict(clip, ckpt, tmp_path / f"o{n}", window) == 0
            peaks[n] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        with np.load(tmp_path / f"o{n}" / f"c{n}.npz") as z:
            assert z["depth"].shape == (n, h, w)
    frame = h * w * 4  # one float32 depth frame; keeping the 27 extra frames would add > 27 of them
    assert peaks[12 * window] - peaks[3 * window] < 3 * frame, peaks


def test_a_failed_video_leaves_no_spool_and_no_partial_output(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise InputError("disk full")

    monkeypatch.setattr(video_mod, "save_npz_frames", boom)
    out = tmp_path / "out"
    assert _predict(_clip(tmp_path / "clip.mp4", 3, 32, 48), _ckpt(tmp_path), out, 2, save="npy") != 0
    assert not [p.name for p in out.rglob("*") if p.name.startswith(".") or p.suffix == ".npz"]
