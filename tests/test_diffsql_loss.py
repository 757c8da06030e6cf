"""DiffSQL's total training loss over scales (Sec. 3.3, Eqs. 12-15, after Monodepth2), checked against a
hand combination of per-scale terms: L = (1/S) Σ_s [ mean_pixels min_sources pe(warped_s, target)
+ λ · smooth_s / 2^s ], every scale's depth upsampled to the input for the photometric term and its
disparity smoothed at its own resolution (scale 0: the input's). A stub network makes the warps exact."""
import pytest
import torch
from torch import nn

from diffdepth.losses.photometric import photometric_error
from diffdepth.methods.diffsql.task import DiffSQLTask

H, W, FX = 8, 16, 4.0


class _Stub(nn.Module):
    """Fixed depths per scale and a fixed pose (no rotation, translation ``t``) for every frame pair."""

    fixed_input_size = None

    def __init__(self, depths, t):
        super().__init__()
        self.zero = nn.Parameter(torch.zeros(()))
        self.depths, self.t = depths, t

    def forward(self, x):
        return {"depth": self.depths[0] + self.zero, "aux_depth": list(self.depths[1:])}

    def pose_net(self, a, b):
        n = a.shape[0]
        return torch.zeros(n, 1, 3), torch.tensor(self.t, dtype=torch.float32).expand(n, 1, 3)


def _batch(frames):
    K = torch.tensor([[FX, 0, (W - 1) / 2], [0, FX, (H - 1) / 2], [0, 0, 1]])
    return {"frames": frames, "intrinsics": K.expand(frames.shape[0], 3, 3)}


def _shift(img, s):
    """img sampled at x + s (integer s), the border column repeated (grid_sample's border padding)."""
    idx = (torch.arange(W) + s).clamp(0, W - 1)
    return img[..., idx]


def test_photometric_term_warps_with_each_scales_depth_and_averages_the_scales():
    # x-translation 0.5 and a constant depth D per scale: a target pixel lands fx·0.5/D pixels to the right
    # in frame +1 and to the left in frame -1 (its pose is inverted): shifts 2, 1, 4 for D = 1, 2, 0.5.
    frames = torch.rand(2, 3, 3, H, W, generator=torch.Generator().manual_seed(0))
    depths = [torch.full((2, 1, H, W), 1.0), torch.full((2, 1, H // 2, W // 2), 2.0),
              torch.full((2, 1, H // 4, W // 4), 0.5)]
    out = DiffSQLTask(_Stub(depths, [0.5, 0.0, 0.0]), automask=False)(_batch(frames))
    target, prev, nxt = frames[:, 0], frames[:, 1], frames[:, 2]
    per_scale = []
    for shift in (2, 1, 4):
        errors = torch.cat([photometric_error(_shift(nxt, shift), target),
                            photometric_error(_shift(prev, -shift), target)], 1)
        per_scale.append(errors.min(1).values.mean())  # constant depth: the smoothness terms are 0
    expected = sum(per_scale) / 3
    assert len({round(float(p), 4) for p in per_scale}) == 3  # the scales really differ
    torch.testing.assert_close(out["loss"].detach(), expected, rtol=1e-4, atol=1e-6)


def test_smoothness_is_weighted_by_two_to_the_minus_scale_and_averaged():
    # no motion: every warp is the source itself; constant frames give a hand photometric error, and
    # disparity ramps 1 + c·x give mean-normalised x-gradients c / mean(disp), y-gradients 0 (flat colour)
    frames = torch.empty(1, 3, 3, H, W)
    frames[:, 0], frames[:, 1], frames[:, 2] = 0.5, 0.3, 0.8
    slopes = (1.0, 0.5, 2.0)
    depths = [1.0 / (1.0 + c * torch.arange(w, dtype=torch.float32)).expand(1, 1, h, w)
              for c, (h, w) in zip(slopes, ((H, W), (H // 2, W // 2), (H // 4, W // 4)))]
    weight = 0.5
    out = DiffSQLTask(_Stub(depths, [0.0, 0.0, 0.0]), automask=False, smoothness=weight)(_batch(frames))

    def pe(a, b, alpha=0.85, c1=0.01 ** 2):  # constant images: SSIM = (2ab + C1) / (a² + b² + C1)
        return alpha * (1 - (2 * a * b + c1) / (a * a + b * b + c1)) / 2 + (1 - alpha) * abs(a - b)

    photo = min(pe(0.3, 0.5), pe(0.8, 0.5))
    smooth = [c / (1 + c * (w - 1) / 2) for c, w in zip(slopes, (W, W // 2, W // 4))]
    expected = sum(photo + weight * s / 2 ** i for i, s in enumerate(smooth)) / 3
    # (float32 SSIM of constant images is off by ~1e-5: its variances are E[x²] − μ², not exactly 0)
    assert float(out["loss"].detach()) == pytest.approx(expected, abs=2e-5)
    assert float(out["logs"]["smoothness"]) == pytest.approx(smooth[0], rel=1e-5)
    assert float(out["logs"]["photometric"]) == pytest.approx(photo, abs=2e-5)
