"""Every metric against values computed by hand on 2-4 pixels."""
import math

import numpy as np
import pytest
import torch

from diffdepth.evaluation import metrics as M

# pred p = [1, 2, 3, 4], gt g = [1, 1, 2, 8] (one 2x2 image)
P = np.array([[1.0, 2.0], [3.0, 4.0]])
G = np.array([[1.0, 1.0], [2.0, 8.0]])
LN2, LN15 = math.log(2.0), math.log(1.5)
# d = ln p - ln g = [0, ln2, ln1.5, -ln2]
D = [0.0, LN2, LN15, -LN2]
HAND = {
    "abs_rel": (0 / 1 + 1 / 1 + 1 / 2 + 4 / 8) / 4,  # 0.5
    "sq_rel": (0 / 1 + 1 / 1 + 1 / 2 + 16 / 8) / 4,  # 0.875
    "rmse": math.sqrt((0 + 1 + 1 + 16) / 4),
    "rmse_log": math.sqrt(sum(x * x for x in D) / 4),
    "log10": (0 + math.log10(2) + math.log10(1.5) + math.log10(2)) / 4,
    # ratios max(p/g, g/p) = [1, 2, 1.5, 2]: < 1.25 -> 1 of 4; < 1.5625 -> 2; < 1.953125 -> 2
    "delta1": 0.25, "delta2": 0.5, "delta3": 0.5,
    "i_rmse": math.sqrt((0 + 0.5 ** 2 + (1 / 3 - 1 / 2) ** 2 + (1 / 4 - 1 / 8) ** 2) / 4),
    "silog": 100 * math.sqrt(sum(x * x for x in D) / 4 - (sum(D) / 4) ** 2),
}


@pytest.mark.parametrize("name", M.METRIC_NAMES)
def test_metric_hand_values_numpy(name):
    assert M.METRICS[name](P, G) == pytest.approx(HAND[name], rel=1e-12)


@pytest.mark.parametrize("name", M.METRIC_NAMES)
def test_metric_hand_values_torch(name):
    v = M.METRICS[name](torch.tensor(P), torch.tensor(G))
    assert isinstance(v, torch.Tensor) and v.dtype == torch.float64
    assert v.item() == pytest.approx(HAND[name], rel=1e-12)


def test_mask_selects_pixels():
    # only the first two pixels: p = [1, 2], g = [1, 1]
    mask = np.array([[True, True], [False, False]])
    assert M.abs_rel(P, G, mask) == pytest.approx((0 + 1) / 2)
    assert M.rmse(P, G, mask) == pytest.approx(math.sqrt(1 / 2))
    assert M.delta1(P, G, mask) == pytest.approx(0.5)
    # SILog over d = [0, ln2]: mean d^2 = ln2^2/2, mean d = ln2/2 -> sqrt(ln2^2/4) = ln2/2
    assert M.silog(P, G, mask) == pytest.approx(100 * LN2 / 2)


def test_per_image_then_mean_over_images():
    # image 1: abs_rel over 1 pixel = |2-1|/1 = 1; image 2: over 3 pixels = 0
    # a pixel-pooled mean would be 1/4; the per-image mean is (1 + 0) / 2
    p = np.array([[[2.0, 5.0]], [[3.0, 3.0]]])  # [2,1,2]
    g = np.array([[[1.0, 5.0]], [[3.0, 3.0]]])
    m = np.array([[[True, False]], [[True, True]]])
    assert M.abs_rel(p, g, m) == pytest.approx(0.5)
    # an image with an empty mask is skipped, not averaged in as NaN
    m2 = np.array([[[True, False]], [[False, False]]])
    assert M.abs_rel(p, g, m2) == pytest.approx(1.0)
    assert M.compute_metrics(p, g, m)["abs_rel"] == pytest.approx(0.5)
    assert M.compute_metrics(torch.tensor(p), torch.tensor(g), torch.tensor(m2))["abs_rel"] == pytest.approx(1.0)


def test_empty_mask_raises_not_nan():
    with pytest.raises(ValueError, match="empty"):
        M.rmse(P, G, np.zeros_like(P, dtype=bool))


def test_nonpositive_prediction_is_rejected_loudly():
    bad = P.copy()
    bad[0, 0] = 0.0
    with pytest.raises(ValueError, match="> 0"):
        M.abs_rel(bad, G)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError):
        M.rmse_log(bad, G)


def test_shape_mismatch_and_mixed_types():
    with pytest.raises(ValueError, match="shape"):
        M.rmse(P, G[:1])
    with pytest.raises(TypeError):
        M.rmse(torch.tensor(P), G)


def test_silog_zero_for_pure_scale_error():
    # p = 2 g: d is constant, so SILog is exactly 0 (clamped, never NaN) while RMSElog is ln 2
    s = M.silog(2 * G, G)
    assert not math.isnan(s) and s == pytest.approx(0.0, abs=1e-5)
    assert M.rmse_log(2 * G, G) == pytest.approx(LN2)


def test_compute_metrics_returns_floats():
    out = M.compute_metrics(torch.tensor(P, dtype=torch.float32), torch.tensor(G, dtype=torch.float32))
    assert set(out) == set(M.METRIC_NAMES)
    assert all(isinstance(v, float) for v in out.values())
    assert out["abs_rel"] == pytest.approx(0.5, rel=1e-6)
