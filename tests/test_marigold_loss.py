"""Marigold's training loss values against hand computations from the UNet call the task makes
(Ke et al. 2024, Sec. 3.2; Garcia et al. 2024, Sec. 4): the diffusion objective is the MSE of the
predicted velocity v = √ᾱ ε − √(1−ᾱ) z₀ over fully valid latent cells; the end-to-end objective decodes
the one-step x̂₀ from a zero latent at t = T−1 and scores it with an affine-invariant L1."""
import numpy as np
import pytest
import torch

from diffdepth.methods.marigold import MarigoldDepth

# SD's schedule (the tiny backbone's): scaled_linear betas 0.00085 .. 0.012 over T = 1000 steps
T = 1000
ALPHA_BAR = torch.cumprod(1 - torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T, dtype=torch.float64) ** 2, 0)


@pytest.fixture(scope="module")
def model():
    return MarigoldDepth.make_tiny(seed=0).train()


def _part(model, name):
    """The UNet / VAE, held by the model or by its backbone wrapper."""
    return getattr(model, name, None) or getattr(model.sd, name)


def _batch():
    g = torch.Generator().manual_seed(0)
    valid = torch.ones(2, 1, 32, 32, dtype=torch.bool)
    valid[1, :, 3:5, 10:20] = False  # image 1 loses latent cells (rows 0, columns 1-2 at factor 8)
    return {"image": torch.rand(2, 3, 32, 32, generator=g), "depth": 1.0 + 9.0 * torch.rand(2, 1, 32, 32, generator=g),
            "valid": valid}


def _unet_call(model, task, batch):
    """Run the task once, recording the UNet's input, timestep and output."""
    seen = {}

    def hook(module, args, kwargs, output):
        seen["x"], seen["t"] = args[0].detach(), (args[1] if len(args) > 1 else kwargs["timestep"])
        seen["out"] = (output[0] if isinstance(output, tuple) else output.sample).detach()

    handle = _part(model, "unet").register_forward_hook(hook, with_kwargs=True)
    try:
        result = task(batch)
    finally:
        handle.remove()
    return result, seen


def _latents(model, batch):
    """By hand: posterior-mode latents (x0.18215 of the VAE config) of the image and of the depth
    normalised per image to [-1, 1] by its 2 % / 98 % valid quantiles (clipped, invalid = -1)."""
    vae = _part(model, "vae")
    sf = vae.config.scaling_factor
    norm = torch.full_like(batch["depth"], -1.0)
    for i, (d, m) in enumerate(zip(batch["depth"], batch["valid"])):
        lo, hi = np.quantile(d[m].double().numpy(), [0.02, 0.98])
        norm[i][m] = (2 * (d[m] - lo) / (hi - lo) - 1).clamp(-1, 1).float()
    with torch.no_grad():
        z_img = vae.encode(batch["image"] * 2 - 1).latent_dist.mode() * sf
        z_depth = vae.encode(norm.repeat(1, 3, 1, 1)).latent_dist.mode() * sf
    return z_img, z_depth, norm


def test_diffusion_loss_is_the_velocity_mse_over_valid_latent_cells(model):
    batch = _batch()
    task = model.make_training_task(objective="diffusion", multi_res_noise=False, flip_prob=0.0)
    out, seen = _unet_call(model, task, batch)
    z_img, z0, _ = _latents(model, batch)
    x, t = seen["x"].double(), torch.as_tensor(seen["t"]).long().reshape(-1).expand(2)
    torch.testing.assert_close(x[:, :4], z_img.double(), rtol=1e-4, atol=1e-4)  # image latent first
    a = ALPHA_BAR[t].view(-1, 1, 1, 1)
    noisy = x[:, 4:]
    eps = (noisy - a.sqrt() * z0.double()) / (1 - a).sqrt()  # the noise that made z_t = √ᾱ z₀ + √(1−ᾱ) ε
    assert 0.7 < float(eps.std()) < 1.3 and abs(float(eps.mean())) < 0.3  # a standard normal draw
    v = a.sqrt() * eps - (1 - a).sqrt() * z0.double()
    cells = batch["valid"].reshape(2, 1, 4, 8, 4, 8).all(3).all(4).expand(-1, 4, -1, -1)  # [B,4,4,4]
    assert int((~cells[:, 0]).sum()) == 2
    expected = ((seen["out"].double() - v) ** 2)[cells].mean()
    assert float(out["loss"].detach()) == pytest.approx(float(expected), rel=1e-4)


def test_e2e_loss_is_the_affine_invariant_l1_of_the_one_step_prediction(model):
    batch = _batch()
    task = model.make_training_task(objective="e2e", flip_prob=0.0)
    out, seen = _unet_call(model, task, batch)
    z_img, _, norm = _latents(model, batch)
    x, t = seen["x"], torch.as_tensor(seen["t"]).reshape(-1)
    assert bool((t == T - 1).all()) and bool((x[:, 4:] == 0).all())  # t = T−1 from a zero depth latent
    torch.testing.assert_close(x[:, :4], z_img, rtol=1e-4, atol=1e-4)
    # v-prediction at z_t = 0: x̂₀ = √ᾱ z_t − √(1−ᾱ) v = −√(1−ᾱ_{T−1}) v
    x0 = -(1 - ALPHA_BAR[T - 1]).sqrt().float() * seen["out"]
    with torch.no_grad():
        vae = _part(model, "vae")
        pred = vae.decode(x0 / vae.config.scaling_factor).sample.mean(1, keepdim=True)
    errors = []
    for p, g, m in zip(pred.double(), norm.double(), batch["valid"]):
        a = torch.stack([p[m], torch.ones_like(p[m])], 1)
        sol = torch.linalg.lstsq(a, g[m][:, None]).solution
        errors.append((a @ sol - g[m][:, None]).abs()[:, 0])
    expected = torch.cat(errors).mean()  # mean over all valid pixels of the batch
    assert float(out["loss"].detach()) == pytest.approx(float(expected), rel=1e-4)
