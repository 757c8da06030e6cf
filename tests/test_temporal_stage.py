"""Temporal stabilisation (diffdepth.temporal): robust alignment to a running reference, streamed."""
import numpy as np
import pytest
import torch

from diffdepth import cli
from diffdepth.data.benchmarks import open_benchmark
from diffdepth.errors import InputError
from diffdepth.evaluation.temporal import sequence_tae
from diffdepth.model import DepthModel
from diffdepth.pipeline import DepthPipeline
from diffdepth.temporal import TemporalAligner, robust_fit
from diffdepth.types import DepthMap, DepthPrediction


def test_robust_fit_ignores_a_moving_object():
    rng = np.random.default_rng(0)
    truth = rng.uniform(2.0, 10.0, (40, 60))
    values = (truth - 1.0) / 2.0  # the reference is 2 * values + 1
    moved = values.copy()
    moved[5:20, 10:30] = rng.uniform(0, 5, (15, 20))  # 12.5% of the pixels: an object that moved
    s, t = robust_fit("affine_invariant_depth", moved, truth, trim=0.2)
    assert s == pytest.approx(2.0, abs=1e-4) and t == pytest.approx(1.0, abs=1e-4)
    s0, t0 = robust_fit("affine_invariant_depth", moved, truth, trim=0.0)  # plain least squares is bent
    assert abs(s0 - 2.0) > 0.1
    assert robust_fit("metric_depth", moved, truth) == (1.0, 0.0)
    assert robust_fit("relative_depth", values * 3.0, truth * 1.0)[1] == 0.0


def test_window_is_bounded_and_first_frame_sets_the_scale():
    aligner = TemporalAligner(window=3)
    base = np.linspace(1, 2, 200).reshape(10, 20)
    for k in range(10):
        out = aligner(DepthMap(base * (1 + 0.1 * k) + k, "affine_invariant_depth"))
        np.testing.assert_allclose(out.depth, base, atol=1e-5)
        assert len(aligner.window) == min(k + 1, 3)
    with pytest.raises(InputError, match="window"):
        TemporalAligner(window=0)


class GroundTruthReplay(DepthModel):
    """Returns frame k's ground truth (resized to the input) under a new scale and shift every call."""

    method = "test-replay"
    output_kind = "affine_invariant_depth"
    size_multiple = 16
    min_size = 16
    default_processing_res = 0

    def __init__(self, depths):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))
        self.depths, self.k = depths, 0
        self.rng = np.random.default_rng(1)

    def predict(self, images):
        d = torch.from_numpy(self.depths[self.k]).float()[None, None]
        self.k += 1
        d = torch.nn.functional.interpolate(d, size=images.shape[-2:], mode="nearest")
        return DepthPrediction(d * float(self.rng.uniform(0.6, 1.4)) + float(self.rng.uniform(-3, 3)), self.output_kind)


def test_align_removes_the_flicker_the_tae_measures(tmp_path):
    assert cli.main(["synth", str(tmp_path), "--kind", "sequence", "--n", "6", "--size", "48x160", "--seed", "2"]) == 0
    samples = list(open_benchmark("kitti_mono2_improved", tmp_path, tmp_path / "test_files.txt"))
    gts = [np.where(s["depth"][0] > 0, s["depth"][0], 80.0) for s in samples]  # dense, sky at the far limit
    frames = [np.ascontiguousarray(s["image"].transpose(1, 2, 0)) for s in samples]
    masks = [s["depth"][0] > 0 for s in samples]
    tae = {}
    for mode in ("none", "align"):
        pipe = DepthPipeline(GroundTruthReplay(gts), processing_res=0)
        preds = [p.depth for p in pipe.video(iter(frames), temporal=mode, temporal_window=3)]
        errors = sequence_tae(preds, gts, masks, [s["pose"] for s in samples], [s["intrinsics"] for s in samples],
                              "lsq", 1e-3, 80.0)
        tae[mode] = float(np.mean(errors))
    assert tae["align"] < 0.05 < 0.2 < tae["none"]
    with pytest.raises(InputError, match="temporal mode"):
        next(DepthPipeline(GroundTruthReplay(gts)).video(iter(frames), temporal="smooth"))


def test_cli_predict_video_with_temporal_align(tmp_path):
    import _toy_methods
    from diffdepth.io.video import VideoWriter

    _toy_methods.register()
    ckpt = tmp_path / "ckpt"
    _toy_methods.MeanDepth(offset=1.0).save_pretrained(ckpt)
    clip = tmp_path / "clip.mp4"
    with VideoWriter(clip, fps=8) as vw:
        for i in range(5):  # the whole frame brightens: MeanDepth's depth rises with it
            vw.write(np.tile(np.linspace(20, 120, 48, dtype=np.uint8), (32, 1))[..., None].repeat(3, 2) + 20 * i)
    runs = {}
    for mode in ("none", "align"):
        out = tmp_path / mode
        assert cli.main(["predict", str(clip), "--method", "test-mean", "--checkpoint", str(ckpt), "--out", str(out),
                         "--temporal", mode, "--temporal-window", "2"]) == 0
        runs[mode] = np.load(out / "clip.npz")["depth"]
    assert runs["none"].shape == runs["align"].shape == (5, 32, 48)
    # the brightening is an affine change of the prediction: align maps every frame onto the first
    assert np.ptp(runs["none"].mean((1, 2))) > 0.2
    np.testing.assert_allclose(runs["align"], runs["align"][:1].repeat(5, 0), atol=0.02)
    assert cli.main(["predict", str(clip), "--method", "test-mean", "--checkpoint", str(ckpt), "--out",
                     str(tmp_path / "bad"), "--temporal-window", "0"]) == 2


def test_align_plus_latent_is_the_alignment_of_marigolds_latent_blended_frames():
    from diffdepth.methods.marigold import MarigoldDepth

    model = MarigoldDepth.make_tiny(seed=0).eval()
    calls = []
    hook = model.video_step

    def spy(images, state=None, **options):
        calls.append(state is None)
        return hook(images, state, **options)

    model.video_step = spy
    g = torch.Generator().manual_seed(3)
    frames = [(torch.rand(32, 32, 3, generator=g).numpy() * (0.4 + 0.15 * k)).astype(np.float32) for k in range(4)]
    out = {}
    for mode in ("latent", "align", "align+latent"):
        calls.clear()
        pipe = DepthPipeline(model, processing_res=32, seed=0)
        out[mode] = [np.asarray(p.depth, np.float32) for p in pipe.video(iter(frames), temporal=mode,
                                                                        temporal_window=2)]
        # the hook runs on every frame, with the state carried from the first one on, only with latent blending
        assert calls == ([True, False, False, False] if mode.endswith("latent") else [])
    aligner = TemporalAligner(window=2)
    expect = [aligner(DepthMap(d, "affine_invariant_depth")).depth for d in out["latent"]]
    for k in range(4):  # align+latent = the alignment stage applied to the latent-blended frames
        np.testing.assert_allclose(out["align+latent"][k], expect[k], atol=1e-5)
    for other in ("latent", "align"):
        assert max(np.abs(a - b).max() for a, b in zip(out["align+latent"], out[other])) > 1e-3
