import numpy as np
import pytest
import torch
from PIL import Image

from diffdepth.errors import InputError
from diffdepth.pipeline import DepthPipeline, fit_long_side, pad_to_multiple, unpad

from _toy_methods import MeanDepth


def test_pad_unpad_round_trip_is_symmetric():
    x = torch.arange(37 * 53, dtype=torch.float32).reshape(1, 1, 37, 53)
    y, pads = pad_to_multiple(x, 16)
    assert y.shape[-2:] == (48, 64)
    assert pads == (5, 6, 5, 6)  # (64-53)=11 -> 5 left/6 right; (48-37)=11 -> 5 top/6 bottom
    torch.testing.assert_close(unpad(y, pads), x)
    assert torch.equal(y[..., 0, 0], x[..., 0, 0])  # replicate padding


def test_fit_long_side():
    assert fit_long_side(480, 640, 320) == (240, 320)
    assert fit_long_side(53, 37, 106) == (106, 74)


def test_odd_size_native_resolution_is_exact():
    rng = np.random.default_rng(0)
    img = rng.random((37, 53, 3)).astype(np.float32)
    model = MeanDepth()
    pred = DepthPipeline(model, processing_res=0)(img)
    assert pred.depth.shape == (37, 53) and pred.depth.dtype == np.float32
    np.testing.assert_allclose(pred.depth, img.mean(2) + 1.0, atol=1e-6)
    assert model.seen_shapes[-1] == (1, 3, 48, 64)
    assert pred.uncertainty.shape == (37, 53)


def test_processing_resolution_resizes_back_to_input_size():
    img = np.full((40, 80, 3), 0.25, np.float32)
    img[:, 40:] = 0.75  # two halves
    model = MeanDepth()
    pred = DepthPipeline(model, processing_res=32)(img)
    assert model.seen_shapes[-1] == (1, 3, 16, 32)  # 16x32 is already a multiple of 16
    assert pred.depth.shape == (40, 80)
    assert pred.depth[:, :30].max() == pytest.approx(1.25, abs=1e-5)
    assert pred.depth[:, 50:].min() == pytest.approx(1.75, abs=1e-5)


def test_processing_resolution_as_a_cap_only_shrinks():
    class Capped(MeanDepth):
        processing_res_is_cap = True

    model = Capped()
    DepthPipeline(model, processing_res=64)(np.zeros((48, 40, 3), np.float32))
    assert model.seen_shapes[-1] == (1, 3, 48, 48)  # kept at 48x40, padded to 48x48
    DepthPipeline(model, processing_res=64)(np.zeros((96, 80, 3), np.float32))
    assert model.seen_shapes[-1] == (1, 3, 64, 64)  # shrunk to 64x53, padded to 64x64


def test_inputs_in_every_form_and_batching(tmp_path):
    rng = np.random.default_rng(1)
    a = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    b16 = (rng.random((32, 48)) * 65535).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "a.png")
    pil = Image.fromarray(a)
    t = torch.from_numpy(a).permute(2, 0, 1).float() / 255
    model = MeanDepth()
    pipe = DepthPipeline(model, processing_res=0, batch_size=4)
    preds = pipe([str(tmp_path / "a.png"), pil, a, t, b16, torch.stack([t, t])])
    assert len(preds) == 7
    ref = a.astype(np.float32).mean(2) / 255 + 1
    for p in preds[:4] + preds[5:]:
        np.testing.assert_allclose(p.depth, ref, atol=1e-5)
    np.testing.assert_allclose(preds[4].depth, b16 / 65535 + 1, atol=1e-5)  # grayscale 16-bit
    # a batch holds only equal processed sizes: 32x32 x4, then 32x48, then 32x32 x2
    assert [s[0] for s in model.seen_shapes] == [4, 1, 2]


def test_rgba_cmyk_and_exif_rotation_come_back_at_input_size(tmp_path):
    rgba = np.zeros((21, 35, 4), np.uint8)
    rgba[..., 3] = 0  # fully transparent -> white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    Image.new("CMYK", (35, 21), (0, 0, 0, 0)).save(tmp_path / "c.tiff")  # CMYK white
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    im.save(tmp_path / "r.jpg", exif=exif)
    pipe = DepthPipeline(MeanDepth(), processing_res=0)
    t, c, r = pipe([tmp_path / "t.png", tmp_path / "c.tiff", tmp_path / "r.jpg"])
    np.testing.assert_allclose(t.depth, 2.0, atol=1e-6)
    np.testing.assert_allclose(c.depth, 2.0, atol=1e-6)
    assert r.depth.shape == (40, 20)


def test_minimum_size_and_bad_inputs(tmp_path):
    pipe = DepthPipeline(MeanDepth(), processing_res=0)
    with pytest.raises(InputError, match=r"10x12 px.*at least 16 px"):
        pipe(np.zeros((12, 10, 3), np.float32))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="bad.png"):
        pipe(str(tmp_path / "bad.png"))
    with pytest.raises(InputError, match="tensor"):
        pipe(torch.zeros(5, 32, 32))
    with pytest.raises(InputError, match="do not apply"):
        DepthPipeline(MeanDepth(), steps=3)
    errors = []
    preds = list(DepthPipeline(MeanDepth(), processing_res=0).iter_predictions(
        [np.zeros((32, 32, 3), np.float32), str(tmp_path / "bad.png"), np.ones((32, 32, 3), np.float32)],
        on_error=lambda i, x, e: errors.append(i)))
    assert errors == [1] and [it.index for it, _ in preds] == [0, 2]


def test_options_and_extras_follow_the_input_size():
    img = np.random.default_rng(2).random((33, 17, 3)).astype(np.float32)
    pred = DepthPipeline(MeanDepth(), processing_res=0, scale=2.0, with_segmentation=True)(img)
    np.testing.assert_allclose(pred.depth, (img.mean(2) + 1) * 2, atol=1e-5)
    seg = pred.extras["segmentation"]
    assert seg.shape == (33, 17)
    np.testing.assert_array_equal(seg, (img[..., 0] > 0.5).astype(np.float32))


def test_video_frames_go_through_the_temporal_hook():
    calls = []

    class Stateful(MeanDepth):
        def video_step(self, images, state=None, **opts):
            calls.append(state)
            return self.predict(images, **opts), (state or 0) + 1

    frames = [np.full((32, 32, 3), v, np.float32) for v in (0.0, 0.5, 1.0)]
    preds = list(DepthPipeline(Stateful(), processing_res=0).video(frames))
    assert calls == [None, 1, 2]
    assert [float(p.depth.mean()) for p in preds] == pytest.approx([1.0, 1.5, 2.0])


def test_two_contracts_batched_prediction_and_one_image_map():
    import diffdepth
    from diffdepth.types import DepthMap, DepthPrediction

    model = MeanDepth()
    out = model.predict(torch.rand(2, 3, 16, 32))
    assert isinstance(out, DepthPrediction) and tuple(out.depth.shape) == (2, 1, 16, 32)
    pred = DepthPipeline(model, processing_res=0)(np.zeros((20, 30, 3), np.float32))
    assert isinstance(pred, DepthMap) and pred.depth.shape == (20, 30) and pred.depth.dtype == np.float32
    assert pred.uncertainty.shape == (20, 30)
    with pytest.raises(ValueError, match=r"DepthMap.depth is \[H,W\]"):
        DepthMap(out.depth, out.kind)
    with pytest.raises(ValueError, match=r"DepthPrediction.depth is \[B,1,H,W\]"):
        DepthPrediction(pred.depth, pred.kind)
    assert diffdepth.DepthPrediction is DepthPrediction and diffdepth.DepthMap is DepthMap
