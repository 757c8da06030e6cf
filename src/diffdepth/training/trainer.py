"""The training loop: one loop for every method, on Hugging Face Accelerate.

A method supplies ``model.make_training_task(**cfg["task"])`` -> ``task(batch) ->
{"loss": scalar tensor, "logs": {name: float | tensor}}`` and optionally
``task.transform(sample, rng)`` (per-sample augmentation in the DataLoader workers),
``task.collate(samples)``, ``task.visualize(batch, output) -> {name: HxWx3 uint8}`` and
``task.bind_data(datasets) -> log lines`` (called once with the training readers, before
the optimiser is built).
The trainer never branches on the method.

Per optimizer step ``s`` (0-based):

1. ``lr = base_lr_group × schedule(s)`` for every parameter group;
2. ``grad_accum_steps`` micro-batches: ``loss / grad_accum_steps`` is back-propagated
   (gradient all-reduce only on the last one under DDP);
3. gradient clipping to ``train.grad_clip`` (global norm), optimizer step, zero grads;
4. EMA update (when enabled), logging, validation, checkpoint.

The task's forward runs inside a tiny ``nn.Module`` (:class:`TaskRunner`) that owns
the model, so Accelerate's DDP/FSDP wrapper and autocast see a normal ``forward``
while the task keeps calling the (same) model object directly.

Exact resumption: the checkpoint carries the trainable weights, optimizer,
grad scaler, every process's RNG state, the EMA and the number of micro-batches
consumed (the sampler position, :mod:`diffdepth.training.data`); the schedule is a
function of the step. Validation and image logging run under forked RNGs
(:func:`evaluating`) so they never change the training random stream.
"""
from __future__ import annotations

import contextlib
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Dict, NamedTuple, Optional

import numpy as np
import torch
from torch import nn

from .. import distributed
from ..errors import CheckpointError, ConfigError, DiffdepthError, InputError
from ..evaluation.runner import ModelPredictor, sample_image
from . import checkpoint as ckpt
from .config import diff_configs, dump_config, save_config
from .data import MixedDataset, MixingPlan, StreamSampler, build_dataset, make_loader
from .optim import EMA, build_optimizer, set_lr
from .schedules import schedule_from_config


class TrainingError(DiffdepthError):
    """Training cannot go on (non-finite loss, bad task output, ...)."""


class TaskRunner(nn.Module):
    """``forward(batch) = task(batch)``; registers the model so wrappers see its parameters."""

    def __init__(self, model: nn.Module, task):
        super().__init__()
        self.model = model
        self._task = task  # not registered: it may itself hold the model

    def forward(self, batch):
        return self._task(batch)


def resolve_method(method: str):
    """Registry id or ``module:Class`` -> model class."""
    if ":" in method:
        from .data import _import_target

        return _import_target(method, "model.method")
    from ..registry import get_method

    try:
        return get_method(method).load_class()
    except DiffdepthError as err:
        raise ConfigError(f"model.method: {err}") from None


def build_model(cfg: dict) -> nn.Module:
    """The model a recipe starts from (``model.tiny`` / ``model.pretrained`` / ``build``)."""
    from ..hub import LOCAL_HINT

    m = cfg["model"]
    cls = resolve_method(m["method"])
    args = dict(m["args"])
    if m["tiny"]:
        return cls.make_tiny(seed=cfg["seed"], **args)
    token = LOCAL_HINT.set("set model.pretrained=PATH (a checkpoint) or model.backbone=PATH (a local diffusers "
                           "Stable Diffusion folder) in the recipe or as key=value")
    try:
        if m["pretrained"]:
            return cls.from_pretrained(m["pretrained"], **args)
        return cls.build(backbone=m["backbone"], **args)
    finally:
        LOCAL_HINT.reset(token)


@contextlib.contextmanager
def evaluating(model: nn.Module):
    """Run a block with ``model`` in eval mode, without gradients and on forked RNGs: validation and
    visualisation never change the training random streams, nor any submodule's mode (a task may
    keep frozen parts in eval) or BatchNorm statistics."""
    modes = {name: m.training for name, m in model.named_modules()}
    py_state, np_state = random.getstate(), np.random.get_state()
    model.eval()
    try:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())), torch.no_grad():
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        for name, m in model.named_modules():
            if name in modes:
                m.training = modes[name]


def _scalar(v: Any) -> Optional[float]:
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            return None
        return float(v.detach().float().item())
    if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
        return float(v)
    return None


class _Step(NamedTuple):
    """What one optimizer step leaves: mean loss and task logs over its micro-batches, the gradient
    norm (before clipping; None without clipping), the lr, and the last batch and task output."""

    loss: float
    logs: Dict[str, float]
    grad_norm: Any
    lr: float
    batch: Any
    output: Any


class _Window:
    """Sums over the steps since the last log line."""

    def __init__(self) -> None:
        self.loss, self.steps, self.samples, self.t0 = 0.0, 0, 0, time.perf_counter()


class Trainer:
    """Train ``cfg`` (a resolved config) in ``run_dir``.

    ``resume=True`` continues from the newest complete checkpoint in ``run_dir``
    (starting fresh, with a log line, when there is none).
    """

    def __init__(self, cfg: dict, run_dir, resume: bool = False):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resume = resume
        self._log_file = None
        self.tb = None
        self.wandb = None

    # ------------------------------------------------------------------ helpers
    def log(self, msg: str, console: bool = True) -> None:
        """A line in train.log and (``console``) on stderr, from the main process."""
        if not self.accelerator.is_main_process:
            return
        line = f"[diffdepth train] {msg}"
        if console:
            from tqdm import tqdm  # a dependency; keeps the progress bar intact

            tqdm.write(line, file=sys.stderr)
        if self._log_file is not None:
            self._log_file.write(line + "\n")
            self._log_file.flush()

    def _state_keys(self) -> list:
        """Names saved in trainable.safetensors: trainable params + buffers (persistent)."""
        params = dict(self.model.named_parameters())
        return [k for k in self.model.state_dict() if k not in params or params[k].requires_grad]

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        self._start_accelerator()
        self._set_batch_geometry()
        self.start_ckpt = self._find_resume_checkpoint() if self.resume else None
        if self.accelerator.is_main_process:
            save_config(self.cfg, self.run_dir / "config.yaml")
        self._build_model_data_optimizer()
        self._prepare_and_restore()
        self._setup_logging()

    def _start_accelerator(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        t = self.cfg["train"]
        # several processes on a machine without CUDA: Accelerate only goes multi-process on
        # CPU (gloo) when told cpu=True
        cpu = t["cpu"] or (distributed.world_size() > 1 and not torch.cuda.is_available())
        self.accelerator = acc = Accelerator(
            mixed_precision=t["mixed_precision"], cpu=cpu,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=t["find_unused_parameters"])])
        self.world = acc.num_processes
        self.rank = acc.process_index
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        if acc.is_main_process:
            self._log_file = open(self.run_dir / "train.log", "a")

    def _set_batch_geometry(self) -> None:
        """effective batch = batch_size x accumulation x processes"""
        t = self.cfg["train"]
        bs = t["batch_size"]
        if t["effective_batch_size"] is not None:
            per_step = bs * self.world
            if t["effective_batch_size"] % per_step:
                raise ConfigError(f"train.effective_batch_size={t['effective_batch_size']} is not a multiple of "
                                  f"batch_size x processes = {bs} x {self.world} = {per_step}")
            self.accum = t["effective_batch_size"] // per_step
        else:
            self.accum = t["grad_accum_steps"]
        self.batch_size = bs
        self.effective_batch = bs * self.accum * self.world

    def _find_resume_checkpoint(self) -> Optional[Path]:
        """The newest complete checkpoint (incomplete ones removed), with warnings on what changed."""
        acc = self.accelerator
        if acc.is_main_process:
            for p in ckpt.clean_temporaries(self.run_dir):
                self.log(f"removed incomplete checkpoint {p.name}")
        acc.wait_for_everyone()
        found = ckpt.latest_checkpoint(self.run_dir)
        if found is None:
            self.log(f"--resume: no complete checkpoint in {self.run_dir}; starting from step 0")
            return None
        prev = ckpt.read_state(found)
        if prev.get("world_size") not in (None, self.world) or prev.get("batch_size") not in (None, self.batch_size):
            self.log(f"warning: checkpoint was written with {prev.get('world_size')} process(es) x batch "
                     f"{prev.get('batch_size')}; now {self.world} x {self.batch_size} — the sample order changes")
        old_cfg = self.run_dir / "config.yaml"
        if old_cfg.exists():
            import yaml

            changed = diff_configs(yaml.safe_load(old_cfg.read_text()) or {}, self.cfg)
            if changed:
                self.log(f"resuming with changed config keys: {', '.join(changed)}")
        return found

    def _build_model_data_optimizer(self) -> None:
        """Model + task (same init on every process; the task may freeze modules), data, optimiser."""
        cfg = self.cfg
        torch.manual_seed(cfg["seed"])
        np.random.seed(cfg["seed"] % 2**32)
        random.seed(cfg["seed"])
        self.model = build_model(cfg)
        self.model.train()
        self.task = self.model.make_training_task(**cfg["task"])
        if not callable(self.task):
            raise TrainingError(f"{type(self.model).__name__}.make_training_task returned a non-callable")
        # the data before the optimiser: a task may leave out modules its data cannot train
        # (``task.bind_data(datasets)``, e.g. a segmentation head when no reader has labels),
        # so they get no optimiser state and DDP never waits for their gradients
        self._build_data()
        bind = getattr(self.task, "bind_data", None)
        if bind is not None:
            for line in bind(self.train_datasets) or ():
                self.log(line)
        self.optimizer = build_optimizer(self.model, cfg["optim"])
        self.n_trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.n_frozen = sum(p.numel() for p in self.model.parameters() if not p.requires_grad)
        self.schedule = schedule_from_config(cfg)
        self.ema = EMA(self.model, cfg["ema"]["decay"], cfg["ema"]["warmup"]) if cfg["ema"]["enabled"] else None

    def _prepare_and_restore(self) -> None:
        """Accelerate wrapping, per-process RNG, the resumed state and the sampler at its position."""
        cfg, acc = self.cfg, self.accelerator
        self.runner, self.optimizer = acc.prepare(TaskRunner(self.model, self.task), self.optimizer)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        acc.register_save_state_pre_hook(self._save_hook)
        acc.register_load_state_pre_hook(self._load_hook)
        # task RNG differs per process (different noise on each shard)
        torch.manual_seed(cfg["seed"] + 1_000_003 * (self.rank + 1))
        np.random.seed((cfg["seed"] + 7919 * (self.rank + 1)) % 2**32)
        random.seed(cfg["seed"] + 31 * (self.rank + 1))
        self.step = 0
        self.micro = 0  # micro-batches consumed per process == global micro-batch index
        if self.start_ckpt is not None:
            self._load(self.start_ckpt)
        self.sampler = StreamSampler(self.plan, self.batch_size, self.rank, self.world, start_micro=self.micro)
        self.loader = make_loader(self.dataset, self.sampler, getattr(self.task, "collate", None),
                                  cfg["data"]["num_workers"], cfg["data"]["prefetch_factor"],
                                  pin_memory=acc.device.type == "cuda", seed=cfg["seed"])

    def _build_data(self) -> None:
        cfg = self.cfg
        cache = Path(cfg["data"]["cache_dir"]) if cfg["data"]["cache_dir"] else self.run_dir / "data"
        datasets, names, weights = [], [], []
        for i, entry in enumerate(cfg["data"]["train"]):
            datasets.append(build_dataset(entry, cache, where=f"data.train.{i}"))
            names.append(f"{entry['type']}#{i}")
            weights.append(float(entry.get("weight", 1.0)))
        self.train_datasets = datasets
        self.plan = MixingPlan([len(d) for d in datasets], weights, cfg["seed"])
        self.dataset = MixedDataset(datasets, names, cfg["seed"], getattr(self.task, "transform", None))
        sizes = ", ".join(f"{n} ({len(d)} samples, weight {w:g})" for n, d, w in zip(names, datasets, weights))
        self.log(f"training data: {sizes}")
        self.val_set = None
        v = cfg["val"]
        if v["every"] > 0 and v["data"] is not None:
            self.val_set = build_dataset(v["data"], cache, where="val.data")
            try:  # fail now, not at the first validation
                self.model.check_options(dict(v["predict"]))
            except InputError as e:
                raise ConfigError(f"val.predict: {e}") from None
            first = self.val_set[0]
            if "depth" not in first or sample_image(first) is None:
                raise ConfigError(f"val.data: its samples have keys {sorted(first)}; validation needs 'image' "
                                  f"(or 'frames') and 'depth' — use a reader with ground truth")
            self.log(f"validation: {min(v['samples'], len(self.val_set))} samples every {v['every']} steps")
        elif v["every"] > 0:
            self.log("validation: val.every is set but val.data is not — no validation")
        else:
            self.log("validation: off (set val.every and val.data to enable)")

    def _setup_logging(self) -> None:
        if not self.accelerator.is_main_process:
            return
        log = self.cfg["log"]
        if log["tensorboard"]:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.step if self.step else None)
            self.tb.add_text("config", "```\n" + dump_config(self.cfg) + "\n```", self.step)
        if log["wandb"]:
            try:
                import wandb  # type: ignore
            except ImportError:
                self.log("log.wandb is true but wandb is not installed (pip install wandb) — TensorBoard only")
            else:
                self.wandb = wandb.init(project=log["wandb_project"], dir=str(self.run_dir), config=self.cfg,
                                        name=self.run_dir.name, resume="allow", id=self.run_dir.name)

    def _scalars(self, values: Dict[str, float], step: int) -> None:
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    # ------------------------------------------------------------------ checkpoints
    def _save_hook(self, models, weights, output_dir) -> None:
        from accelerate.utils import DistributedType

        if self.accelerator.distributed_type == DistributedType.FSDP:
            return  # Accelerate saves sharded FSDP weights itself
        while weights:
            weights.pop()
        if self.accelerator.is_main_process:
            from safetensors.torch import save_file

            sd = self.model.state_dict()
            state = {k: sd[k].detach().cpu().clone().contiguous() for k in self._state_keys()}
            save_file(state, os.path.join(output_dir, "trainable.safetensors"))

    def _load_hook(self, models, input_dir) -> None:
        from accelerate.utils import DistributedType

        if self.accelerator.distributed_type == DistributedType.FSDP:
            return
        while models:
            models.pop()
        from safetensors.torch import load_file

        path = os.path.join(input_dir, "trainable.safetensors")
        if not os.path.exists(path):
            raise CheckpointError(f"{path} is missing — the checkpoint was not written by diffdepth train")
        state = {self.model.upgrade_state_key(k): v for k, v in load_file(path).items()}  # earlier names renamed
        want = set(self._state_keys())
        missing = want - set(state)
        extra = set(state) - want
        if missing or extra:
            raise CheckpointError(
                f"{input_dir}: trainable weights do not match the model built from the config "
                f"(missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]}) — same method/args/freezing?")
        result = self.model.load_state_dict(state, strict=False)
        if result.unexpected_keys:  # pragma: no cover - guarded above
            raise CheckpointError(f"{input_dir}: unexpected keys {result.unexpected_keys[:3]}")

    @torch.no_grad()
    def replica_digest(self) -> list:
        """Per-parameter float64 (sum, sum of squares) of the trainable weights of this process."""
        out = []
        for p in self.trainable:
            d = p.detach().double()
            out.append((float(d.sum()), float((d * d).sum())))
        return out

    def save_checkpoint(self) -> Path:
        acc = self.accelerator
        # data-parallel replicas must hold identical weights; a mismatch means a desync bug
        digests = distributed.gather_objects(self.replica_digest()) if self.world > 1 else [self.replica_digest()]
        if any(d != digests[0] for d in digests[1:]):
            bad = [r for r, d in enumerate(digests) if d != digests[0]]
            raise TrainingError(f"step {self.step}: the weights of process(es) {bad} differ from process 0")
        final = self.run_dir / ckpt.checkpoint_name(self.step)
        tmp = ckpt.temp_path(self.run_dir, self.step)
        if acc.is_main_process:
            if tmp.exists():
                import shutil

                shutil.rmtree(tmp)
            (tmp / ckpt.STATE_DIR).mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp / ckpt.STATE_DIR), safe_serialization=True)
        pause = float(os.environ.get("DIFFDEPTH_CHECKPOINT_PAUSE_S", "0") or 0)
        if pause > 0:  # crash tests: widen the window in which a kill hits a half-written checkpoint
            time.sleep(pause)
        if acc.is_main_process:
            if self.ema is not None:
                torch.save(self.ema.state_dict(), tmp / ckpt.STATE_DIR / "ema.pt")
                self.ema.swap(self.model)
            try:
                self.model.save_pretrained(tmp)
            finally:
                if self.ema is not None:
                    self.ema.swap(self.model)
            if not (tmp / ckpt.STATE_DIR).is_dir():
                raise TrainingError(f"{type(self.model).__name__}.save_pretrained replaced the checkpoint folder "
                                    f"and deleted its {ckpt.STATE_DIR}/; it must write into the folder it is given")
            ckpt.write_state_file(tmp, {
                "step": self.step, "micro_batches": self.micro, "seed": self.cfg["seed"],
                "world_size": self.world, "batch_size": self.batch_size, "grad_accum_steps": self.accum,
                "ema": self.ema is not None, "time": time.time(),
                "replicas_identical": len(digests)})
            ckpt.publish(tmp, final)
            for p in ckpt.prune(self.run_dir, self.cfg["checkpoint"]["keep_last"]):
                self.log(f"removed old checkpoint {p.name}")
        acc.wait_for_everyone()
        return final

    def _load(self, path: Path) -> None:
        state = ckpt.read_state(path)
        names = [{"names": g["names"], "prefix": g["prefix"]} for g in self.optimizer.param_groups]
        self.accelerator.load_state(str(path / ckpt.STATE_DIR))
        for group, today in zip(self.optimizer.param_groups, names):  # not the names the state was saved under
            group.update(today)
        if self.ema is not None:
            ema_file = path / ckpt.STATE_DIR / "ema.pt"
            if ema_file.exists():
                ema = torch.load(ema_file, map_location="cpu", weights_only=True)
                ema["shadow"] = {self.model.upgrade_state_key(k): v for k, v in ema["shadow"].items()}
                self.ema.load_state_dict(ema)
            else:
                self.log(f"{path.name} has no EMA state; the EMA restarts from the current weights")
                self.ema = EMA(self.model, self.cfg["ema"]["decay"], self.cfg["ema"]["warmup"])
        self.step = int(state["step"])
        self.micro = int(state["micro_batches"])
        self.log(f"resumed from {path} (step {self.step})")

    # ------------------------------------------------------------------ validation / images
    def validate(self) -> Dict[str, float]:
        """Evaluation-protocol metrics on the first ``val.samples`` samples of ``val.data``.

        Runs on the main process with the predictor and runner of ``diffdepth eval``
        (:class:`~diffdepth.evaluation.runner.ModelPredictor`, :func:`~diffdepth.evaluation.evaluate`:
        predict → align → clip → mask → metrics, :func:`~diffdepth.evaluation.summarize`); the EMA
        weights when enabled.
        """
        from ..evaluation import evaluate, get_protocol, summarize

        v = self.cfg["val"]
        n = min(v["samples"], len(self.val_set))
        protocol = get_protocol(v["protocol"]).with_overrides(min_depth=v["min_depth"], max_depth=v["max_depth"])
        with evaluating(self.model):
            if self.ema is not None:
                self.ema.swap(self.model)
            try:
                predictor = ModelPredictor(self.model, protocol, v["processing_res"], **v["predict"])
                records = evaluate((self.val_set[i] for i in range(n)), predictor, protocol,
                                   alignment=v["alignment"], progress=False)
            finally:
                if self.ema is not None:
                    self.ema.swap(self.model)
        summary = summarize(records, protocol)
        if not summary["metrics"]:
            self.log(f"validation: no sample could be scored ({summary['counts']})")
        return summary["metrics"]

    def log_images(self, batch, output) -> None:
        vis = getattr(self.task, "visualize", None)
        if vis is None or self.tb is None:
            return
        with evaluating(self.model):
            images = vis(batch, output) or {}
        for name, img in images.items():
            arr = np.asarray(img)
            if arr.ndim != 3 or arr.shape[-1] != 3:
                raise TrainingError(f"task.visualize returned {name!r} with shape {arr.shape}; expected HxWx3 uint8")
            self.tb.add_image(f"images/{name}", arr, self.step, dataformats="HWC")

    # ------------------------------------------------------------------ loop
    def train(self) -> Dict[str, Any]:
        if not hasattr(self, "accelerator"):
            self.setup()
        cfg, acc = self.cfg, self.accelerator
        max_steps = cfg["train"]["max_steps"]
        self.log(f"run folder {self.run_dir}; {self.world} process(es) on {acc.device}; batch {self.batch_size} x "
                 f"accumulation {self.accum} x processes {self.world} = effective batch {self.effective_batch}; "
                 f"{self.n_trainable:,} trainable / {self.n_frozen:,} frozen parameters; "
                 f"mixed precision {cfg['train']['mixed_precision']}")
        if self.step >= max_steps:
            self.log(f"already at step {self.step} >= train.max_steps={max_steps}; nothing to do")
            self._close()
            return {"step": self.step, "checkpoint": str(ckpt.latest_checkpoint(self.run_dir))}

        from tqdm import tqdm

        bar = tqdm(total=max_steps, initial=self.step, disable=not (acc.is_main_process and cfg["log"]["progress"]),
                   desc="train", dynamic_ncols=True, file=sys.stderr, unit="step")
        data_iter = iter(self.loader)
        self._window = _Window()
        history, last_saved, stop_reason = [], None, None
        previous_handlers = self._install_stop_handlers()
        try:
            while self.step < max_steps:
                step = self._step(data_iter)
                history.append(step.loss)
                bar.update(1)
                bar.set_postfix(loss=f"{step.loss:.4g}", lr=f"{step.lr:.3g}")
                self._log_step(step, max_steps)
                if cfg["log"]["images_every"] and self.step % cfg["log"]["images_every"] == 0 and acc.is_main_process:
                    self.log_images(step.batch, step.output)
                del step  # the batch and task output
                if self.val_set is not None and self.step % cfg["val"]["every"] == 0:
                    self._validate_and_log()
                stop = self._stop_requested()
                if self.step % cfg["checkpoint"]["every"] == 0 or self.step == max_steps or stop:
                    last_saved = self.save_checkpoint()
                if stop:
                    stop_reason = self._stop_signal or "a stop request on another process"
                    break
        finally:
            self._restore_handlers(previous_handlers)
            bar.close()
            self._close()
        last_loss = history[-1] if history else float("nan")
        if stop_reason:
            self.log(f"stopped by {stop_reason} at step {self.step}; saved {last_saved} — continue with --resume")
        else:
            self.log(f"done: step {self.step}, last loss {last_loss:.4g}, checkpoint {last_saved}")
        return {"step": self.step, "loss": last_loss, "history": history,
                "checkpoint": str(last_saved) if last_saved else None, "stopped": stop_reason}

    def _step(self, data_iter) -> "_Step":
        """One optimizer step: ``accum`` micro-batches (gradient sync on the last), clipping,
        optimizer step, EMA update."""
        from accelerate.utils import send_to_device

        acc = self.accelerator
        factor = self.schedule(self.step)
        set_lr(self.optimizer, factor)
        step_loss, logs = 0.0, {}
        batch = out = None
        for k in range(self.accum):
            batch = send_to_device(next(data_iter), acc.device)
            with contextlib.nullcontext() if k == self.accum - 1 else acc.no_sync(self.runner):
                out = self.runner(batch)
                loss = self._checked_loss(out, k)
                acc.backward(loss / self.accum)
            step_loss += float(loss.detach().float()) / self.accum
            for name, value in (out.get("logs") or {}).items():
                f = _scalar(value)
                if f is not None:
                    logs[name] = logs.get(name, 0.0) + f / self.accum
            self.micro += 1
        clip = self.cfg["train"]["grad_clip"]
        grad_norm = acc.clip_grad_norm_(self.trainable, float(clip)) if clip is not None else None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model)
        lr = float(self.cfg["optim"]["lr"]) * factor  # base lr (multiplier 1) this step used
        return _Step(step_loss, logs, grad_norm, lr, batch, out)

    def _checked_loss(self, out, micro: int) -> torch.Tensor:
        if not isinstance(out, dict) or "loss" not in out:
            raise TrainingError(f"the training task must return {{'loss': ..., 'logs': ...}}, "
                                f"got {type(out).__name__}")
        loss = out["loss"]
        if not torch.isfinite(loss.detach()).all():
            raise TrainingError(f"non-finite loss {loss.item()} at step {self.step} "
                                f"(micro-batch {micro}); lower optim.lr or check the data")
        return loss

    def _log_step(self, step: "_Step", max_steps: int) -> None:
        """Add the step to the window; every ``log.every`` steps (and at the end) log the window's
        mean loss (over processes), lr, throughput, grad norm and the task's logs."""
        w = self._window
        w.loss += step.loss
        w.steps += 1
        w.samples += self.effective_batch
        if self.step % self.cfg["log"]["every"] and self.step != max_steps:
            return
        acc = self.accelerator
        mean = torch.tensor([w.loss / w.steps], device=acc.device)
        mean = float(acc.reduce(mean, "mean").item()) if self.world > 1 else float(mean.item())
        dt = time.perf_counter() - w.t0
        scalars = {"train/loss": mean, "train/lr": step.lr,
                   "train/samples_per_s": w.samples / dt if dt > 0 else 0.0,
                   "train/steps_per_s": w.steps / dt if dt > 0 else 0.0}
        for g in self.optimizer.param_groups:
            if g.get("prefix"):
                scalars[f"train/lr/{g['prefix'].rstrip('.')}"] = g["lr"]
        if step.grad_norm is not None:
            scalars["train/grad_norm"] = float(step.grad_norm)
        for name, value in step.logs.items():
            scalars[f"train/{name}"] = value
        if acc.is_main_process:
            self._scalars(scalars, self.step)
            line = (f"step {self.step}/{max_steps} loss {mean:.4g} lr {scalars['train/lr']:.3g} "
                    f"{scalars['train/samples_per_s']:.3g} samples/s")
            self.log(line, console=not self.cfg["log"]["progress"])  # the progress bar shows it
        self._window = _Window()

    def _validate_and_log(self) -> None:
        if self.accelerator.is_main_process:
            metrics = self.validate()
            if metrics:
                self._scalars({f"val/{k}": v for k, v in metrics.items()}, self.step)
                self.log(f"step {self.step} validation: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ graceful stop
    def _install_stop_handlers(self) -> dict:
        """SIGTERM/SIGUSR1 (cluster pre-emption): finish the step, save a checkpoint, exit."""
        import signal
        import threading

        self._stop_signal = None
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):
            self._stop_signal = signal.Signals(signum).name

        previous = {}
        for sig in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)):
            if sig is not None:
                previous[sig] = signal.signal(sig, handler)
        return previous

    @staticmethod
    def _restore_handlers(previous: dict) -> None:
        import signal

        for sig, h in previous.items():
            signal.signal(sig, h)

    def _stop_requested(self) -> bool:
        flag = self._stop_signal is not None
        if self.world > 1:  # every process must agree, or the checkpoint collectives hang
            t = torch.tensor([1.0 if flag else 0.0], device=self.accelerator.device)
            flag = bool(self.accelerator.reduce(t, "sum").item() > 0)
        return flag

    def _close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def train(cfg: dict, run_dir, resume: bool = False) -> Dict[str, Any]:
    """Train a resolved config in ``run_dir``; returns ``{"step", "loss", "history", "checkpoint", "stopped"}``
    (only ``step`` and ``checkpoint`` when the run is already at ``train.max_steps``)."""
    trainer = Trainer(cfg, run_dir, resume=resume)
    fresh = not Path(run_dir).exists()
    try:
        trainer.setup()
    except BaseException:
        # a run that never started leaves no folder behind (an existing one, e.g. --resume, is kept)
        trainer._close()
        if fresh and distributed.is_main():
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return trainer.train()
