"""SSIM, photometric error, min-reprojection with auto-masking, edge-aware smoothness."""
import numpy as np
import pytest
import torch

from diffdepth.losses.photometric import edge_aware_smoothness, min_reprojection, photometric_error, ssim


def _ssim_reference(x, y, c1=0.01 ** 2, c2=0.03 ** 2):
    """Direct per-pixel loop over reflection-padded 3x3 windows (numpy, float64)."""
    xp = np.pad(x, 1, mode="reflect")
    yp = np.pad(y, 1, mode="reflect")
    out = np.zeros_like(x)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            a = xp[i:i + 3, j:j + 3].ravel()
            b = yp[i:i + 3, j:j + 3].ravel()
            ma, mb = a.mean(), b.mean()
            va, vb = ((a - ma) ** 2).mean(), ((b - mb) ** 2).mean()
            cov = ((a - ma) * (b - mb)).mean()
            out[i, j] = (2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2))
    return out


def test_ssim_of_image_with_itself_is_one():
    x = torch.rand(2, 3, 9, 11)
    assert torch.allclose(ssim(x, x), torch.ones_like(x), atol=1e-5)
    assert photometric_error(x, x).abs().max() < 1e-5


def test_ssim_matches_direct_reference():
    rng = np.random.default_rng(0)
    x = rng.random((6, 7))
    y = np.clip(x + 0.2 * rng.standard_normal((6, 7)), 0, 1)
    got = ssim(torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(got, _ssim_reference(x, y), rtol=1e-6, atol=1e-9)


def test_photometric_error_hand_computed_for_constant_images():
    # constant images: sigma = 0, SSIM = (2ab + C1)/(a² + b² + C1)
    a, b = 0.2, 0.6
    x = torch.full((1, 3, 4, 4), a, dtype=torch.float64)
    y = torch.full((1, 3, 4, 4), b, dtype=torch.float64)
    c1 = 0.01 ** 2
    s = (2 * a * b + c1) / (a * a + b * b + c1)
    expected = 0.85 * (1 - s) / 2 + 0.15 * abs(a - b)
    assert torch.allclose(photometric_error(x, y), torch.full((1, 1, 4, 4), expected, dtype=torch.float64))


def test_min_reprojection_takes_per_pixel_minimum_over_sources():
    torch.manual_seed(0)
    target = torch.rand(1, 3, 8, 8)
    good_left = target.clone(); good_left[..., 4:] = torch.rand(1, 3, 8, 4)
    good_right = target.clone(); good_right[..., :4] = torch.rand(1, 3, 8, 4)
    loss, mask = min_reprojection(target, [good_left, good_right], sources=None)
    assert mask.all()
    # interior pixels away from the seam (SSIM window) are reconstructed by one of the two
    assert loss[..., 1:-1, 1:3].max() < 1e-5 and loss[..., 1:-1, 5:7].max() < 1e-5
    one, _ = min_reprojection(target, [good_left], sources=None)
    assert one[..., 1:-1, 5:7].min() > 0.05


def test_automask_keeps_static_pixels_out():
    torch.manual_seed(0)
    h, w = 12, 16
    target = torch.rand(1, 3, h, w)
    source = torch.rand(1, 3, h, w)
    source[..., :, :8] = target[..., :, :8]  # left half: static (source equals target, no motion)
    warped = target.clone() + 0.05 * torch.rand(1, 3, h, w)  # warping is good but not perfect
    loss, mask = min_reprojection(target, [warped], sources=[source], generator=torch.Generator().manual_seed(0))
    assert not mask[..., :, :7].any()  # static pixels (away from the seam) are masked out
    assert mask[..., :, 9:].all()  # moving pixels where warping wins are kept
    # where masked, the loss is the (gradient-free) identity error: ~0 up to the tie noise
    assert loss[..., :, :7].abs().max() < 1e-4


def test_automask_ties_are_broken_by_noise():
    target = torch.rand(1, 3, 8, 8)
    loss, mask = min_reprojection(target, [target.clone()], sources=[target.clone()],
                                  generator=torch.Generator().manual_seed(1))
    frac = mask.float().mean().item()
    assert 0.2 < frac < 0.8  # identical errors: about half win either way


def test_edge_aware_smoothness_hand_computed():
    disp = torch.tensor([[[[1.0, 2.0], [1.0, 4.0]]]])
    img = torch.zeros(1, 3, 2, 2)
    img[..., :, 1] = 0.5  # vertical edge between the columns, |dI/dx| = 0.5
    # normalised disparity: mean 2 -> [[.5, 1], [.5, 2]]
    dx = torch.tensor([0.5, 1.5]) * torch.exp(torch.tensor(-0.5))
    dy = torch.tensor([0.0, 1.0])
    expected = dx.mean() + dy.mean()
    assert torch.allclose(edge_aware_smoothness(disp, img), expected)
    assert edge_aware_smoothness(torch.full((1, 1, 5, 5), 3.0), torch.rand(1, 3, 5, 5)) == 0
    # scale invariance of the normalised form
    assert torch.allclose(edge_aware_smoothness(7 * disp, img), expected)


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        ssim(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 5))
    with pytest.raises(ValueError):
        min_reprojection(torch.rand(1, 3, 4, 4), [])
    with pytest.raises(ValueError):
        edge_aware_smoothness(torch.rand(1, 2, 4, 4), torch.rand(1, 3, 4, 4))
