"""The training engine: configs, schedules, data mixing, checkpoints and the Accelerate loop.

    from diffdepth.training import load_config, train
    cfg = load_config("configs/marigold/debug.yaml", ["train.max_steps=4"])
    result = train(cfg, "runs/mg-debug")          # {"step", "loss", "history", "checkpoint"}

See configs/README.md for the config keys, launching and resuming.
"""
from .config import ConfigError, SCHEMA, defaults, load_config, save_config  # noqa: F401
from .schedules import lr_factor  # noqa: F401


def __getattr__(name):  # the loop pulls in accelerate; import it on first use
    if name in ("Trainer", "train", "TrainingError", "build_model"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(name)


__all__ = ["ConfigError", "SCHEMA", "defaults", "load_config", "save_config", "lr_factor", "Trainer", "train",
           "TrainingError", "build_model"]
