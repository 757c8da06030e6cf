"""Training configs: layered YAML (``base:`` inheritance), ``key=value`` overrides, a schema.

DESIGN.md principle 8. A recipe is a YAML mapping. ``base:`` (a path or a list of
paths, relative to the file that names them) lists recipes it extends; they are
merged left to right, then the file itself on top (dicts merge key by key, every
other value — lists included — replaces). Command-line overrides ``a.b.c=VALUE``
are applied last; ``VALUE`` is parsed as YAML (``3``, ``1e-4``, ``true``, ``null``,
``[0.9, 0.999]``, ``{type: synth}``); list items are addressed by index
(``data.train.0.weight=0.5``).

Every layer is checked against :data:`SCHEMA` as it is read: an unknown key or a
value of the wrong type raises :class:`~diffdepth.errors.ConfigError` naming the key
and the file (or the override). ``model.args``, ``task`` and the reader arguments of
each dataset entry are free-form: they go to the method / reader, which validate them.

The defaults live here (:data:`SCHEMA`); ``configs/base.yaml`` lists the same keys
and values for reading, and a test keeps the two equal.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import yaml

from ..errors import ConfigError

PathLike = Union[str, Path]


@dataclass(frozen=True)
class Key:
    """One leaf of the schema: allowed types, default and a one-line description."""

    types: tuple
    default: Any
    doc: str = ""
    choices: Optional[tuple] = None


FREE = dict  # marker: a free-form mapping passed on to a method or reader

_NUM = (int, float)
_OPT_INT = (int, type(None))
_OPT_NUM = (int, float, type(None))
_OPT_STR = (str, type(None))

#: the known keys, their types and defaults
SCHEMA: dict = {
    "output_dir": Key(_OPT_STR, None, "run folder; default runs/<config name>-<timestamp>"),
    "seed": Key((int,), 0, "seeds model init (tiny), data order, augmentations and the task's RNG"),
    "debug": Key((bool,), False, "cap the recipe at a few steps on tiny data (see DEBUG_CAPS)"),
    "model": {
        "method": Key(_OPT_STR, None, "registry id (marigold, primedepth, ...) or 'module:Class'"),
        "tiny": Key((bool,), False, "build with cls.make_tiny(seed=seed, **args)"),
        "pretrained": Key(_OPT_STR, None, "fine-tune a diffdepth checkpoint: cls.from_pretrained(path, **args)"),
        "backbone": Key(_OPT_STR, "stabilityai/stable-diffusion-2-1",
                        "Stable Diffusion hub id or folder for cls.build(backbone=..., **args)"),
        "args": Key((FREE,), {}, "constructor arguments (free-form, validated by the method)"),
    },
    "task": Key((FREE,), {}, "model.make_training_task(**task) arguments (free-form)"),
    "data": {
        "train": Key((list,), [], "datasets to mix: list of {type, weight, limit, ...reader args}"),
        "num_workers": Key((int,), 2, "DataLoader worker processes per training process"),
        "prefetch_factor": Key((int,), 2, "batches prefetched per worker"),
        "cache_dir": Key(_OPT_STR, None, "where `synth` datasets are rendered (default RUN/data)"),
    },
    "val": {
        "every": Key((int,), 0, "validate every N optimizer steps (0: never)"),
        "data": Key((dict, type(None)), None, "one dataset entry {type, ...}, read like a training set"),
        "samples": Key((int,), 8, "validate on the first N samples of val.data"),
        "protocol": Key((str,), "folder", "evaluation protocol (depth range, crop, default alignment): "
                                          "folder, nyuv2, kitti_eigen, ... (diffdepth.evaluation.PROTOCOLS)"),
        "alignment": Key(_OPT_STR, None, "null: the protocol's default; auto | lsq | lsq-disparity | median | none"),
        "min_depth": Key(_OPT_NUM, None, "override the protocol's depth range (metres)"),
        "max_depth": Key(_OPT_NUM, None, "override the protocol's depth range (metres)"),
        "processing_res": Key(_OPT_INT, None, "long side the model runs at (null: the protocol's, else the "
                                              "model's default; 0: native)"),
        "predict": Key((FREE,), {}, "options passed to model.predict during validation"),
    },
    "train": {
        "max_steps": Key((int,), 1000, "optimizer steps"),
        "batch_size": Key((int,), 2, "samples per micro-batch per process"),
        "effective_batch_size": Key(_OPT_INT, None,
                                    "batch_size x grad_accum_steps x processes; sets grad_accum_steps"),
        "grad_accum_steps": Key((int,), 1, "micro-batches per optimizer step (ignored when "
                                           "effective_batch_size is set)"),
        "mixed_precision": Key((str,), "no", "no | fp16 | bf16", ("no", "fp16", "bf16")),
        "grad_clip": Key(_OPT_NUM, 1.0, "max global gradient norm (null: no clipping)"),
        "find_unused_parameters": Key((bool,), False, "DDP: allow trainable params a step does not use"),
        "cpu": Key((bool,), False, "force CPU even when a GPU is visible"),
    },
    "ema": {
        "enabled": Key((bool,), False, "keep an exponential moving average of the trainable weights"),
        "decay": Key(_NUM, 0.999, "EMA decay per optimizer step"),
        "warmup": Key((bool,), True, "use min(decay, (1+n)/(10+n)) so early averages are not stuck at init"),
    },
    "optim": {
        "name": Key((str,), "adamw", "adam | adamw", ("adam", "adamw")),
        "lr": Key(_NUM, 1e-4, "base learning rate"),
        "betas": Key((list,), [0.9, 0.999], "Adam betas"),
        "eps": Key(_NUM, 1e-8, "Adam epsilon"),
        "weight_decay": Key(_NUM, 0.0, "(decoupled for adamw) weight decay"),
        "no_decay_1d": Key((bool,), False, "no weight decay on biases and norm weights (1-D params)"),
        "lr_multipliers": Key((FREE,), {}, "{param-name prefix: factor}; longest matching prefix wins"),
    },
    "schedule": {
        "name": Key((str,), "constant", "constant | exponential | polynomial | onecycle | multistep | vpd",
                    ("constant", "exponential", "polynomial", "onecycle", "multistep", "vpd")),
        "warmup_steps": Key((int,), 0, "linear warm-up (lr x step/warmup_steps); not used by onecycle"),
        "decay_steps": Key(_OPT_INT, None, "length of the decay (default train.max_steps)"),
        "final_ratio": Key(_NUM, 0.01, "exponential/polynomial/vpd: lr factor reached at decay_steps"),
        "power": Key(_NUM, 1.0, "polynomial/vpd power"),
        "pct_start": Key(_NUM, 0.3, "onecycle: fraction of decay_steps spent rising"),
        "div_factor": Key(_NUM, 25.0, "onecycle: start lr = lr / div_factor"),
        "final_div_factor": Key(_NUM, 1e4, "onecycle: final lr = start lr / final_div_factor"),
        "anneal": Key((str,), "cos", "onecycle: cos | linear", ("cos", "linear")),
        "milestones": Key((list,), [], "multistep: steps at which lr is multiplied by gamma"),
        "gamma": Key(_NUM, 0.1, "multistep factor"),
    },
    "checkpoint": {
        "every": Key((int,), 500, "save every N optimizer steps (and always at the end)"),
        "keep_last": Key((int,), 3, "keep the newest K checkpoints (0: keep all)"),
    },
    "log": {
        "every": Key((int,), 10, "log scalars every N optimizer steps"),
        "images_every": Key((int,), 0, "log task.visualize images every N steps (0: never)"),
        "tensorboard": Key((bool,), True, "write TensorBoard event files to RUN/tensorboard"),
        "wandb": Key((bool,), False, "also log to Weights & Biases (needs `pip install wandb`)"),
        "wandb_project": Key((str,), "diffdepth", "W&B project name"),
        "progress": Key((bool,), True, "tqdm progress bar on the main process"),
    },
}

#: keys of a dataset entry the trainer itself interprets; anything else goes to the reader
DATASET_KEYS = {"type": (str,), "weight": _NUM, "limit": _OPT_INT}

#: what ``debug: true`` caps (value = the cap; `min` with the recipe's value)
DEBUG_CAPS = {
    "train.max_steps": 4,
    "train.batch_size": 2,
    "train.grad_accum_steps": 2,   # effective_batch_size is dropped, accumulation capped at 2
    "data.num_workers": 0,
    "dataset limit": 8,            # every training dataset: first 8 samples (synth: n <= 8)
    "val.samples": 2,
    "checkpoint.every": 2,
    "log.every": 1,
}


def defaults(schema: dict = SCHEMA) -> dict:
    """The default config (a fresh deep copy)."""
    out = {}
    for k, v in schema.items():
        out[k] = defaults(v) if isinstance(v, dict) else copy.deepcopy(v.default)
    return out


# ---------------------------------------------------------------------------- validation
def _type_name(types: tuple) -> str:
    names = {int: "integer", float: "number", bool: "true/false", str: "string", list: "list",
             dict: "mapping", type(None): "null"}
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


def _coerce(value: Any, key: Key, where: str, dotted: str) -> Any:
    """Check ``value`` against ``key``; returns the value (YAML '1e-4' strings become floats)."""
    types = key.types
    # YAML 1.1 reads 1e-4 (no dot) as a string; accept it where a number is expected
    if isinstance(value, str) and float in types:
        try:
            value = float(value)
        except ValueError:
            pass
    # YAML 1.1 reads an unquoted `no` as false: `train.mixed_precision=no` means "no"
    if value is False and key.choices is not None and "no" in key.choices and bool not in types:
        value = "no"
    ok = False
    for t in types:
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            ok = True
        elif t is int and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        elif t is not int and t is not float and isinstance(value, t):
            ok = True
    if not ok:
        raise ConfigError(f"{where}: '{dotted}' must be {_type_name(types)}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: '{dotted}' must be finite, got {value!r}")
    if key.choices is not None and value not in key.choices:
        raise ConfigError(f"{where}: '{dotted}' must be one of {', '.join(map(str, key.choices))}, got {value!r}")
    return value


def _check_dataset(entry: Any, where: str, dotted: str, partial: bool) -> Any:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: '{dotted}' must be a mapping like {{type: folder, root: DIR}}, got {entry!r}")
    if not partial and "type" not in entry:
        raise ConfigError(f"{where}: '{dotted}' has no 'type' (folder, hypersim, vkitti2, synth, module:Class ...)")
    out = dict(entry)
    for k, types in DATASET_KEYS.items():
        if k in out:
            out[k] = _coerce(out[k], Key(types, None), where, f"{dotted}.{k}")
    if "weight" in out and out["weight"] < 0:
        raise ConfigError(f"{where}: '{dotted}.weight' must be >= 0, got {out['weight']}")
    return out


def validate(cfg: dict, where: str, schema: dict = SCHEMA, prefix: str = "", partial: bool = True) -> dict:
    """Check a (partial) config layer against the schema; returns a coerced copy.

    ``where`` names the file or override for error messages.
    """
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where}: '{prefix.rstrip('.') or 'config'}' must be a mapping, got {cfg!r}")
    out = {}
    for k, v in cfg.items():
        dotted = f"{prefix}{k}"
        if not isinstance(k, str):
            raise ConfigError(f"{where}: key {k!r} is not a string")
        if prefix == "" and k == "base":
            out[k] = v
            continue
        if k not in schema:
            known = ", ".join(sorted(schema))
            raise ConfigError(f"{where}: unknown key '{dotted}' (known under '{prefix.rstrip('.') or 'top level'}': "
                              f"{known})")
        spec = schema[k]
        if isinstance(spec, dict):
            out[k] = validate(v, where, spec, dotted + ".", partial)
        else:
            v = _coerce(v, spec, where, dotted)
            if dotted == "data.train":
                v = [_check_dataset(e, where, f"data.train.{i}", partial) for i, e in enumerate(v)]
            elif dotted == "val.data" and v is not None:
                v = _check_dataset(v, where, dotted, partial)
            elif dotted == "optim.lr_multipliers":
                for p, f in v.items():
                    _coerce(f, Key(_NUM, None), where, f"{dotted}.{p}")
            out[k] = v
    return out


# ---------------------------------------------------------------------------- loading
def deep_merge(base: dict, top: dict) -> dict:
    """``top`` over ``base``: mappings merge recursively, everything else replaces."""
    out = copy.deepcopy(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read_yaml(path: Path, named_by: str) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{named_by}: config file {path} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{named_by}: {path} is a folder, not a YAML config") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: invalid YAML ({getattr(err, 'problem', err)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping, got {type(data).__name__}")
    return data


def _load_layers(path: Path, named_by: str, stack: tuple) -> dict:
    path = path.expanduser().resolve()
    if path in stack:
        chain = " -> ".join(str(p) for p in stack + (path,))
        raise ConfigError(f"{path}: circular base: {chain}")
    raw = _read_yaml(path, named_by)
    layer = validate(raw, str(path))
    bases = layer.pop("base", None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    elif not (isinstance(bases, list) and all(isinstance(b, str) for b in bases)):
        raise ConfigError(f"{path}: 'base' must be a path or a list of paths, got {bases!r}")
    merged: dict = {}
    for b in bases:
        merged = deep_merge(merged, _load_layers(path.parent / b, f"{path} (base: {b})", stack + (path,)))
    return deep_merge(merged, layer)


def parse_override(text: str) -> tuple:
    """``'a.b=VALUE'`` -> (['a', 'b'], parsed VALUE)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"command-line override {text!r}: expected KEY=VALUE, e.g. train.max_steps=100")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def _set_dotted(cfg: dict, parts: list, value: Any, where: str) -> dict:
    """A partial config layer {a: {b: value}}, with list indices resolved against ``cfg``."""
    node: Any = cfg
    for i, p in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not p.isdigit() or int(p) >= len(node):
                raise ConfigError(f"{where}: '{'.'.join(parts[:i + 1])}' — no list item {p}")
            node = node[int(p)]
        elif isinstance(node, dict):
            node = node.setdefault(p, {})
        else:
            raise ConfigError(f"{where}: '{'.'.join(parts[:i])}' is not a mapping or list")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"{where}: '{'.'.join(parts)}' — no list item {last}")
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"{where}: '{'.'.join(parts[:-1])}' is not a mapping or list")
    return cfg


def apply_overrides(cfg: dict, overrides: Iterable[str]) -> dict:
    for text in overrides:
        parts, value = parse_override(text)
        where = f"command-line override '{text}'"
        if parts[0] == "base":
            raise ConfigError(f"{where}: 'base' cannot be overridden; pass another config file")
        # the schema check names the override when the key is unknown or the type wrong
        probe: dict = {}
        node = probe
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
        _validate_override(probe, parts, where)
        cfg = _set_dotted(copy.deepcopy(cfg), parts, value, where)
    return cfg


def _validate_override(probe: dict, parts: list, where: str) -> None:
    # walk the schema until a leaf; below a free-form or list leaf anything goes (checked later)
    spec: Any = SCHEMA
    for i, p in enumerate(parts):
        if not isinstance(spec, dict):
            return
        if p not in spec:
            dotted = ".".join(parts[:i + 1])
            raise ConfigError(f"{where}: unknown key '{dotted}'")
        spec = spec[p]
        if isinstance(spec, Key) and i < len(parts) - 1:
            if spec.types in ((FREE,),) or list in spec.types or dict in spec.types:
                return
            raise ConfigError(f"{where}: '{'.'.join(parts[:i + 1])}' is a {_type_name(spec.types)}, "
                              f"it has no sub-keys")
    validate(probe, where)


def apply_debug(cfg: dict) -> dict:
    """Cap a resolved config for a smoke run (see :data:`DEBUG_CAPS`)."""
    cfg = copy.deepcopy(cfg)
    t = cfg["train"]
    t["max_steps"] = min(t["max_steps"], DEBUG_CAPS["train.max_steps"])
    t["batch_size"] = min(t["batch_size"], DEBUG_CAPS["train.batch_size"])
    t["effective_batch_size"] = None
    t["grad_accum_steps"] = min(t["grad_accum_steps"], DEBUG_CAPS["train.grad_accum_steps"])
    cfg["data"]["num_workers"] = DEBUG_CAPS["data.num_workers"]
    cap = DEBUG_CAPS["dataset limit"]
    for entry in cfg["data"]["train"]:
        entry["limit"] = cap if entry.get("limit") is None else min(entry["limit"], cap)
        if entry.get("type") == "synth":
            entry["n"] = min(int(entry.get("n", cap)), cap)
    cfg["val"]["samples"] = min(cfg["val"]["samples"], DEBUG_CAPS["val.samples"])
    if cfg["val"]["every"]:
        cfg["val"]["every"] = min(cfg["val"]["every"], t["max_steps"])
    cfg["checkpoint"]["every"] = min(cfg["checkpoint"]["every"], DEBUG_CAPS["checkpoint.every"])
    cfg["log"]["every"] = DEBUG_CAPS["log.every"]
    if cfg["log"]["images_every"]:
        cfg["log"]["images_every"] = min(cfg["log"]["images_every"], t["max_steps"])
    sched = cfg["schedule"]
    sched["warmup_steps"] = min(sched["warmup_steps"], 1)
    sched["decay_steps"] = None
    sched["milestones"] = [m for m in sched["milestones"] if m < t["max_steps"]]
    return cfg


def check_complete(cfg: dict, where: str) -> None:
    """Checks that need the whole resolved config."""
    m = cfg["model"]
    if not m["method"]:
        raise ConfigError(f"{where}: 'model.method' is not set (a method id like marigold, or 'module:Class')")
    if m["tiny"] and m["pretrained"]:
        raise ConfigError(f"{where}: 'model.tiny' and 'model.pretrained' exclude each other")
    if not cfg["data"]["train"]:
        raise ConfigError(f"{where}: 'data.train' lists no dataset")
    for i, e in enumerate(cfg["data"]["train"]):
        _check_dataset(e, where, f"data.train.{i}", partial=False)
    if sum(float(e.get("weight", 1.0)) for e in cfg["data"]["train"]) <= 0:
        raise ConfigError(f"{where}: the weights in 'data.train' sum to 0")
    if cfg["val"]["data"] is not None:
        _check_dataset(cfg["val"]["data"], where, "val.data", partial=False)
    for key in ("train.max_steps", "train.batch_size", "train.grad_accum_steps", "checkpoint.every",
                "log.every"):
        sec, name = key.split(".")
        if cfg[sec][name] < 1:
            raise ConfigError(f"{where}: '{key}' must be >= 1, got {cfg[sec][name]}")
    for key in ("data.num_workers", "checkpoint.keep_last", "val.every", "val.samples", "log.images_every",
                "schedule.warmup_steps"):
        sec, name = key.split(".")
        if cfg[sec][name] < 0:
            raise ConfigError(f"{where}: '{key}' must be >= 0, got {cfg[sec][name]}")
    if not 0.0 <= cfg["ema"]["decay"] < 1.0:
        raise ConfigError(f"{where}: 'ema.decay' must be in [0, 1), got {cfg['ema']['decay']}")
    betas = cfg["optim"]["betas"]
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
        raise ConfigError(f"{where}: 'optim.betas' must be two numbers in [0, 1), got {betas!r}")
    eff = cfg["train"]["effective_batch_size"]
    if eff is not None and eff < 1:
        raise ConfigError(f"{where}: 'train.effective_batch_size' must be >= 1, got {eff}")


def load_config(path: Optional[PathLike] = None, overrides: Sequence[str] = (), debug: bool = False) -> dict:
    """Resolve a recipe: defaults <- bases <- file <- overrides (<- debug caps).

    Returns a complete, validated dict. ``debug=True`` (or ``debug: true`` anywhere
    in the layers) applies :func:`apply_debug`.
    """
    cfg = defaults()
    where = "config"
    if path is not None:
        path = Path(path)
        cfg = deep_merge(cfg, _load_layers(path, "command line", ()))
        where = str(path)
    cfg = apply_overrides(cfg, overrides)
    cfg = validate(cfg, where, partial=False)
    if debug:
        cfg["debug"] = True
    if cfg["debug"]:
        cfg = apply_debug(cfg)
    check_complete(cfg, where)
    return cfg


def dump_config(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False)


def save_config(cfg: dict, path: PathLike) -> Path:
    """Write the resolved config atomically (``RUN/config.yaml``)."""
    from ..utils import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(dump_config(cfg))
    return path


def diff_configs(a: dict, b: dict, prefix: str = "") -> list:
    """Dotted keys whose values differ between two resolved configs."""
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict) and k not in ("args", "task"):
            out += diff_configs(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out
