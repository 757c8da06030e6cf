"""DiffSQL on the Monodepth2 protocol: exact 640x192 input (no padding), Monodepth2's flip
post-processing (edge ramps) and disparity-space resizing, checked against hand computations."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffdepth.errors import ConfigError, InputError
from diffdepth.evaluation.protocols import get_protocol
from diffdepth.evaluation.runner import evaluate_sample, resize_prediction
from diffdepth.methods.diffsql import DiffSQL
from diffdepth.methods.diffsql.model import post_process_disparity
from diffdepth.methods.diffsql.task import DiffSQLTask
from diffdepth.pipeline import DepthPipeline
from diffdepth.types import DepthPrediction


@pytest.fixture(scope="module")
def tiny():
    return DiffSQL.make_tiny(seed=0).eval()


def _record_inputs(model, monkeypatch):
    """Replace ``model.predict`` by a recorder: depth 1 on even columns, 4 on odd ones, at the input size."""
    seen = []

    def predict(images, **options):
        seen.append(images.detach().clone())
        b, _, h, w = images.shape
        depth = 1.0 + 3.0 * (torch.arange(w) % 2).float().expand(b, 1, h, w)
        return DepthPrediction(depth=depth, kind="relative_depth")

    monkeypatch.setattr(model, "predict", predict)
    return seen


# ------------------------------------------------------------------ 1. exact input size
def test_kitti_frame_is_fed_at_exactly_640x192_with_nothing_padded(tiny, monkeypatch):
    assert tiny.fixed_input_size == (192, 640)
    frame = np.random.default_rng(0).random((375, 1242, 3)).astype(np.float32)
    seen = _record_inputs(tiny, monkeypatch)
    pred = DepthPipeline(tiny)(frame)
    assert [tuple(x.shape) for x in seen] == [(1, 3, 192, 640)]
    # the whole frame, squeezed to 640x192 (antialiased bilinear) — no replicated rows or columns
    ref = F.interpolate(torch.from_numpy(frame).permute(2, 0, 1)[None], size=(192, 640), mode="bilinear",
                        align_corners=False, antialias=True).clamp(0, 1)
    assert torch.allclose(seen[0], ref, atol=1e-6)
    assert not torch.equal(seen[0][..., -1, :], seen[0][..., -2, :])  # the last row is not padding
    assert pred.depth.shape == (375, 1242)


def test_explicit_processing_resolution_keeps_the_padded_path_and_bad_sizes_are_refused(tiny, monkeypatch):
    seen = _record_inputs(tiny, monkeypatch)
    DepthPipeline(tiny, processing_res=640)(np.zeros((375, 1242, 3), np.float32))
    assert tuple(seen[-1].shape) == (1, 3, 224, 640)  # 640x193 padded to the size multiple (32)
    DepthPipeline(tiny, input_size=(96, 320))(np.zeros((375, 1242, 3), np.float32))
    assert tuple(seen[-1].shape) == (1, 3, 96, 320)
    with pytest.raises(InputError, match="multiples of 32"):
        DepthPipeline(tiny, input_size=(100, 320))
    with pytest.raises(InputError, match="not both"):
        DepthPipeline(tiny, processing_res=640, input_size=(192, 640))
    with pytest.raises(ConfigError, match="multiples of 32"):
        DiffSQL.make_tiny(seed=0, input_size=[190, 640])
    free = DiffSQL.make_tiny(seed=0, input_size=None)
    assert free.fixed_input_size is None and DepthPipeline(free).input_size is None


def test_training_triplets_are_resized_to_the_input_size_with_their_intrinsics(tiny):
    rng = np.random.default_rng(0)
    frames = rng.random((3, 3, 375, 1242)).astype(np.float32)
    K = np.array([[721.5, 0, 609.6], [0, 721.5, 172.9], [0, 0, 1]], np.float32)
    depth = rng.random((3, 1, 375, 1242)).astype(np.float32) * 80
    out = DiffSQLTask(tiny, jitter=0.0, flip=0.0).transform({"frames": frames, "intrinsics": K, "depth": depth},
                                                             np.random.default_rng(0))
    assert tuple(out["frames"].shape) == (3, 3, 192, 640) and tuple(out["frames_aug"].shape) == (3, 3, 192, 640)
    assert tuple(out["depth"].shape) == (3, 1, 192, 640)
    sx, sy = 640 / 1242, 192 / 375
    # first row by W'/W, second by H'/H (Monodepth2: K normalised by the frame, times the network size)
    expected = np.array([[721.5 * sx, 0, 609.6 * sx], [0, 721.5 * sy, 172.9 * sy], [0, 0, 1]])
    np.testing.assert_allclose(np.asarray(out["intrinsics"]), expected, rtol=1e-6)


# ------------------------------------------------------------------ 2. flip post-processing
def test_post_process_ramps_by_hand_on_odd_width():
    # W = 41: x = i/40, left mask 1 - clip(20 (x - 0.05), 0, 1) = 1, 1, 1, 0.5, 0, ... (x = 0, .025, .05, .075, .1)
    d = torch.full((1, 2, 41), 2.0)  # disparity of the image
    f = torch.full((1, 2, 41), 4.0)  # of the mirrored image, mirrored back
    out = post_process_disparity(d, f)[0, 0].tolist()
    expected = [4.0, 4.0, 4.0, 0.5 * 4 + 0.5 * 3] + [3.0] * 33 + [0.5 * 2 + 0.5 * 3, 2.0, 2.0, 2.0]
    assert out == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("w, expected", [
    (1, [3.0]),                # both masks 1: d + f - (d + f)/2, the mean
    (2, [4.0, 2.0]),           # left column from the mirrored prediction, right from the original
    (3, [4.0, 3.0, 2.0]),
    (21, [4.0, 4.0] + [3.0] * 17 + [2.0, 2.0]),  # x = 0, .05 -> 1; x = .1 -> 0: no intermediate value
])
def test_post_process_small_widths_by_hand(w, expected):
    out = post_process_disparity(torch.full((1, w), 2.0), torch.full((1, w), 4.0))[0].tolist()
    assert out == pytest.approx(expected, abs=1e-6)


def test_predict_flip_uses_the_ramps_in_disparity(tiny):
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        d = tiny.depth_full(x)
        dm = torch.flip(tiny.depth_full(torch.flip(x, dims=[-1])), dims=[-1])
    got = tiny.predict(x, flip=True).depth
    # by hand on the 96 columns: x = i/95; left mask 1 for i <= 4 (x <= .0526 -> 20(x-.05) <= .053),
    # col 5..9 ramp, 0 from col 10 (x >= .105)
    cols = torch.arange(96, dtype=torch.float64) / 95
    left = (1 - torch.clamp(20 * (cols - 0.05), 0, 1)).float()
    right = left.flip(0)
    disp = right / d + left / dm + (1 - left - right) * 0.5 * (1 / d + 1 / dm)
    assert torch.allclose(got, 1 / disp, rtol=1e-5)
    assert torch.allclose(got[..., :2], dm[..., :2], rtol=1e-5)  # left border: the mirrored prediction only
    assert torch.allclose(got[..., -2:], d[..., -2:], rtol=1e-5)  # right border: the original only
    mid = 2 / (1 / d + 1 / dm)
    assert torch.allclose(got[..., 20:76], mid[..., 20:76], rtol=1e-5)


# ------------------------------------------------------------------ 2. disparity-space resizing
def test_resize_in_disparity_by_hand():
    # 1x2 -> 1x4, bilinear with half-pixel centres: source x = -.25, .25, .75, 1.25 (clamped)
    got = resize_prediction(np.array([[1.0, 4.0]]), (1, 4), "disparity", "relative_depth")[0]
    disp = [1.0, 0.75 * 1 + 0.25 * 0.25, 0.25 * 1 + 0.75 * 0.25, 0.25]
    np.testing.assert_allclose(got, [1 / v for v in disp], rtol=1e-12)
    depth_space = resize_prediction(np.array([[1.0, 4.0]]), (1, 4), "bilinear")[0]
    np.testing.assert_allclose(depth_space, [1.0, 1.75, 3.25, 4.0], rtol=1e-12)
    # affine-invariant depth has no meaningful inverse: resized as it is
    affine = resize_prediction(np.array([[1.0, 4.0]]), (1, 4), "disparity", "affine_invariant_depth")[0]
    np.testing.assert_allclose(affine, depth_space)
    # a non-positive depth is disparity 0 and never becomes inf / nan
    bad = resize_prediction(np.array([[0.0, 0.0], [2.0, 2.0]]), (2, 2), "disparity", "relative_depth")
    np.testing.assert_array_equal(bad, [[0.0, 0.0], [2.0, 2.0]])


def test_monodepth2_protocols_resize_disparity():
    for name in ("kitti_mono2", "kitti_mono2_improved"):
        p = get_protocol(name)
        assert p.pred_resize == "disparity" and p.processing_res is None and p.alignment == "median"
    assert get_protocol("kitti_eigen").pred_resize == "bilinear"
    # a 2x3 prediction scored on 4x6 ground truth: equal to the hand-resized disparity, inverted
    gt = np.linspace(2.0, 30.0, 24).reshape(4, 6)
    pred = np.array([[1.0, 2.0, 4.0], [3.0, 5.0, 8.0]])
    p = get_protocol("kitti_mono2").with_overrides(crop="none")
    rec = evaluate_sample({"name": "a", "depth": gt}, pred, "relative_depth", p)
    disp = F.interpolate(torch.tensor(1 / pred)[None, None], size=(4, 6), mode="bilinear", align_corners=False)[0, 0]
    ref = evaluate_sample({"name": "a", "depth": gt}, (1 / disp).numpy(), "relative_depth", p)
    assert rec.resized and rec.metrics == pytest.approx(ref.metrics, rel=1e-12)
    dep = evaluate_sample({"name": "a", "depth": gt}, pred, "relative_depth", p.with_overrides(pred_resize="bilinear"))
    assert dep.metrics["abs_rel"] != pytest.approx(rec.metrics["abs_rel"], rel=1e-6)


def test_pipeline_maps_back_in_disparity_when_asked(tiny, monkeypatch):
    _record_inputs(tiny, monkeypatch)  # depth 1, 4, 1, 4, ... over the 640 columns
    frame = np.zeros((375, 1242, 3), np.float32)
    d = DepthPipeline(tiny, resize_space="disparity")(frame).depth
    col = 1.0 + 3.0 * (torch.arange(640) % 2).float()
    ref = 1 / F.interpolate((1 / col).expand(1, 1, 192, 640), size=(375, 1242), mode="bilinear",
                            align_corners=False)[0, 0]
    assert np.allclose(d, ref.numpy(), rtol=1e-5)
    plain = DepthPipeline(tiny)(frame).depth  # depth space: the mean of 1 and 4 is 2.5, in disparity 1.6
    ref_plain = F.interpolate(col.expand(1, 1, 192, 640), size=(375, 1242), mode="bilinear", align_corners=False)[0, 0]
    assert np.allclose(plain, ref_plain.numpy(), rtol=1e-5) and np.abs(plain - d).max() > 0.5
    with pytest.raises(InputError):
        DepthPipeline(tiny, resize_space="log")


# ------------------------------------------------------------------ CLI: kitti_mono2 feeds 640x192
def test_eval_kitti_mono2_on_synth_sequence_feeds_640x192(tmp_path, monkeypatch):
    from diffdepth.cli import main

    data, ck, out = tmp_path / "seq", tmp_path / "tiny-ds", tmp_path / "eval"
    assert main(["synth", str(data), "--kind", "sequence", "--n", "3", "--size", "96x320", "--quiet"]) == 0
    assert main(["make-tiny", str(ck), "--method", "diffsql"]) == 0
    seen = []
    real = DiffSQL.predict

    def spy(self, images, **options):
        seen.append(tuple(images.shape))
        return real(self, images, **options)

    monkeypatch.setattr(DiffSQL, "predict", spy)
    import diffdepth.pipeline as pipeline_module

    spaces = []
    real_resize = pipeline_module.resize_depth

    def resize_spy(x, size, space="depth", **kwargs):
        spaces.append(space)
        return real_resize(x, size, space, **kwargs)

    monkeypatch.setattr(pipeline_module, "resize_depth", resize_spy)
    assert main(["eval", "--dataset", "kitti_mono2", "--data-root", str(data), "--split-file",
                 str(data / "test_files.txt"), "--method", "diffsql", "--checkpoint", str(ck), "--flip",
                 "--max-samples", "2", "--no-progress", "--device", "cpu", "--out", str(out)]) == 0
    assert seen == [(1, 3, 192, 640)] * 2
    assert spaces == ["disparity"] * 2  # the depth mapped back to the frame as disparity (Monodepth2)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["input_size"] == [192, 640] and summary["protocol"]["pred_resize"] == "disparity"
    assert summary["alignments"] == ["median"] and summary["counts"]["resized_predictions"] == 0
    # what was scored: the flip-post-processed prediction mapped back to 320x96 in disparity
    from diffdepth.data.benchmarks import open_benchmark

    sample = open_benchmark("kitti_mono2", data, data / "test_files.txt")[0]
    saved = np.load(out / "predictions" / f"{sample['name']}.npy")
    image = np.ascontiguousarray(np.asarray(sample["image"], np.float32).transpose(1, 2, 0))
    model = DiffSQL.from_pretrained(ck)
    ref = DepthPipeline(model, resize_space="disparity", flip=True)(image).depth
    assert saved.shape == (96, 320) and np.allclose(saved, ref, rtol=1e-5)
