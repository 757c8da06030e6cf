"""Training engine pieces: schedules (hand values), optimizer groups, EMA, data mixing, checkpoint folders."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from toy_model import ToyDepth, ToyDepthSet  # noqa: E402

from diffdepth.errors import ConfigError  # noqa: E402
from diffdepth.training import checkpoint as ckpt  # noqa: E402
from diffdepth.training.data import BLOCK, MixedDataset, MixingPlan, StreamSampler  # noqa: E402
from diffdepth.training.optim import EMA, build_optimizer, multiplier_for, param_groups, set_lr  # noqa: E402
from diffdepth.training.schedules import lr_factor  # noqa: E402


# ---------------------------------------------------------------------------- schedules
def test_exponential_schedule_marigold_hand_values():
    f = lambda s: lr_factor(s, "exponential", max_steps=1000, warmup_steps=100, final_ratio=0.01)  # noqa: E731
    assert f(0) == 0.0
    assert f(50) == pytest.approx(0.5)
    assert f(100) == pytest.approx(1.0)
    assert f(550) == pytest.approx(0.1)      # 0.01 ** (450 / 900)
    assert f(775) == pytest.approx(0.01 ** 0.75)
    assert f(1000) == pytest.approx(0.01)
    assert f(5000) == pytest.approx(0.01)


def test_polynomial_constant_multistep_hand_values():
    p = lambda s: lr_factor(s, "polynomial", max_steps=10, power=2.0, final_ratio=0.1)  # noqa: E731
    assert p(0) == pytest.approx(1.0)
    assert p(5) == pytest.approx(0.9 * 0.25 + 0.1)
    assert p(10) == pytest.approx(0.1) and p(20) == pytest.approx(0.1)
    assert lr_factor(1, "constant", warmup_steps=4) == pytest.approx(0.25)
    assert lr_factor(4, "constant", warmup_steps=4) == 1.0
    m = lambda s: lr_factor(s, "multistep", milestones=[3, 6], gamma=0.1)  # noqa: E731
    assert [m(s) for s in (0, 2, 3, 5, 6, 100)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    # decay_steps decouples the decay from max_steps
    assert lr_factor(5, "polynomial", max_steps=1000, decay_steps=10) == pytest.approx(0.01 + 0.99 * 0.5)


def test_vpd_schedule_matches_vpd_training_loop():
    """VPD depth/train.py: global_step counts batches from 1, half = iterations * (epochs // 2);
    lr = (max-min)(g/half)^0.9 + min before the peak, max(min, (min-max)(g/half-1)^0.9 + max) after."""
    max_lr, min_lr, iterations, epochs = 5e-4, 3e-5, 10, 5
    half = iterations * (epochs // 2)  # 20: the peak; floor from 40 on, flat for the last epoch

    def vpd(global_step):  # transcribed from VPD's loop
        if global_step < half:
            return (max_lr - min_lr) * (global_step / iterations / (epochs // 2)) ** 0.9 + min_lr
        return max(min_lr, (min_lr - max_lr) * (global_step / iterations / (epochs // 2) - 1) ** 0.9 + max_lr)

    ours = [max_lr * lr_factor(s, "vpd", max_steps=iterations * epochs, decay_steps=2 * half,
                                final_ratio=min_lr / max_lr, power=0.9) for s in range(iterations * epochs)]
    assert ours == pytest.approx([vpd(s + 1) for s in range(iterations * epochs)], rel=1e-12)
    f = lambda s: lr_factor(s, "vpd", max_steps=50, decay_steps=40, final_ratio=0.06, power=0.9)  # noqa: E731
    assert f(9) == pytest.approx(0.06 + 0.94 * 0.5 ** 0.9)  # g = 10 = half of the rise
    assert f(19) == pytest.approx(1.0) and f(29) == pytest.approx(1 - 0.94 * 0.5 ** 0.9)
    assert f(39) == pytest.approx(0.06) and f(49) == pytest.approx(0.06)


def test_onecycle_matches_hand_values_and_torch():
    total = 20
    f = lambda s: lr_factor(s, "onecycle", max_steps=total, pct_start=0.25)  # noqa: E731
    assert f(0) == pytest.approx(1 / 25)
    assert f(4) == pytest.approx(1.0)   # peak at pct_start * total - 1
    assert f(19) == pytest.approx(1 / 25 / 1e4)
    # halfway through the annealing phase: cos gives the midpoint
    assert f(4 + 7.5) == pytest.approx((1 + 1 / 25 / 1e4) / 2)
    # reference implementation: torch's OneCycleLR with max_lr = 1
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=total, pct_start=0.25,
                                                cycle_momentum=False)
    ref = []
    for _ in range(total):
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert [f(s) for s in range(total)] == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_unknown_schedule_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown schedule"):
        lr_factor(3, "cosine")


# ---------------------------------------------------------------------------- optimizer
def test_param_groups_multipliers_longest_prefix_and_frozen_params_left_out():
    model = ToyDepth.make_tiny(seed=0)
    groups = param_groups(model, 1e-3, lr_multipliers={"body.": 0.1, "body.0.": 0.5})
    by_name = {n: g["lr"] for g in groups for n in g["names"]}
    assert by_name["body.0.weight"] == pytest.approx(5e-4)
    assert by_name["body.1.weight"] == pytest.approx(1e-4)  # BatchNorm under body.
    assert by_name["head.weight"] == pytest.approx(1e-3)
    assert not any(n.startswith("stem.") for n in by_name)  # frozen stem never enters the optimizer
    assert multiplier_for("unet.conv_in.weight", {"unet.": 0.01}) == ("unet.", 0.01)
    with pytest.raises(ConfigError, match="vae."):
        param_groups(model, 1e-3, lr_multipliers={"vae.": 0.1})


def test_frozen_params_get_no_grad_and_no_optimizer_state():
    model = ToyDepth.make_tiny(seed=0)
    opt = build_optimizer(model, {"name": "adamw", "lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8,
                                  "weight_decay": 0.01, "lr_multipliers": {"head.": 2.0}})
    task = model.make_training_task()
    ds = ToyDepthSet(n=2, size=(8, 8))
    batch = {k: torch.as_tensor(np.stack([ds[i][k] for i in range(2)])) for k in ("image", "depth", "valid")}
    stem_before = model.stem.weight.detach().clone()
    task(batch)["loss"].backward()
    opt.step()
    frozen = [p for p in model.parameters() if not p.requires_grad]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert frozen and all(p.grad is None for p in frozen)
    assert all(id(p) not in {id(q) for q in opt.state} for p in frozen)
    assert {id(p) for p in opt.state} == {id(p) for p in trainable}
    assert torch.equal(model.stem.weight, stem_before)
    set_lr(opt, 0.5)
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx([5e-3, 1e-2])


def test_ema_update_and_swap_by_hand():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, decay=0.9, warmup=False)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)          # 0.9 * 1 + 0.1 * 3
    assert float(ema.shadow["weight"]) == pytest.approx(1.2)
    ema.swap(model)
    assert float(model.weight.detach()) == pytest.approx(1.2)
    ema.swap(model)
    assert float(model.weight.detach()) == 3.0
    warm = EMA(model, decay=0.999, warmup=True)
    assert warm.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)


def test_evaluating_restores_modes_and_every_rng():
    import random

    from diffdepth.training.trainer import evaluating

    model = torch.nn.Sequential(torch.nn.BatchNorm1d(2), torch.nn.Dropout(0.5))
    model[1].eval()  # a part the task keeps in eval mode
    states = lambda: (random.random(), float(np.random.rand()), float(torch.rand(1)))  # noqa: E731
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    expected = states()
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    with evaluating(model):
        assert not model[0].training and not torch.is_grad_enabled()
        states(), model(torch.randn(4, 2))  # draws from every generator, BatchNorm in eval: no stats update
    assert states() == expected
    assert model[0].training and not model[1].training
    assert torch.equal(model[0].running_mean, torch.zeros(2))


# ---------------------------------------------------------------------------- data mixing
def test_mixing_is_reproducible_weighted_and_covers_each_dataset_per_epoch():
    plan = MixingPlan([6, 3], [0.75, 0.25], seed=3)
    draws = plan.take(0, 4000)
    assert draws == MixingPlan([6, 3], [0.75, 0.25], seed=3).take(0, 4000)
    assert draws != MixingPlan([6, 3], [0.75, 0.25], seed=4).take(0, 4000)
    assert [g for g, _, _ in draws] == list(range(4000))
    ks = np.array([k for _, k, _ in draws])
    assert abs((ks == 0).mean() - 0.75) < 0.03
    first = [i for _, k, i in draws if k == 0]
    for e in range(3):  # each epoch of dataset 0 is a permutation of its samples
        assert sorted(first[6 * e:6 * e + 6]) == list(range(6))
    assert first[:6] != first[6:12]  # reshuffled per epoch


def test_mixing_resumes_mid_stream_across_blocks():
    plan = MixingPlan([5, 7, 2], [1, 2, 1], seed=0)
    full = plan.take(0, BLOCK + 600)
    for start in (0, 1, 513, BLOCK - 1, BLOCK, BLOCK + 17):
        assert plan.take(start, 50) == full[start:start + 50]


def test_stream_sampler_ranks_partition_global_batches():
    plan = MixingPlan([10, 4], [0.5, 0.5], seed=1)
    it = lambda s: iter(s)  # noqa: E731
    single = [next(x) for x in [it(StreamSampler(plan, 3, 0, 1))] for _ in range(24)]
    r0 = StreamSampler(plan, 3, rank=0, world=2)
    r1 = StreamSampler(plan, 3, rank=1, world=2)
    a, b = iter(r0), iter(r1)
    a12 = [next(a) for _ in range(12)]
    b12 = [next(b) for _ in range(12)]
    # micro-batch m: rank 0 takes positions [6m, 6m+3), rank 1 [6m+3, 6m+6)
    for m in range(4):
        assert a12[3 * m:3 * m + 3] == single[6 * m:6 * m + 3]
        assert b12[3 * m:3 * m + 3] == single[6 * m + 3:6 * m + 6]
    resumed = StreamSampler(plan, 3, rank=1, world=2, start_micro=2)
    r = iter(resumed)
    assert [next(r) for _ in range(6)] == b12[6:12]


def test_mixed_dataset_transform_seeded_by_position():
    ds = ToyDepthSet(n=4, size=(4, 4))
    task = ToyDepth.make_tiny().make_training_task(flip=True)
    mixed = MixedDataset([ds], ["toy"], seed=0, transform=task.transform)
    flips = []
    for g in range(16):
        s = mixed[(g, 0, 1)]
        assert np.array_equal(s["image"], mixed[(g, 0, 1)]["image"])  # same position, same augmentation
        flips.append(not np.array_equal(s["image"], ds[1]["image"]))
        if flips[-1]:
            assert np.array_equal(s["image"], ds[1]["image"][..., ::-1])
    assert 0 < sum(flips) < 16


# ---------------------------------------------------------------------------- checkpoint folders
def _fake_checkpoint(run: Path, step: int, complete: bool = True) -> Path:
    p = run / ckpt.checkpoint_name(step)
    (p / ckpt.STATE_DIR).mkdir(parents=True)
    if complete:
        ckpt.write_state_file(p, {"step": step})
    return p


def test_latest_ignores_temp_and_incomplete_and_prune_keeps_last(tmp_path):
    _fake_checkpoint(tmp_path, 2)
    _fake_checkpoint(tmp_path, 10)
    _fake_checkpoint(tmp_path, 12, complete=False)           # no state.json: incomplete
    (tmp_path / ".checkpoint-14.tmp" / ckpt.STATE_DIR).mkdir(parents=True)
    bad = _fake_checkpoint(tmp_path, 13, complete=False)
    (bad / ckpt.STATE_DIR / ckpt.STATE_FILE).write_text("{trunc")  # corrupt marker
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2, 10]
    assert ckpt.latest_checkpoint(tmp_path).name == "checkpoint-10"
    _fake_checkpoint(tmp_path, 11)
    removed = ckpt.prune(tmp_path, keep_last=2)
    assert [p.name for p in removed] == ["checkpoint-2"]
    assert not (tmp_path / "checkpoint-2").exists()
    assert [p.name for p in ckpt.clean_temporaries(tmp_path)] == [".checkpoint-14.tmp"]


def test_publish_is_a_rename_of_a_complete_folder(tmp_path):
    tmp = ckpt.temp_path(tmp_path, 5)
    (tmp / "x").mkdir(parents=True)
    (tmp / "x" / "w.bin").write_bytes(b"123")
    ckpt.write_state_file(tmp, {"step": 5})
    final = ckpt.publish(tmp, tmp_path / "checkpoint-5")
    assert not tmp.exists() and (final / "x" / "w.bin").read_bytes() == b"123"
    assert json.loads((final / ckpt.STATE_DIR / ckpt.STATE_FILE).read_text())["step"] == 5
    ckpt.write_state_file(tmp, {"step": 5, "again": True})  # the same step saved again replaces it whole
    ckpt.publish(tmp, final)
    assert json.loads((final / ckpt.STATE_DIR / ckpt.STATE_FILE).read_text())["again"] and not (final / "x").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-5"]  # no old copy left behind


def test_run_folder_naming_and_resume_lookup(tmp_path, monkeypatch):
    from diffdepth.commands.train import config_name, resolve_run_dir

    monkeypatch.chdir(tmp_path)
    assert config_name("configs/marigold/debug.yaml") == "marigold-debug"
    assert config_name("configs/base.yaml") == "base"
    cfg = {"output_dir": None}
    fresh = resolve_run_dir(cfg, "configs/marigold/debug.yaml", resume=False)
    assert fresh.parent == Path("runs") and fresh.name.startswith("marigold-debug-")
    (tmp_path / "runs" / "marigold-debug-20250101-000000").mkdir(parents=True)
    (tmp_path / "runs" / "marigold-debug-20250102-000000").mkdir()
    assert resolve_run_dir(cfg, "configs/marigold/debug.yaml", resume=True).name == "marigold-debug-20250102-000000"
    assert resolve_run_dir({"output_dir": "x/y"}, "configs/marigold/debug.yaml", resume=True) == Path("x/y")
