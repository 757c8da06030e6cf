"""Parity with diffusers' MarigoldDepthPipeline (the runnable reference) on tiny random
components: same initial latents (same seeded generator draw), native resolution and a
processing resolution that resizes and pads a non-square input, both checkpoint directions
(diffusers loads ours; we load diffusers')."""
from __future__ import annotations

import json

import pytest
import torch

from diffdepth.methods.marigold import MarigoldDepth

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from diffusers import MarigoldDepthPipeline

    ours = MarigoldDepth.make_tiny(seed=2).eval()
    folder = tmp_path_factory.mktemp("ckpt") / "marigold"
    ours.save_pretrained(folder)
    pipe = MarigoldDepthPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    return ours, pipe, folder


def test_our_folder_is_a_marigold_pipeline(pair):
    ours, pipe, folder = pair
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "MarigoldDepthPipeline"
    assert index["scale_invariant"] and index["shift_invariant"] and index["prediction_type"] == "depth"
    assert pipe.default_denoising_steps == ours.config["default_denoising_steps"]
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.unet.config.in_channels == 8


@pytest.mark.parametrize("steps", [1, 3])  # 3 trailing steps: 999, 666, 332, each stepping to t - 1000 // 3
@pytest.mark.parametrize("ensemble", [1, 3])
def test_prediction_matches_diffusers(pair, steps, ensemble):
    ours, pipe, _ = pair
    n = 1 if (steps, ensemble) == (3, 3) else 2  # BFGS ensembling costs ~1 s per image (here and in diffusers)
    x = torch.rand(n, 3, 48, 32, generator=torch.Generator().manual_seed(11))
    ref = pipe(x, num_inference_steps=steps, ensemble_size=ensemble, processing_resolution=0,
               generator=torch.Generator().manual_seed(5), output_type="pt", batch_size=2,
               output_uncertainty=ensemble > 1)
    pred = ours.run(x, steps=steps, ensemble_size=ensemble, seed=5, batch_size=2)
    assert pred.depth.shape == ref.prediction.shape == (n, 1, 48, 32)
    assert (pred.depth - ref.prediction).abs().max().item() <= 1e-5
    if ensemble > 1:
        assert (pred.uncertainty - ref.uncertainty).abs().max().item() <= 1e-5
        assert ref.uncertainty.max() > 1e-4  # the members really differ: ensembling was exercised
    # the public predict() with the same seed is the same computation
    via_predict = ours.predict(x, steps=steps, ensemble_size=ensemble, seed=5, batch_size=2)
    assert torch.equal(via_predict.depth, pred.depth)


# (input H, W, processing resolution, steps): diffusers floors the processed sides (50x75 @ 40 ->
# 26x40, where rounding gives 27), pads bottom/right to 8 (-> 32x40: a 4x5 latent, odd for the
# 2-level UNet), crops and resizes back without antialiasing (also when the processing resolution
# exceeds the input: 30x20 @ 56 -> 56x37 -> padded 56x40 -> 30x20).
RESIZE_CASES = [(50, 75, 40, 2), (30, 20, 56, 1), (45, 64, 0, 1)]


@pytest.mark.parametrize("height,width,res,steps", RESIZE_CASES)
def test_pipeline_matches_diffusers_when_resizing_and_padding(pair, height, width, res, steps):
    from diffdepth import DepthPipeline

    ours, pipe, _ = pair
    x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(21))
    ref = pipe(x, num_inference_steps=steps, processing_resolution=res, generator=torch.Generator().manual_seed(6),
               output_type="pt")
    assert ref.prediction.shape == (1, 1, height, width)
    pred = DepthPipeline(ours, processing_res=res, steps=steps, seed=6)(x[0])
    assert pred.depth.shape == (height, width)
    assert abs(pred.depth - ref.prediction[0, 0].numpy()).max() <= 1e-5


def test_padded_members_are_cropped_before_ensembling_as_in_diffusers(pair, monkeypatch):
    """Ensembling with resize and padding. Marigold's scale/shift search (BFGS on numerical
    gradients of a float32 objective, in diffusers and here) turns 1e-6 differences between the
    members into up to 1e-1 in the result, so the members are compared, and our ensemble then runs
    on diffusers' members: what is left to differ is the cropping, the ensemble and the resize."""
    import diffdepth.methods.marigold.model as marigold_model
    from diffdepth import DepthPipeline

    ours, pipe, _ = pair
    x = torch.rand(1, 3, 50, 75, generator=torch.Generator().manual_seed(21))
    seen = {}
    real_theirs, real_ours = pipe.ensemble_depth, marigold_model.ensemble_affine

    def theirs(depth, *args, **kwargs):
        seen["theirs"] = depth.detach().clone()  # [E,1,PH,PW]
        return real_theirs(depth, *args, **kwargs)

    def ours_on_their_members(depth, **kwargs):
        seen["ours"] = depth.clone()
        return real_ours(seen["theirs"].clone(), **kwargs)

    monkeypatch.setattr(pipe, "ensemble_depth", theirs)
    monkeypatch.setattr(marigold_model, "ensemble_affine", ours_on_their_members)
    ref = pipe(x, num_inference_steps=1, ensemble_size=3, processing_resolution=40,
               generator=torch.Generator().manual_seed(6), output_type="pt", output_uncertainty=True)
    pred = DepthPipeline(ours, processing_res=40, steps=1, ensemble_size=3, seed=6)(x[0])
    assert seen["theirs"].shape == seen["ours"].shape == (3, 1, 26, 40)  # cropped to the processed size
    assert (seen["ours"] - seen["theirs"]).abs().max().item() <= 1e-5
    assert pred.depth.shape == pred.uncertainty.shape == (50, 75)
    assert abs(pred.depth - ref.prediction[0, 0].numpy()).max() <= 1e-6
    assert abs(pred.uncertainty - ref.uncertainty[0, 0].numpy()).max() <= 1e-6
    assert ref.uncertainty.max() > 1e-4


def test_leading_spacing_matches_diffusers(pair):
    ours, pipe, _ = pair
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(12))
    pipe.scheduler.register_to_config(timestep_spacing="leading")
    try:
        ref = pipe(x, num_inference_steps=4, processing_resolution=0, generator=torch.Generator().manual_seed(1),
                   output_type="pt")
    finally:
        pipe.scheduler.register_to_config(timestep_spacing="trailing")
    pred = ours.run(x, steps=4, timestep_spacing="leading", seed=1)
    assert (pred.depth - ref.prediction).abs().max().item() <= 1e-5


def test_we_load_a_folder_written_by_diffusers(pair, tmp_path):
    from diffusers import DDIMScheduler, MarigoldDepthPipeline

    ours, pipe, _ = pair
    # a pipeline assembled and saved by diffusers itself (no diffdepth.json), leading spacing, 3 default steps
    sched = DDIMScheduler.from_config({**pipe.scheduler.config, "timestep_spacing": "leading"})
    theirs = MarigoldDepthPipeline(unet=pipe.unet, vae=pipe.vae, scheduler=sched, text_encoder=pipe.text_encoder,
                                   tokenizer=pipe.tokenizer, prediction_type="depth", default_denoising_steps=3,
                                   default_processing_resolution=32)
    theirs.set_progress_bar_config(disable=True)
    theirs.save_pretrained(tmp_path / "theirs")
    assert not (tmp_path / "theirs" / "diffdepth.json").exists()
    loaded = MarigoldDepth.from_pretrained(tmp_path / "theirs")
    assert loaded.config["default_denoising_steps"] == 3
    assert loaded.default_processing_res == 32
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(13))
    ref = theirs(x, processing_resolution=0, generator=torch.Generator().manual_seed(2), output_type="pt")
    pred = loaded.predict(x, seed=2)  # checkpoint defaults: 3 steps, the scheduler's leading spacing
    assert pred.extras["timesteps"] == [667, 334, 1]
    assert (pred.depth - ref.prediction).abs().max().item() <= 1e-5
    # and the registry recognises the folder as marigold
    from diffdepth.registry import detect_method

    assert detect_method(tmp_path / "theirs") == "marigold"
