"""Alignment recovers known scale/shift exactly; clipping and non-finite handling are counted."""
import math

import numpy as np
import pytest
import torch

from diffdepth.evaluation.alignment import (align, finalize_depth, fit_median_scale, fit_scale_shift,
                                            resolve_alignment)


def _scene(seed=0, shape=(6, 7)):
    rng = np.random.default_rng(seed)
    gt = rng.uniform(1.0, 9.0, size=shape)
    mask = rng.random(shape) > 0.3
    return gt, mask


def test_lsq_recovers_scale_and_shift_exactly():
    gt, mask = _scene()
    s, t = 0.37, -1.25
    pred = (gt - t) / s  # so that s * pred + t == gt
    pred[~mask] = 1e6  # invalid pixels must not influence the fit
    res = align(pred, gt, mask, "lsq")
    assert res.scale == pytest.approx(s, rel=1e-10) and res.shift == pytest.approx(t, rel=1e-10)
    np.testing.assert_allclose(res.depth[mask], gt[mask], rtol=1e-10)


def test_fit_scale_shift_hand_example():
    # pred [0, 1, 2] against target [1, 3, 5]: exact fit target = 2 pred + 1
    s, t = fit_scale_shift(np.array([0.0, 1.0, 2.0]), np.array([1.0, 3.0, 5.0]), np.ones(3, bool))
    assert (s, t) == (pytest.approx(2.0), pytest.approx(1.0))
    # pred [0, 1, 2] against [0, 0, 3]: normal equations give s = 1.5, t = -0.5
    s, t = fit_scale_shift(np.array([0.0, 1.0, 2.0]), np.array([0.0, 0.0, 3.0]), np.ones(3, bool))
    assert (s, t) == (pytest.approx(1.5), pytest.approx(-0.5))


def test_lsq_disparity_recovers_exactly_and_inverts():
    gt, mask = _scene(1)
    s, t = 2.5, 0.05
    pred_disp = (1.0 / gt - t) / s  # s * pred + t == 1 / gt
    res = align(pred_disp, gt, mask, "lsq-disparity", max_depth=10.0)
    assert res.scale == pytest.approx(s, rel=1e-9) and res.shift == pytest.approx(t, rel=1e-9)
    np.testing.assert_allclose(res.depth[mask], gt[mask], rtol=1e-9)


def test_lsq_disparity_clamps_at_inverse_max_depth():
    gt = np.array([[1.0, 2.0, 4.0, 5.0]])
    mask = np.array([[True, True, True, False]])
    pred = 1.0 / gt  # exact: s = 1, t = 0
    pred[0, 3] = -3.0  # outside the fit; aligned disparity -3 is clamped to 1/max_depth
    res = align(pred, gt, mask, "lsq-disparity", max_depth=80.0)
    assert res.depth[0, 3] == pytest.approx(80.0)
    # with an infinite range (ETH3D) the clamp is Marigold's 1e-3 -> depth 1000
    res = align(pred, gt, mask, "lsq-disparity", max_depth=math.inf)
    assert res.depth[0, 3] == pytest.approx(1000.0)


def test_median_scaling_exact():
    gt = np.array([[1.0, 2.0, 3.0], [4.0, 100.0, 5.0]])
    mask = np.array([[True, True, True], [True, False, True]])
    pred = np.array([[10.0, 20.0, 70.0], [8.0, 1.0, 9.0]])
    # medians over the mask: gt [1,2,3,4,5] -> 3; pred [10,20,70,8,9] -> 10
    assert fit_median_scale(pred, gt, mask) == pytest.approx(0.3)
    res = align(pred, gt, mask, "median")
    assert res.scale == pytest.approx(0.3) and res.shift == 0.0
    np.testing.assert_allclose(res.depth, pred * 0.3)


def test_none_is_identity_and_torch_input():
    gt, mask = _scene(2)
    pred = torch.tensor(gt * 1.1)
    res = align(pred, torch.tensor(gt), torch.tensor(mask), "none")
    np.testing.assert_allclose(res.depth, gt * 1.1)
    assert (res.scale, res.shift) == (1.0, 0.0)


def test_auto_picks_from_kind():
    assert resolve_alignment("auto", "affine_invariant_depth") == "lsq"
    assert resolve_alignment(None, "affine_invariant_disparity") == "lsq-disparity"
    assert resolve_alignment("auto", "relative_depth") == "median"
    assert resolve_alignment("auto", "metric_depth") == "none"
    assert resolve_alignment("median", "metric_depth") == "median"
    with pytest.raises(ValueError):
        resolve_alignment("bogus", "metric_depth")


def test_nonfinite_predictions_are_left_out_of_the_fit():
    gt, mask = _scene(3)
    pred = (gt - 0.5) / 2.0
    pred[0, 0] = np.nan
    pred[1, 1] = np.inf
    mask[0, 0] = mask[1, 1] = True
    res = align(pred, gt, mask, "lsq")
    assert res.scale == pytest.approx(2.0) and res.shift == pytest.approx(0.5)


def test_finalize_counts_and_clips():
    depth = np.array([[np.nan, np.inf, -np.inf, -2.0, 0.5, 50.0, 200.0, 3.0]])
    mask = np.array([[True, True, True, True, True, True, True, False]])
    out, counts = finalize_depth(depth, mask, 1.0, 80.0)
    assert counts.nonfinite == 3 and counts.nonpositive == 1
    np.testing.assert_array_equal(out, [[1.0, 80.0, 1.0, 1.0, 1.0, 50.0, 80.0, 3.0]])
    # an infinite range: +inf becomes the largest valid ground truth
    out, counts = finalize_depth(np.array([[np.inf, 2.0]]), np.ones((1, 2), bool), 1e-5, math.inf,
                                 gt=np.array([[7.0, 3.0]]))
    assert out[0, 0] == 7.0 and counts.nonfinite == 1


def test_marigold_fit_max_res_subsamples_width_only():
    # Marigold's alignment_max_res resamples a [1,H,W] tensor with 1-D nearest interpolation,
    # so only columns are dropped. With max_res 2 on a 3x4 map the fit sees columns 0 and 2.
    gt = np.array([[1.0, 9.0, 2.0, 9.0]] * 3)
    pred = np.array([[1.0, 1.0, 2.0, 5.0]] * 3)
    mask = np.ones_like(gt, bool)
    res = align(pred, gt, mask, "lsq", fit_max_res=2)
    # columns 0, 2 -> exact fit gt = pred
    assert res.scale == pytest.approx(1.0) and res.shift == pytest.approx(0.0, abs=1e-12)
    full = align(pred, gt, mask, "lsq")
    assert abs(full.shift) > 1.0  # the full-resolution fit differs


# ---------------------------------------------------------------------------- the one least-squares / median core
def test_scale_shift_core_hand_values_batched_weighted_and_degenerate():
    from diffdepth.evaluation.alignment import scale_shift

    nan = float("nan")
    p = torch.tensor([[0.0, 1.0, 2.0, 3.0, nan],  # weight 0 on the NaN: ignored
                      [5.0, 5.0, 5.0, 5.0, 9.0],  # constant where weighted
                      [1.0, 2.0, 3.0, 4.0, 5.0]])  # no weight at all
    g = torch.tensor([[1.0, 2.0, 3.0, 10.0, nan], [1.0, 2.0, 3.0, 10.0, 7.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0, 0.0], [0.0] * 5])
    s, t = scale_shift(p, g, w)
    # row 0: p̄ = 1.5, ḡ = 4, cov = 14, var = 5 -> s = 2.8, t = 4 - 2.8·1.5 = -0.2
    # row 1: constant prediction -> s = 0, t = ḡ = 4; row 2: nothing to fit -> (0, 0)
    torch.testing.assert_close(s, torch.tensor([2.8, 0.0, 0.0]))
    torch.testing.assert_close(t, torch.tensor([-0.2, 4.0, 0.0]))
    # a weight counts as repeated pixels: weight 2 on (p 0, g 0) = that pixel twice
    s, t = scale_shift(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0.0, 3.0, 3.0]), torch.tensor([2.0, 1.0, 1.0]))
    ref = fit_scale_shift(np.array([0.0, 0.0, 1.0, 2.0]), np.array([0.0, 0.0, 3.0, 3.0]), np.ones(4, bool))
    assert (float(s), float(t)) == (pytest.approx(ref[0]), pytest.approx(ref[1]))
    # p̄ = 3/4, ḡ = 3/2, cov = 9/2, var = 11/4 -> s = 18/11, t = 3/2 - 18/11·3/4 = 3/11
    assert ref == (pytest.approx(18 / 11), pytest.approx(3 / 11))
    # scale only: s = Σpg / Σp² = (1·2 + 2·5) / (1 + 4) = 2.4
    s, t = scale_shift(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 5.0]), torch.ones(2), scale_only=True)
    assert (float(s), float(t)) == (pytest.approx(2.4), 0.0)


def test_scale_shift_float32_far_from_zero_stays_exact():
    """Predictions 1000 + [0, 1, 2] against [1, 3, 5] (s = 2, t = -1999): the uncentred float32
    normal equations lose the 2x2 determinant (6) to rounding of Σp² ≈ 3e6; the centred form is exact."""
    from diffdepth.evaluation.alignment import scale_shift

    s, t = scale_shift(torch.tensor([1000.0, 1001.0, 1002.0]), torch.tensor([1.0, 3.0, 5.0]), torch.ones(3))
    assert s.dtype == torch.float32
    assert float(s) == pytest.approx(2.0, rel=1e-6) and float(t) == pytest.approx(-1999.0, rel=1e-6)


def test_scale_shift_gradients_match_finite_differences():
    from diffdepth.evaluation.alignment import scale_shift

    g = torch.Generator().manual_seed(0)
    p = torch.rand(2, 6, generator=g, dtype=torch.float64, requires_grad=True)
    tgt = torch.rand(2, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(2, 6, generator=g, dtype=torch.float64) > 0.3).double()
    assert torch.autograd.gradcheck(lambda a, b: scale_shift(a, b, w), (p, tgt))


def test_lsq_disparity_hand_values():
    # p = [1, 2, 3] against 1/gt = [1, 1/2, 1/4]: p̄ = 2, ḡ = 7/12, cov = -3/4, var = 2
    # -> s = -3/8, t = 7/12 + 3/4 = 4/3; disparities [23/24, 7/12, 5/24] -> depths [24/23, 12/7, 24/5]
    res = align(np.array([[1.0, 2.0, 3.0]]), np.array([[1.0, 2.0, 4.0]]), np.ones((1, 3), bool),
                "lsq-disparity", max_depth=10.0)
    assert res.scale == pytest.approx(-0.375) and res.shift == pytest.approx(4 / 3)
    np.testing.assert_allclose(res.depth[0], [24 / 23, 12 / 7, 24 / 5], rtol=1e-12)
    # in depth space the same data fits s = 1.5, t = -2/3
    res = align(np.array([[1.0, 2.0, 3.0]]), np.array([[1.0, 2.0, 4.0]]), np.ones((1, 3), bool), "lsq")
    assert res.scale == pytest.approx(1.5) and res.shift == pytest.approx(-2 / 3)


def test_median_of_an_even_count_is_the_mean_of_the_middle_pair():
    # numpy's median (the published numbers): gt [1,2,4,8] -> 3, pred [1,2,3,4] -> 2.5, ratio 1.2;
    # torch's lower median would give 2 / 2 = 1
    pred, gt = np.array([[1.0, 2.0, 3.0, 4.0, 0.0]]), np.array([[1.0, 2.0, 4.0, 8.0, 5.0]])
    mask = np.ones((1, 5), bool)  # the non-positive prediction is left out of the median
    assert align(pred, gt, mask, "median").scale == pytest.approx(1.2)
    with pytest.raises(ValueError, match="empty"):
        fit_median_scale(pred, gt, np.zeros((1, 5), bool))


def test_fit_scale_shift_degenerate_cases():
    s, t = fit_scale_shift(np.full(4, 2.0), np.array([1.0, 2.0, 3.0, 6.0]), np.ones(4, bool))
    assert (s, t) == (0.0, pytest.approx(3.0))  # a constant prediction is aligned to the mean target
    with pytest.raises(ValueError, match="empty"):
        fit_scale_shift(np.ones(3), np.ones(3), np.zeros(3, bool))
    with pytest.raises(ValueError, match="shapes differ"):
        fit_scale_shift(np.ones(3), np.ones(4), np.ones(3, bool))


def test_depth_to_disparity_one_conversion_two_invalid_values():
    from diffdepth.geometry import depth_to_disparity

    d = np.array([2.0, 0.0, -1.0, np.nan, 4.0], dtype=np.float32)
    np.testing.assert_array_equal(depth_to_disparity(d), [0.5, 0, 0, 0, 0.25])
    assert depth_to_disparity(d).dtype == np.float32 and depth_to_disparity(np.array([2, 0])).dtype == np.float64
    np.testing.assert_array_equal(depth_to_disparity(d, invalid=np.nan), [0.5, np.nan, np.nan, np.nan, 0.25])
    torch.testing.assert_close(depth_to_disparity(torch.from_numpy(d), invalid=np.nan),
                               torch.tensor([0.5, np.nan, np.nan, np.nan, 0.25]), equal_nan=True)
    x = torch.tensor([0.0, 4.0], requires_grad=True)
    depth_to_disparity(x).sum().backward()  # the invalid branch never divides by zero
    torch.testing.assert_close(x.grad, torch.tensor([0.0, -1 / 16]))
