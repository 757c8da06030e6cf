"""PrimeDepth learns: a short debug training on synthetic scenes beats a constant depth on held-out scenes,
and the command-line path make-tiny -> predict -> train (debug recipe) -> eval runs end to end."""
from pathlib import Path

import numpy as np
import pytest
import torch

from diffdepth.data.synth import render_sample
from diffdepth.methods.primedepth import PrimeDepth

ROOT = Path(__file__).resolve().parents[1]


def _scenes(indices, seed, size=48):
    out = []
    for i in indices:
        s = render_sample("indoor", i, seed, (size, size))
        out.append((torch.from_numpy(s["image"]).permute(2, 0, 1).float(),
                    torch.from_numpy(s["depth"])[None].float(), torch.from_numpy(s["valid"])[None]))
    return out


def _abs_rel_disparity(disp, depth, valid):
    """AbsRel after least-squares alignment in disparity space (the evaluator's lsq-disparity)."""
    p, g = disp[valid].double(), depth[valid].double()
    a = torch.stack([p, torch.ones_like(p)], 1)
    sol = torch.linalg.lstsq(a, (1.0 / g)[:, None]).solution
    d = (a @ sol)[:, 0].clamp_min(1e-3)
    return float(((1.0 / d - g).abs() / g).mean())


def _abs_rel_constant(depth, valid):
    """Best constant under the same alignment: a constant disparity fits to mean(1/g)."""
    g = depth[valid].double()
    return float(((1.0 / (1.0 / g).mean() - g).abs() / g).mean())


def test_debug_training_beats_constant_depth_on_held_out_scenes(capsys):
    train, test = _scenes(range(16), seed=0), _scenes(range(4), seed=1)
    torch.manual_seed(0)
    model = PrimeDepth.make_tiny(seed=0, use_segmentation_head=False).train()
    task = model.make_training_task(target="depth", flip_prob=0.0)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=2e-3)
    rng = np.random.default_rng(0)
    for _ in range(24):
        idx = rng.choice(len(train), 4, replace=False)
        batch = {k: torch.stack([train[i][j] for i in idx]) for j, k in enumerate(("image", "depth", "valid"))}
        loss = task(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    ours = np.mean([_abs_rel_disparity(model.predict(img[None]).depth[0], d, v) for img, d, v in test])
    const = np.mean([_abs_rel_constant(d, v) for _, d, v in test])
    with capsys.disabled():
        print(f"\n[primedepth debug training] held-out AbsRel: trained {ours:.3f} vs constant depth {const:.3f}")
    assert ours < 0.9 * const


@pytest.mark.slow
def test_cli_make_tiny_predict_train_eval(tmp_path):
    from diffdepth.cli import main

    ckpt = tmp_path / "tiny-pd"
    assert main(["make-tiny", str(ckpt), "--method", "primedepth"]) == 0
    assert main(["synth", str(tmp_path / "scenes"), "--kind", "indoor", "--n", "2", "--size", "40x56", "--quiet"]) == 0
    images = sorted(p for p in (tmp_path / "scenes").rglob("*") if p.suffix in (".png", ".jpg") and "depth" not in p.name)
    assert images
    out = tmp_path / "pred"
    assert main(["predict", str(images[0]), "--method", "primedepth", "--checkpoint", str(ckpt), "--out", str(out),
                 "--save", "npy,png16,color,ply,seg", "--device", "cpu"]) == 0
    npys = list(out.rglob("*.npy"))
    assert npys and np.isfinite(np.load(npys[0])).all()
    assert list(out.rglob("*.ply"))
    run = tmp_path / "run"
    assert main(["train", str(ROOT / "configs/primedepth/debug.yaml"), f"output_dir={run}",
                 "train.max_steps=2", "val.every=0", "checkpoint.every=2"]) == 0
    final = sorted(run.glob("checkpoint-*"))[-1]
    # eval scores the checkpoint it is given: the trained one, not the make-tiny weights it started from
    preds = {}
    for name, path in (("untrained", ckpt), ("trained", final)):
        assert main(["eval", "--dataset", "folder", "--data-root", str(tmp_path / "scenes"), "--method", "primedepth",
                     "--checkpoint", str(path), "--out", str(tmp_path / name), "--device", "cpu", "--no-progress"]) == 0
        assert (tmp_path / name / "summary.json").exists() and (tmp_path / name / "per_sample.csv").exists()
        preds[name] = {p.stem: np.load(p) for p in (tmp_path / name / "predictions").glob("*.npy")}
    assert len(preds["trained"]) == 2 and preds["trained"].keys() == preds["untrained"].keys()
    # ... and its predictions are the library's prediction with the trained weights
    from diffdepth.pipeline import DepthPipeline

    pipe = DepthPipeline(PrimeDepth.from_pretrained(final))
    for stem, trained in preds["trained"].items():
        image = next(p for p in images if p.stem == stem)
        expected = np.squeeze(np.asarray(torch.as_tensor(pipe(image).depth).float()))
        assert trained.shape == expected.shape == (40, 56)
        np.testing.assert_allclose(trained, expected, rtol=1e-4, atol=1e-6)
        assert np.abs(trained - preds["untrained"][stem]).max() > 1e-3 * np.abs(trained).max()


def test_debug_recipe_stopped_then_resumed_reaches_the_uninterrupted_weights(tmp_path):
    """`diffdepth train configs/primedepth/debug.yaml` stopped at step 2 and resumed with --resume ends
    at the same weights as one run of 4 steps (the checkpoint keeps model and training state together)."""
    from safetensors.torch import load_file

    from diffdepth.cli import main
    from diffdepth.training import checkpoint as ckpt

    recipe = str(ROOT / "configs/primedepth/debug.yaml")
    common = ["val.every=0", "checkpoint.every=2", "checkpoint.keep_last=0", "log.images_every=0",
              "data.train.0.n=8"]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", recipe, *common, "train.max_steps=4", "--output-dir", str(tmp_path / "full")]) == 0
        part = tmp_path / "part"
        assert main(["train", recipe, *common, "train.max_steps=2", "--output-dir", str(part)]) == 0
        assert (part / "checkpoint-2" / ckpt.STATE_DIR / "trainable.safetensors").exists()
        assert (part / "checkpoint-2" / "model.safetensors").exists()
        assert main(["train", recipe, *common, "train.max_steps=4", "--output-dir", str(part), "--resume"]) == 0
    finally:
        torch.set_num_threads(n)
    for name in ("training_state/trainable.safetensors", "model.safetensors"):
        a = load_file(str(tmp_path / "full" / "checkpoint-4" / name))
        b = load_file(str(part / "checkpoint-4" / name))
        assert a.keys() == b.keys() and a
        for k in a:
            assert torch.allclose(a[k].double(), b[k].double(), atol=1e-6, rtol=0), (name, k)
    # and the two runs really moved away from the step-2 weights (the comparison is not vacuous)
    mid = load_file(str(part / "checkpoint-2" / "model.safetensors"))
    end = load_file(str(part / "checkpoint-4" / "model.safetensors"))
    assert any(not torch.equal(mid[k], end[k]) for k in mid)
