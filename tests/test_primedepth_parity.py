"""Parity with the official PrimeDepth code (vislearn/PrimeDepth), on a committed fixture.

``tests/fixtures/primedepth_official/`` holds a tiny official-layout ``.ckpt`` with random weights,
inputs (noisy latent, t = 1, context) at latent sizes 8x8 (batch 2), 13x13, 16x16 and 12x20, the
depth the official ``ldm`` code computed from them (``labels["depth"].mean(1)``, as its
``InferenceEngine.predict``), and one image with the official VAE posterior mode. Its README gives
the official commit and how the fixture was made. Here the checkpoint goes through
``diffdepth convert primedepth-official`` and our model must agree to 1e-5 relative.
"""
import copy
from pathlib import Path

import pytest
import torch

from diffdepth.cli import main
from diffdepth.methods.primedepth import PrimeDepth
from diffdepth.methods.primedepth.modules import set_group_norm_eps

FIXTURE = Path(__file__).parent / "fixtures" / "primedepth_official"
# the tiny official configuration's head / refiner shape (official_config.json)
OPTS = ["refiner_out_channels=32", "head_channels=[16,16,16,16]", "head_layers=1", "head_norm_groups=16",
        "seg_classes=5"]
RTOL = 1e-5


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("parity") / "converted"
    argv = ["convert", "primedepth-official", str(FIXTURE / "PrimeDepth-tiny.ckpt"), str(out),
            "--opt", f"sd_config={FIXTURE / 'sd-config'}"]
    for o in OPTS:
        argv += ["--opt", o]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def cases():
    return torch.load(FIXTURE / "cases.pt", weights_only=True)


@pytest.fixture(scope="module")
def model(converted):
    return PrimeDepth.from_pretrained(converted, noise=False)  # the fixture inputs are already noised


def _depth(model, case):
    with torch.no_grad():
        return model.depth_from_features(model.refine(None, case["context"], latent=case["latent"]))


def _vae_mode(model, case):
    with torch.no_grad():
        return model.sd.encode_image(case["image"], sample=False)


def test_converted_official_checkpoint_matches_the_official_code(model, cases):
    cfg = model.get_config()
    assert (cfg["attn_pool"], cfg["head_norm_eps"], cfg["vae_norm_eps"], cfg["latent"]) == ("official", 1e-5, 1e-5,
                                                                                             "sample")
    sizes = [k for k in cases if k != "vae"]
    assert {"8x8", "13x13", "16x16", "12x20"} <= set(sizes)
    for name in sizes:
        case = cases[name]
        assert int(case["t"][0]) == model.config["timestep"] == 1
        got = _depth(model, case)
        assert got.shape == case["depth"].shape, name
        assert rel(got, case["depth"]) < RTOL, (name, rel(got, case["depth"]))
    assert rel(_vae_mode(model, cases["vae"]), cases["vae"]["latent_mode"]) < RTOL


def test_the_departing_switches_are_measurably_different(converted, model, cases):
    """The fixture tells the switches apart: exact pooling and diffusers' 1e-6 eps miss the official output."""
    case = cases["8x8"]
    exact = PrimeDepth.from_pretrained(converted, noise=False, attn_pool="exact")
    assert rel(_depth(exact, case), case["depth"]) > 1e-2
    legacy_eps = copy.deepcopy(model)
    for head in (legacy_eps.depth_head, legacy_eps.seg_head):
        set_group_norm_eps(head, 1e-6)
    assert rel(_depth(legacy_eps, case), case["depth"]) > RTOL
    set_group_norm_eps(legacy_eps.sd.vae, 1e-6)
    assert rel(_vae_mode(legacy_eps, cases["vae"]), cases["vae"]["latent_mode"]) > RTOL
