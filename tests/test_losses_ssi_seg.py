"""Hand-computed checks of the PrimeDepth losses (SSI-MSE, Dice, focal, dynamic weighting)."""
import math

import pytest
import torch

from diffdepth.losses.segmentation import dice_loss, dynamic_weighting, focal_loss, primedepth_loss
from diffdepth.losses.ssi import align_least_squares, normalize_target, ssi_mse_loss


def _img(vals):
    return torch.tensor(vals, dtype=torch.float32).reshape(1, 1, 2, 2)


def test_normalize_target_median_mad():
    # d = [1,2,3,10]: median (lower middle) 2, mean |d - 2| = (1+0+1+8)/4 = 2.5
    d_star, usable = normalize_target(_img([1, 2, 3, 10]))
    assert usable.tolist() == [True]
    assert torch.allclose(d_star.flatten(), torch.tensor([-0.4, 0.0, 0.4, 3.2]))


def test_ssi_mse_hand_computed():
    # d* = [-0.4, 0, 0.4, 3.2]; pred p = [0,1,2,3]
    # LS: cov(p,d*) = 5.6, var(p) = 5 -> a = 1.12, b = 0.8 - 1.12*1.5 = -0.88
    # residuals [-0.48, 0.24, 0.96, -0.72] -> MSE = 1.728 / 4 = 0.432
    pred, target = _img([0, 1, 2, 3]), _img([1, 2, 3, 10])
    aligned, a, b = align_least_squares(pred, normalize_target(target)[0])
    assert a.item() == pytest.approx(1.12, abs=1e-5) and b.item() == pytest.approx(-0.88, abs=1e-5)
    assert ssi_mse_loss(pred, target).item() == pytest.approx(0.432, abs=1e-5)
    # invariance to the prediction's scale and shift, zero for an affine copy of the target
    assert ssi_mse_loss(3 * pred + 5, target).item() == pytest.approx(0.432, abs=1e-4)
    assert ssi_mse_loss(-2 * target + 1, target).item() == pytest.approx(0.0, abs=1e-9)


def test_ssi_mse_mask_and_batch_mean():
    # image 2 masks out its outlier -> valid target [1,2,3]: median 2, MAD 2/3,
    # d* = [-1.5, 0, 1.5]; pred [0, 2, 1]: cov 1.5, var 2 -> a = 0.75, b = -0.75,
    # aligned [-0.75, 0.75, 0], residuals [0.75, 0.75, -1.5] -> MSE = 3.375 / 3 = 1.125
    pred = torch.cat([_img([0, 1, 2, 3]), _img([0, 2, 1, 100])])
    target = torch.cat([_img([1, 2, 3, 10]), _img([1, 2, 3, 50])])
    mask = torch.ones_like(target, dtype=torch.bool)
    mask[1, 0, 1, 1] = False
    loss = ssi_mse_loss(pred, target, mask)
    assert loss.item() == pytest.approx((0.432 + 1.125) / 2, abs=1e-5)


def test_ssi_mse_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        ssi_mse_loss(_img([0, 1, 2, 3]), _img([1, 2, 3, 4]), torch.zeros(1, 1, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="does not match"):
        ssi_mse_loss(_img([0, 1, 2, 3]), torch.zeros(1, 1, 3, 3))
    with pytest.raises(ValueError, match="bool"):
        ssi_mse_loss(_img([0, 1, 2, 3]), _img([1, 2, 3, 4]), torch.ones(1, 1, 2, 2))


def _seg_case():
    # 1x3 image, 2 classes; pixel probs [.8,.2], [.4,.6], third pixel ignored (255)
    probs = torch.tensor([[0.8, 0.4, 0.5], [0.2, 0.6, 0.5]]).reshape(1, 2, 1, 3)
    labels = torch.tensor([[[0, 1, 255]]])
    return probs.log(), labels


def test_dice_hand_computed():
    logits, labels = _seg_case()
    # smooth 0: class0 2*.8/(1.2+1) = .727272..., class1 2*.6/(.8+1) = .666...
    expect0 = 1 - (1.6 / 2.2 + 1.2 / 1.8) / 2
    assert dice_loss(logits, labels).item() == pytest.approx(expect0, abs=1e-6)  # Eq. 4: no smoothing
    expect1 = 1 - (2.6 / 3.2 + 2.2 / 2.8) / 2
    assert dice_loss(logits, labels, smooth=1.0).item() == pytest.approx(expect1, abs=1e-6)
    # a class absent from the labels counts as a Dice of 0 in the paper's form (loss 1/C each)
    three = torch.cat([logits, torch.full_like(logits[:, :1], -30.0)], 1)  # class 2: ~no probability, no label
    assert dice_loss(three, labels).item() == pytest.approx(1 - (1.6 / 2.2 + 1.2 / 1.8) / 3, abs=1e-5)
    assert dice_loss(three, labels, smooth=1.0).item() == pytest.approx(1 - (2.6 / 3.2 + 2.2 / 2.8 + 1) / 3, abs=1e-5)
    # a perfect one-hot prediction gives zero loss
    perfect = torch.tensor([[20.0, -20.0], [-20.0, 20.0]]).T.reshape(1, 2, 1, 2)
    assert dice_loss(perfect, torch.tensor([[[0, 1]]]), smooth=0.0).item() == pytest.approx(0.0, abs=1e-6)


def test_focal_hand_computed():
    logits, labels = _seg_case()
    total = -(0.2 ** 2) * math.log(0.8) - (0.4 ** 2) * math.log(0.6)
    assert focal_loss(logits, labels).item() == pytest.approx(total, abs=1e-6)  # Eq. 4: sum over pixels
    assert focal_loss(logits, labels, reduction="mean").item() == pytest.approx(total / 2, abs=1e-6)
    # gamma 0 is plain cross-entropy
    ce = -(math.log(0.8) + math.log(0.6)) / 2
    assert focal_loss(logits, labels, gamma=0.0, reduction="mean").item() == pytest.approx(ce, abs=1e-6)
    # batch of two identical images: "sum" is the mean over images of the per-image sums
    two_l, two_y = logits.expand(2, -1, -1, -1), labels.expand(2, -1, -1)
    assert focal_loss(two_l, two_y).item() == pytest.approx(total, abs=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        focal_loss(logits, labels, reduction="max")


def test_seg_losses_reject_bad_labels():
    logits, _ = _seg_case()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dice_loss(logits, torch.tensor([[[0, 7, 1]]]))
    with pytest.raises(ValueError, match="ignored"):
        focal_loss(logits, torch.full((1, 1, 3), 255))
    with pytest.raises(ValueError, match="integer"):
        focal_loss(logits, torch.zeros(1, 1, 3))


def test_dynamic_weighting_value_and_gradient():
    seg = torch.tensor(2.0, requires_grad=True)
    depth = torch.tensor(0.5, requires_grad=True)
    total, lam = dynamic_weighting(seg, depth)
    assert lam.item() == pytest.approx(4.0) and total.item() == pytest.approx(4.0)
    total.backward()
    assert seg.grad.item() == pytest.approx(1.0)  # λ carries no gradient
    assert depth.grad.item() == pytest.approx(4.0)


def test_primedepth_loss_terms():
    logits, labels = _seg_case()
    depth = torch.tensor(0.25)
    out = primedepth_loss(depth, logits, labels)
    seg = out["dice"] + out["focal"]
    assert out["loss"].item() == pytest.approx(2 * seg.item(), rel=1e-6)
    assert out["lambda"].item() == pytest.approx(seg.item() / 0.25, rel=1e-6)
    assert primedepth_loss(depth)["loss"].item() == 0.25
    ours = primedepth_loss(depth, logits, labels, dice_smooth=1.0, focal_reduction="mean")
    assert ours["dice"].item() == pytest.approx(dice_loss(logits, labels, smooth=1.0).item())
    assert ours["focal"].item() == pytest.approx(out["focal"].item() / 2, rel=1e-6)
