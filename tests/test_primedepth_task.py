"""PrimeDepthTask (PrimeDepth Sec. 3.4): labels turned into disparity, pseudo-label folders, teacher
callables, and the SSI-MSE loss value, each checked against a hand computation."""
import numpy as np
import pytest
import torch

from diffdepth.errors import ConfigError, InputError
from diffdepth.methods.primedepth import PrimeDepth


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return PrimeDepth.make_tiny(seed=0, use_segmentation_head=False).train()


def _batch(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    valid = torch.ones(n, 1, size, size, dtype=torch.bool)
    valid[0, :, :5, :7] = False
    return {"image": torch.rand(n, 3, size, size, generator=g), "depth": 1.0 + 4.0 * torch.rand(n, 1, size, size,
                                                                                               generator=g),
            "valid": valid}


def _ssi_by_hand(pred, disp, valid):
    """PrimeDepth Eq. 3 in float64 numpy: per image d* = (d - median) / mean|d - median| (lower median,
    as MiDaS), least-squares scale and shift of the prediction onto d*, MSE over valid pixels; mean over images."""
    losses = []
    for p, d, m in zip(pred.detach().double().numpy(), disp.double().numpy(), valid.numpy()):
        p, d = p[m], d[m]
        med = np.sort(d)[(d.size - 1) // 2]
        d_star = (d - med) / np.abs(d - med).mean()
        a = np.stack([p, np.ones_like(p)], 1)
        sol = np.linalg.lstsq(a, d_star, rcond=None)[0]
        losses.append(np.mean((a @ sol - d_star) ** 2))
    return float(np.mean(losses))


@pytest.mark.parametrize("kind, disp, ok", [
    ("depth", [0.5, 0, 0, 0, 0, 0.25, 0], [True, False, False, False, False, True, False]),  # inverted where > 0
    ("disparity", [2.0, 0.0, -1.0, 0, 0, 4.0, 0], [True, True, True, False, False, True, False]),  # kept if finite
])
def test_labels_become_disparity_by_hand(model, kind, disp, ok):
    values = torch.tensor([2.0, 0.0, -1.0, float("inf"), float("nan"), 4.0, 5.0]).reshape(1, 1, 7)
    valid = torch.tensor([True, True, True, True, True, True, False]).reshape(1, 1, 7)
    task = model.make_training_task(target=kind, flip_prob=0.0)
    out = task.transform({"image": torch.rand(3, 1, 7), "depth": values, "valid": valid}, np.random.default_rng(0))
    assert out["depth"].flatten().tolist() == disp and out["valid"].flatten().tolist() == ok
    assert out["label_kind"] == "disparity"
    got, got_valid = task.targets({"depth": values[None], "valid": valid[None], "label_kind": [kind]},
                                  torch.rand(1, 3, 1, 7))  # the same conversion on a collated batch
    assert got.flatten().tolist() == disp and got_valid.flatten().tolist() == ok


def test_depth_and_disparity_targets_give_the_hand_computed_loss(model):
    batch = _batch()
    as_depth = model.make_training_task(target="depth", flip_prob=0.0)(batch)
    pred = as_depth["output"]["disparity"]
    expected = _ssi_by_hand(pred, 1.0 / batch["depth"], batch["valid"])
    assert float(as_depth["loss"].detach()) == pytest.approx(expected, rel=1e-4)
    as_disp = model.make_training_task(target="disparity", flip_prob=0.0)(batch)
    expected = _ssi_by_hand(as_disp["output"]["disparity"], batch["depth"], batch["valid"])
    assert float(as_disp["loss"].detach()) == pytest.approx(expected, rel=1e-4)
    assert abs(float(as_disp["loss"].detach()) - float(as_depth["loss"].detach())) > 1e-3 * float(as_depth["loss"].detach())


def test_a_samples_label_kind_decides_its_conversion(model):
    task = model.make_training_task(target="disparity", flip_prob=0.0, use_captions=False)
    depth = torch.tensor([[[2.0, 4.0], [0.0, 8.0]]])
    sample = {"image": torch.rand(3, 2, 2), "depth": depth, "valid": torch.ones(1, 2, 2, dtype=torch.bool)}
    rng = np.random.default_rng(0)
    out = task.transform({**sample, "label_kind": "depth"}, rng)
    assert out["label_kind"] == "disparity"
    assert out["depth"].tolist() == [[[0.5, 0.25], [0.0, 0.125]]] and out["valid"].tolist() == [[[True, True],
                                                                                                  [False, True]]]
    out = task.transform(sample, rng)  # no label_kind: the task's target (disparity) is kept
    assert torch.equal(out["depth"], depth) and bool(out["valid"].all())
    with pytest.raises(InputError, match="label_kind"):
        task.transform({**sample, "label_kind": "metres"}, rng)


def test_pseudo_label_folder_by_hand(model, tmp_path):
    """One <name>.npy per sample replaces the sample's labels: inverted for pseudo_kind depth, non-finite
    values invalid, resized bilinearly (half-pixel centres) to the image when its size differs."""
    np.save(tmp_path / "a.npy", np.array([[1.0, 2.0], [4.0, np.nan]], dtype=np.float32))
    np.save(tmp_path / "b.npy", np.array([[[1.0, 3.0], [1.0, 3.0]]], dtype=np.float32))  # [1,2,2]: squeezed
    np.save(tmp_path / "c.npy", np.zeros((2, 2, 2), dtype=np.float32))
    rng = np.random.default_rng(0)
    task = model.make_training_task(pseudo_labels=str(tmp_path), pseudo_kind="depth", flip_prob=0.0)
    gt = torch.full((1, 2, 2), 9.0)
    out = task.transform({"name": "a", "image": torch.rand(3, 2, 2), "depth": gt}, rng)
    assert out["depth"].tolist() == [[[1.0, 0.5], [0.25, 0.0]]]
    assert out["valid"].tolist() == [[[True, True], [True, False]]]
    disp_task = model.make_training_task(pseudo_labels=str(tmp_path), pseudo_kind="disparity", flip_prob=0.0)
    out = disp_task.transform({"name": "b", "image": torch.rand(3, 2, 4)}, rng)
    # 2x2 -> 2x4: source x = -.25, .25, .75, 1.25 (clamped) -> 1, 1.5, 2.5, 3 on both rows
    assert out["depth"].tolist() == [[[1.0, 1.5, 2.5, 3.0]] * 2] and bool(out["valid"].all())
    with pytest.raises(InputError, match=r"\[H,W\]"):
        task.transform({"name": "c", "image": torch.rand(3, 2, 2)}, rng)
    with pytest.raises(InputError, match="missing.npy"):
        task.transform({"name": "missing", "image": torch.rand(3, 2, 2)}, rng)
    with pytest.raises(ConfigError, match="pseudo_labels"):
        model.make_training_task(pseudo_labels=str(tmp_path / "nowhere"))


def _teacher_depth(images):
    """A depth 'teacher' for the module:function spec: depth from the images' mean colour, [B,H,W]."""
    return 1.0 + 3.0 * images.mean(1)


def test_teacher_callable_replaces_the_labels(model):
    batch = _batch()
    calls = []

    def teacher(images):
        calls.append(torch.is_grad_enabled())
        return _teacher_depth(images)[:, None]

    out = model.make_training_task(teacher=teacher, teacher_kind="depth", flip_prob=0.0)(batch)
    expected = _ssi_by_hand(out["output"]["disparity"], 1.0 / _teacher_depth(batch["image"])[:, None],
                            torch.ones_like(batch["valid"]))  # the teacher's labels, all pixels, not the batch's
    assert calls == [False] and float(out["loss"].detach()) == pytest.approx(expected, rel=1e-4)
    # the same teacher named "module:function" ([B,H,W] output, as disparity this time)
    spec = f"{__name__}:_teacher_depth"
    out = model.make_training_task(teacher=spec, teacher_kind="disparity", flip_prob=0.0)(batch)
    expected = _ssi_by_hand(out["output"]["disparity"], _teacher_depth(batch["image"])[:, None],
                            torch.ones_like(batch["valid"]))
    assert float(out["loss"].detach()) == pytest.approx(expected, rel=1e-4)
    for bad in (f"{__name__}", f"{__name__}:no_such_teacher", "no_such_module_xyz:f"):
        with pytest.raises(ConfigError, match="teacher"):
            model.make_training_task(teacher=bad)
