"""Inference fast paths (diffdepth.fast): each switch against the plain fp32 model on CPU."""
import copy

import pytest
import torch

from diffdepth.errors import InputError
from diffdepth.fast import apply_fast_paths, compile_targets, vaes_of
from diffdepth.methods.marigold import MarigoldDepth
from diffdepth.methods.primedepth import PrimeDepth


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 48)
    out = {}
    for name, cls, opts in (("primedepth", PrimeDepth, {"seed": 0}), ("marigold", MarigoldDepth, {"seed": 0, "steps": 2})):
        model = cls.make_tiny(seed=0).eval()
        with torch.inference_mode():
            ref = model.predict(x, **opts).depth
        out[name] = (model, opts, ref)
    return x, out


def _run(model, x, opts):
    with torch.inference_mode():
        return model.predict(x, **opts).depth.float()


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("method", ["primedepth", "marigold"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_end_to_end_within_the_dtype_tolerance(models, method, dtype):
    x, got = models
    model, opts, ref = got[method]
    fast = apply_fast_paths(copy.deepcopy(model), dtype=dtype)
    unet = fast.sd.unet
    vae = vaes_of(fast)[0]
    assert next(unet.parameters()).dtype == dtype
    # bf16 runs the VAE in bf16 too; fp16 keeps SD's VAE in fp32 (force_upcast: it overflows in fp16)
    assert next(vae.parameters()).dtype == (torch.float32 if dtype == torch.float16 else torch.bfloat16)
    assert fast.fast_paths.vae_dtype == next(vae.parameters()).dtype
    depth = _run(fast, x, opts)
    assert torch.isfinite(depth).all()
    # measured relative L2 error: ~12 eps on the tiny PrimeDepth, < 1 eps on the tiny Marigold
    assert _rel(depth, ref) < 25 * torch.finfo(dtype).eps


@pytest.mark.parametrize("method", ["primedepth", "marigold"])
def test_channels_last_and_vae_slicing_give_the_same_depth(models, method):
    x, got = models
    model, opts, ref = got[method]
    fast = apply_fast_paths(copy.deepcopy(model), channels_last=True, vae_slicing=True)
    conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(v.use_slicing for v in vaes_of(fast))
    torch.testing.assert_close(_run(fast, x.contiguous(memory_format=torch.channels_last), opts), ref,
                               rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_vae_tiling_only_above_the_threshold(models):
    x, got = models
    model, opts, ref = got["marigold"]
    calls = []
    below = apply_fast_paths(copy.deepcopy(model), vae_tiling_above=64)  # 32x48 is not above 64
    above = apply_fast_paths(copy.deepcopy(model), vae_tiling_above=32)
    for m in (below, above):
        vae = m.sd.vae
        for name in ("_tiled_encode", "tiled_decode"):
            orig = getattr(vae, name)
            setattr(vae, name, lambda *a, _o=orig, _n=name, **k: (calls.append(_n), _o(*a, **k))[1])
    assert torch.equal(_run(below, x, opts), ref) and calls == []
    depth = _run(above, x, opts)
    assert set(calls) == {"_tiled_encode", "tiled_decode"}
    assert depth.shape == ref.shape and torch.isfinite(depth).all()
    assert above.sd.vae.tile_sample_min_size == 32 and above.sd.vae.tile_latent_min_size == 32 // above.latent_factor
    with pytest.raises(InputError, match="multiple of 32 px"):
        apply_fast_paths(copy.deepcopy(model), vae_tiling_above=48)


def test_compile_wires_through_and_keeps_the_taps(models):
    """torch.compile of every hook-free part; the 'eager' backend runs dynamo's tracing without
    inductor's C++ build, so the graphs are checked, not codegen. Inductor itself was checked by hand
    on this shared 2-core CPU: first call 97 s (tiny Marigold) / 150 s (tiny PrimeDepth), outputs equal
    to 1.6e-6 / 2.6e-6 relative — too slow for the suite."""
    x, got = models
    model, opts, ref = got["primedepth"]
    fast = copy.deepcopy(model)
    targets = compile_targets(fast)
    names = {type(m).__name__ for m in targets}
    # PrimeDepth hooks its UNet: only hook-free UNet blocks are compiled, never the UNet or a transformer
    assert {"ResnetBlock2D", "RefinerLayer", "Decoder", "Encoder"} <= names
    assert not names & {"UNet2DConditionModel", "Transformer2DModel", "Attention"}
    apply_fast_paths(fast, compile=True, compile_backend="eager")
    assert fast.fast_paths.compiled == len(targets) and all(m._diffdepth_compiled for m in targets)
    torch.testing.assert_close(_run(fast, x, opts), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    assert set(fast.state_dict()) == set(model.state_dict())  # checkpoints are unchanged
    # Marigold's UNet has no hooks: it is compiled whole
    assert any(type(m).__name__ == "UNet2DConditionModel" for m in compile_targets(got["marigold"][0]))


def test_cuda_graphs_are_refused_off_cuda(models):
    with pytest.raises(InputError, match="CUDA graphs need the model on a CUDA device"):
        apply_fast_paths(copy.deepcopy(models[1]["marigold"][0]), cuda_graphs=True)


def test_predict_fast_path_flags(tmp_path, capsys):
    from diffdepth.cli import main

    import numpy as np
    from PIL import Image

    ckpt = tmp_path / "tiny"
    PrimeDepth.make_tiny(seed=0).save_pretrained(ckpt)
    Image.fromarray((np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    outs = {}
    for tag, flags in (("plain", []), ("fast", ["--dtype", "bf16", "--channels-last", "--vae-slicing",
                                                 "--vae-tiling-above", "512"])):
        assert main(["predict", str(tmp_path / "a.png"), "--checkpoint", str(ckpt), "--out", str(tmp_path / tag),
                     "--save", "npy", *flags]) == 0
        outs[tag] = torch.from_numpy(np.load(tmp_path / tag / "a.npy"))
    assert _rel(outs["fast"], outs["plain"]) < 25 * torch.finfo(torch.bfloat16).eps
    assert main(["predict", str(tmp_path / "a.png"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "g"),
                 "--cuda-graphs", "--device", "cpu"]) == 2
    assert "CUDA graphs need" in capsys.readouterr().err
