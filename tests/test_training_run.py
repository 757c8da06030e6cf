"""End-to-end training on the toy model: loss falls, logs, checkpoints load, exact resume
(in-process and after a real SIGKILL mid-checkpoint), 2-process DDP on CPU (gloo)."""
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))
from toy_model import ToyDepth  # noqa: E402
from test_distributed import free_port, run_group  # noqa: E402

from diffdepth import registry  # noqa: E402
from diffdepth.training import checkpoint as ckpt  # noqa: E402
from diffdepth.training.config import load_config  # noqa: E402
from diffdepth.training.trainer import Trainer, train  # noqa: E402

RECIPE = ROOT / "configs" / "toy" / "debug.yaml"
QUIET = ["log.progress=false"]


@pytest.fixture(autouse=True)
def one_thread():
    # same float results in-process and in subprocesses started with OMP_NUM_THREADS=1
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def env(**extra):
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT / "src"), e.get("PYTHONPATH", "")])
    e["OMP_NUM_THREADS"] = "1"
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(k, None)
    e.update(extra)
    return e


def weights(checkpoint: Path) -> dict:
    return load_file(str(checkpoint / ckpt.STATE_DIR / "trainable.safetensors"))


def assert_same(a: dict, b: dict, tol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), atol=tol, rtol=0), k


def test_toy_model_trains_logs_and_its_checkpoint_loads(tmp_path):
    cfg = load_config(RECIPE, QUIET + ["train.max_steps=12", "checkpoint.every=6", "val.every=6",
                                       "log.every=2", "log.images_every=6"])
    run = tmp_path / "run"
    trainer = Trainer(cfg, run)
    trainer.setup()
    result = trainer.train()
    hist = result["history"]
    assert len(hist) == 12
    assert sum(hist[-3:]) / 3 < 0.85 * sum(hist[:3]) / 3  # the loss falls

    assert [p.name for _, p in ckpt.list_checkpoints(run)] == ["checkpoint-6", "checkpoint-12"]
    final = run / "checkpoint-12"
    # frozen stem untouched, trainable head moved
    init = ToyDepth.make_tiny(seed=cfg["seed"], **cfg["model"]["args"])
    assert torch.equal(trainer.model.stem.weight, init.stem.weight)
    assert not torch.allclose(trainer.model.head.weight, init.head.weight)
    assert "stem.weight" not in weights(final) and "body.1.running_mean" in weights(final)

    # the checkpoint folder is a diffdepth model folder: load_model reads it
    registry.register(registry.MethodInfo("toy", "toy_model:ToyDepth", None, "metric_depth", "test toy"))
    try:
        loaded = registry.load_model(checkpoint=final, device="cpu")
    finally:
        registry._METHODS.pop("toy", None)
    assert isinstance(loaded, ToyDepth)
    x = torch.rand(1, 3, 8, 8)
    trainer.model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded.predict(x).depth, trainer.model.predict(x).depth, atol=1e-6)

    # resolved config, TensorBoard scalars / images / validation metrics
    assert load_config(run / "config.yaml") == cfg
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    tags = ea.Tags()
    assert {"train/loss", "train/lr", "train/samples_per_s", "train/grad_norm", "train/pred_mean",
            "val/abs_rel", "val/delta1"} <= set(tags["scalars"])
    assert [e.step for e in ea.Scalars("train/loss")] == [2, 4, 6, 8, 10, 12]
    assert [e.step for e in ea.Scalars("val/abs_rel")] == [6, 12]
    # logged lr = optim.lr x schedule factor of the step just taken (warm-up 2, exponential to 0.1 at 12)
    from diffdepth.training.schedules import lr_factor

    expect = [3e-2 * lr_factor(s - 1, "exponential", max_steps=12, warmup_steps=2, final_ratio=0.1)
              for s in (2, 4, 6, 8, 10, 12)]
    assert [e.value for e in ea.Scalars("train/lr")] == pytest.approx(expect, rel=1e-5)
    assert "images/depth" in tags["images"]


def test_toy_model_learns_on_rendered_synth_data(tmp_path):
    synth = QUIET + ["val.every=0", "log.images_every=0", "log.tensorboard=false", "schedule.name=constant",
                     "schedule.warmup_steps=0", "optim.lr=0.1",
                     "data.train=[{type: synth, kind: indoor, n: 4, size: [32, 32], seed: 3}]",
                     f"data.cache_dir={tmp_path / 'cache'}"]
    result = train(load_config(RECIPE, synth + ["train.max_steps=10", "checkpoint.every=10"]), tmp_path / "run")
    hist = result["history"]
    assert sum(hist[-3:]) < 0.8 * sum(hist[:3])
    rendered = list((tmp_path / "cache").glob("synth-indoor-4-32x32-s3-*"))
    assert len(rendered) == 1 and (rendered[0] / ".complete").exists()
    assert len(list(rendered[0].glob("*_depth.png"))) == 4
    # a second run reuses the rendered folder
    stamp = (rendered[0] / ".complete").stat().st_mtime_ns
    train(load_config(RECIPE, synth + ["train.max_steps=1", "checkpoint.every=1"]), tmp_path / "run2")
    assert (rendered[0] / ".complete").stat().st_mtime_ns == stamp


def test_validation_metrics_equal_eval_of_the_saved_checkpoint(tmp_path, monkeypatch):
    """The trainer's validation and `diffdepth eval` share one predictor: on the same samples the
    metrics of the last validation equal those of `eval` on the checkpoint saved at that step
    (EMA weights, the training reader vs the benchmark reader of the same folder)."""
    import json

    from diffdepth import cli

    cache = tmp_path / "cache"
    cfg = load_config(RECIPE, QUIET + ["train.max_steps=3", "checkpoint.every=3", "val.every=3", "val.samples=3",
                                       "val.data={type: synth, kind: indoor, n: 3, size: [24, 32], seed: 5}",
                                       "ema.enabled=true", "log.images_every=0", "log.tensorboard=false",
                                       f"data.cache_dir={cache}"])
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.setup()
    trainer.train()
    val = trainer.validate()  # what the loop logged at step 3 (validation never changes the weights)
    assert val and "step 3 validation: abs_rel" in (tmp_path / "run" / "train.log").read_text()
    root = next(cache.glob("synth-indoor-3-24x32-*"))
    registry.register(registry.MethodInfo("toy", "toy_model:ToyDepth", None, "metric_depth", "test toy"))
    monkeypatch.setattr(cli, "COMMANDS", ("eval",))
    try:
        assert cli.main(["eval", "--dataset", "folder", "--data-root", str(root), "--method", "toy",
                         "--checkpoint", str(tmp_path / "run" / "checkpoint-3"), "--out", str(tmp_path / "eval"),
                         "--no-progress", "--device", "cpu"]) == 0
    finally:
        registry._METHODS.pop("toy", None)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["counts"]["evaluated"] == 3
    assert summary["metrics"] == pytest.approx(val, rel=1e-6, abs=0)


def test_validation_scores_a_sequence_reader_on_its_target_frame(tmp_path):
    """A frame-sequence reader (``frames`` [T,3,H,W], target first, no ``image``) validates as an
    image reader of its target frames would."""
    from diffdepth.evaluation import evaluate, get_protocol, summarize
    from diffdepth.evaluation.runner import ModelPredictor

    cfg = load_config(RECIPE, QUIET + ["val.every=1", "val.samples=2", "val.protocol=kitti_mono2_improved",
                                       "val.data={type: synth, kind: sequence, n: 12, size: [24, 32], seed: 1, "
                                       "reader: {size: [24, 32], split: train}}", f"data.cache_dir={tmp_path / 'c'}"])
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.setup()
    val = trainer.validate()
    trainer._close()
    samples = [trainer.val_set[i] for i in range(2)]
    assert all("image" not in s and s["frames"].shape == (3, 3, 24, 32) for s in samples)
    targets = [{**s, "image": s["frames"][0]} for s in samples]
    protocol = get_protocol("kitti_mono2_improved")
    trainer.model.eval()
    records = evaluate(targets, ModelPredictor(trainer.model, protocol), protocol, progress=False)
    assert val and val == summarize(records, protocol)["metrics"]


def test_effective_batch_size_sets_accumulation(tmp_path):
    from diffdepth.errors import ConfigError

    t = Trainer(load_config(RECIPE, QUIET + ["train.batch_size=2", "train.effective_batch_size=6"]), tmp_path / "a")
    t.setup()
    assert (t.accum, t.effective_batch) == (3, 6)
    t._close()
    bad = Trainer(load_config(RECIPE, QUIET + ["train.batch_size=4", "train.effective_batch_size=6"]), tmp_path / "b")
    with pytest.raises(ConfigError, match="effective_batch_size=6.*4 x 1"):
        bad.setup()
    # validation's predict options are checked at setup, not at the first validation, and named as config keys
    bad = Trainer(load_config(RECIPE, QUIET + ["val.predict={steps: 2}"]), tmp_path / "c")
    with pytest.raises(ConfigError, match=r"^val.predict: option\(s\) --steps do not apply to method 'toy'"):
        bad.setup()


def test_resume_reproduces_uninterrupted_weights(tmp_path):
    common = QUIET + ["ema.enabled=true", "ema.decay=0.9", "schedule.decay_steps=6", "checkpoint.every=3",
                      "val.every=0", "log.images_every=0", "checkpoint.keep_last=0"]
    full = train(load_config(RECIPE, common + ["train.max_steps=6"]), tmp_path / "full")
    part = tmp_path / "part"
    train(load_config(RECIPE, common + ["train.max_steps=3"]), part)
    assert ckpt.latest_checkpoint(part).name == "checkpoint-3"
    # resume with data workers: augmentation and order do not depend on them
    resumed = train(load_config(RECIPE, common + ["train.max_steps=6", "data.num_workers=1"]), part, resume=True)
    assert resumed["history"] == pytest.approx(full["history"][3:], abs=1e-6)
    a, b = tmp_path / "full" / "checkpoint-6", part / "checkpoint-6"
    assert_same(weights(a), weights(b))
    ema_a = load_file(str(a / "model.safetensors"))
    assert_same(ema_a, load_file(str(b / "model.safetensors")))
    # the exported model is the EMA, not the raw weights
    assert not torch.allclose(ema_a["head.weight"], weights(a)["head.weight"])


def assert_no_corrupt_checkpoint(run: Path) -> None:
    """Every folder named checkpoint-STEP is complete and its model loads."""
    names = [p for p in run.iterdir() if ckpt.CHECKPOINT_RE.match(p.name)]
    assert names
    for p in names:
        assert ckpt.is_complete(p), p
        weights(p)
        load_file(str(p / "model.safetensors"))


def test_sigkill_during_checkpoint_then_resume_matches(tmp_path):
    overrides = QUIET + ["train.max_steps=8", "checkpoint.every=2", "checkpoint.keep_last=2", "val.every=0",
                         "log.images_every=0", "log.every=1"]
    cfg_file = tmp_path / "recipe.yaml"
    shutil.copy(RECIPE, cfg_file)
    cfg_file.write_text(cfg_file.read_text().replace("../base.yaml", str(ROOT / "configs" / "base.yaml")))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "diffdepth.cli", "train", str(cfg_file), *overrides, "--output-dir", str(run)]
    # each checkpoint pauses 1.5 s before it is published: kill inside that window
    proc = subprocess.Popen(cmd, env=env(DIFFDEPTH_CHECKPOINT_PAUSE_S="1.5"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    target = run / ".checkpoint-4.tmp" / ckpt.STATE_DIR / "optimizer.bin"
    deadline = time.time() + 120
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    # what the kill left: one complete checkpoint and a half-written temp folder
    assert (run / ".checkpoint-4.tmp").exists() and not (run / "checkpoint-4").exists()
    assert [p.name for _, p in ckpt.list_checkpoints(run)] == ["checkpoint-2"]

    assert_no_corrupt_checkpoint(run)

    # second kill at an arbitrary (seeded random) moment of the resumed run
    proc = subprocess.Popen(cmd + ["--resume"], env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "checkpoint-4").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(random.Random(1234).uniform(0.0, 0.6))
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert_no_corrupt_checkpoint(run)

    out = subprocess.run(cmd + ["--resume"], env=env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from" in out.stderr or "nothing to do" in out.stderr
    assert not list(run.glob(".checkpoint-*"))
    assert [p.name for _, p in ckpt.list_checkpoints(run)] == ["checkpoint-6", "checkpoint-8"]

    reference = train(load_config(cfg_file, overrides), tmp_path / "ref")
    assert reference["step"] == 8
    assert_same(weights(run / "checkpoint-8"), weights(tmp_path / "ref" / "checkpoint-8"))
    assert_same(load_file(str(run / "checkpoint-8" / "model.safetensors")),
                load_file(str(tmp_path / "ref" / "checkpoint-8" / "model.safetensors")))


def test_two_process_cpu_run_keeps_replicas_identical(tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    assert accelerate is not None, f"the accelerate CLI (a declared dependency) is missing next to {sys.executable}"
    run = tmp_path / "ddp"
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "diffdepth.cli", "train", str(RECIPE), *QUIET, "train.max_steps=3", "val.every=0",
           "log.images_every=0", "train.grad_accum_steps=1", "--output-dir", str(run)]
    code, stderr = run_group(cmd, env(), timeout=300, cwd=tmp_path)
    assert code == 0, stderr[-3000:]
    assert "2 process(es)" in stderr
    final = run / "checkpoint-3"
    state = ckpt.read_state(final)
    assert state["world_size"] == 2 and state["micro_batches"] == 3
    # the trainer gathered both processes' weight digests before saving and found them equal
    assert state["replicas_identical"] == 2
    assert (final / ckpt.STATE_DIR / "random_states_0.pkl").exists()
    assert (final / ckpt.STATE_DIR / "random_states_1.pkl").exists()


def test_sigterm_saves_a_checkpoint_and_stops(tmp_path):
    import signal

    cfg = load_config(RECIPE, QUIET + ["train.max_steps=10", "checkpoint.every=100", "val.every=0",
                                       "log.images_every=0", "log.tensorboard=false"])
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.setup()
    task = trainer.runner._task
    calls = []

    def interrupted(batch):  # pre-emption arrives during the 2nd micro-batch of step 3
        calls.append(1)
        if len(calls) == 6:
            signal.raise_signal(signal.SIGTERM)
        return task(batch)

    trainer.runner._task = interrupted
    before = signal.getsignal(signal.SIGTERM)
    result = trainer.train()
    assert result["step"] == 3 and result["stopped"] == "SIGTERM"
    assert ckpt.latest_checkpoint(tmp_path / "run").name == "checkpoint-3"
    assert ckpt.read_state(tmp_path / "run" / "checkpoint-3")["micro_batches"] == 6
    assert signal.getsignal(signal.SIGTERM) == before  # handler restored
