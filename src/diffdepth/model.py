"""The interface every method implements (DESIGN.md, principle 2).

A method is an ``nn.Module`` subclass of :class:`DepthModel`:

* ``predict(images[B,3,H,W] in [0,1], **options) -> DepthPrediction`` with
  ``depth[B,1,H,W]``. ``H`` and ``W`` are already multiples of ``size_multiple``
  (the pipeline pads); the module does no file I/O and picks no device.
* ``video_step(images, state, **options) -> (DepthPrediction, state)``: the hook the
  video pipeline calls frame after frame (default: stateless ``predict``).
* ``make_training_task(**cfg)`` returns a callable ``task(batch) -> {"loss", "logs"}``.
* ``save_pretrained(dir)`` / ``from_pretrained(dir or hub id)``: ``diffdepth.json``
  (``{"method": ..., "config": {...}}``) + ``model.safetensors`` (+ the SD backbone's diffusers
  subfolders); constructor arguments are the config (:func:`register_to_config`);
  ``can_load(path)`` tells :func:`diffdepth.load_model` which class a folder belongs to.
* ``make_tiny(seed)``: a randomly initialised few-dozen-channel instance for tests and
  ``diffdepth make-tiny``.
"""
from __future__ import annotations

import copy
import functools
import inspect
import json
import numbers
from pathlib import Path
from typing import Any, ClassVar, Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from .errors import CheckpointError, ConfigError, InputError
from .types import DepthPrediction

CONFIG_NAME = "diffdepth.json"
WEIGHTS_NAME = "model.safetensors"


def read_json(file: Path) -> Optional[dict]:
    """A checkpoint's JSON file as a dict; ``None`` when there is none; a corrupt one is an error."""
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file} is not valid JSON ({err}) — the checkpoint is corrupt") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} holds no JSON object — the checkpoint is corrupt")
    return data


def register_to_config(init):
    """Decorator for a model's ``__init__`` (as diffusers' ``register_to_config``): the arguments, defaults
    filled in and JSON-normalised (tuples become lists), minus the class's ``config_ignore``, become
    ``self.config`` before the body runs; the body may refine entries (e.g. store a resolved "auto").
    ``**kwargs`` are recorded too. Of nested decorated ``__init__`` calls the outermost records."""
    sig = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        if "config" not in self.__dict__:
            bound = sig.bind(self, *args, **kwargs)
            bound.apply_defaults()
            given = dict(list(bound.arguments.items())[1:])
            for name, param in sig.parameters.items():
                if param.kind is inspect.Parameter.VAR_KEYWORD:
                    given.update(given.pop(name))
                elif param.kind is inspect.Parameter.VAR_POSITIONAL:
                    given.pop(name)
            try:
                config = {k: json.loads(json.dumps(v)) for k, v in given.items() if k not in type(self).config_ignore}
            except (TypeError, ValueError) as err:
                raise ConfigError(f"{type(self).__name__}: a constructor argument cannot be saved in {CONFIG_NAME} "
                                  f"({err}) — pass JSON values or list it in config_ignore") from None
            object.__setattr__(self, "config", config)
        init(self, *args, **kwargs)

    return wrapper


class DepthModel(nn.Module):
    #: registry id, e.g. "primedepth"
    method: ClassVar[str] = ""
    #: one of diffdepth.types.DEPTH_KINDS
    output_kind: ClassVar[str] = ""
    #: options ``predict`` understands beyond the images: name -> {"type", "help", "choices", "min", "metavar"};
    #: the CLI makes a flag ``--name`` of each with a help (bool: a switch), the others go by ``--opt``;
    #: :meth:`check_options` holds every value to its spec (a bare set of names: unchecked values)
    predict_options: ClassVar[dict] = {}

    #: the pipeline pads inputs to a multiple of this
    size_multiple: int = 8
    #: smallest input side (pixels) the pipeline accepts; smaller images are rejected
    min_size: int = 16
    #: default long side the pipeline resizes to (0: keep the input size)
    default_processing_res: int = 768
    #: True: the processing resolution only caps the long side (smaller inputs keep their size)
    processing_res_is_cap: bool = False
    #: how the pipeline resizes: "default" rounds the processed sides and antialiases any shrink;
    #: "marigold" is diffusers' MarigoldDepthPipeline: sides floored (side·res // long side) and the
    #: prediction resized back without antialiasing
    resize_convention: str = "default"
    #: ``(H, W)`` the network was trained at and is always fed (Monodepth2 family, e.g. (192, 640)):
    #: the pipeline resizes every input to exactly this size (aspect ratio not kept, no padding)
    #: unless a processing resolution is given explicitly; ``None``: keep the aspect ratio and pad
    fixed_input_size: Optional[Tuple[int, int]] = None

    #: constructor arguments :func:`register_to_config` leaves out of the config (modules, callables)
    config_ignore: ClassVar[Tuple[str, ...]] = ()
    #: SD-backed methods: the Stable Diffusion parts of ``self.sd`` saved as diffusers subfolders and loaded
    #: back as the first constructor argument (``None``: no backbone)
    sd_components: ClassVar[Optional[Tuple[str, ...]]] = None
    #: values for config keys a saved ``diffdepth.json`` lacks (see :meth:`saved_config`)
    legacy_config: ClassVar[Dict[str, Any]] = {}
    #: earlier names of ``model.safetensors`` still read
    legacy_weights: ClassVar[Tuple[str, ...]] = ()
    #: earlier parameter-name prefixes -> today's: the trainer renames the keys of a training state saved
    #: before a module moved (and ``optim.lr_multipliers`` prefixes) with :meth:`upgrade_state_key`
    legacy_state_prefixes: ClassVar[Dict[str, str]] = {}

    # ------------------------------------------------------------------ inference
    def predict(self, images: torch.Tensor, **options: Any) -> DepthPrediction:  # pragma: no cover
        raise NotImplementedError

    def video_step(self, images: torch.Tensor, state: Any = None, **options: Any):
        """One video frame (batch of 1). Override for temporal consistency."""
        return self.predict(images, **options), state

    @classmethod
    def check_options(cls, options: dict) -> dict:
        """``options`` held to :attr:`predict_options` (unknown names, types, choices, minimums); returns them
        typed (ints given for floats become floats, scalars given for text become text)."""
        unknown = set(options) - set(cls.predict_options)
        if unknown:
            names = ", ".join("--" + k.replace("_", "-") for k in sorted(unknown))
            allowed = ", ".join(sorted(cls.predict_options)) or "none"
            raise InputError(f"option(s) {names} do not apply to method {cls.method!r} (it accepts: {allowed})")
        checked = {}
        for name, value in options.items():  # values from --opt arrive YAML-typed: "3" is 3, "abc" is "abc"
            spec = cls.predict_options[name] if isinstance(cls.predict_options, dict) else {}  # a bare set: untyped
            flag = ("--" + name.replace("_", "-")) if spec.get("help") else f"--opt {name}"
            kind = spec.get("type")
            if value is None or kind is None:
                pass
            elif kind is str:
                value = value if isinstance(value, str) else str(value)  # --opt prompt=123 means the text "123"
            elif kind is bool:
                if not isinstance(value, (bool, np.bool_)):
                    raise InputError(f"{flag} of {cls.method} takes true or false, got {value!r}")
                value = bool(value)
            elif kind in (int, float):  # numpy scalars too; a bool is no number here
                if isinstance(value, (bool, np.bool_)) or not isinstance(
                        value, numbers.Integral if kind is int else numbers.Real):
                    raise InputError(f"{flag} of {cls.method} takes {'an integer' if kind is int else 'a number'}, "
                                     f"got {value!r}")
                value = kind(value)
            if value is not None and spec.get("choices") and value not in spec["choices"]:
                raise InputError(f"{flag} of {cls.method} is one of {', '.join(map(str, spec['choices']))}, "
                                 f"got {value!r}")
            if value is not None and spec.get("min") is not None and not value >= spec["min"]:  # NaN too
                raise InputError(f"{flag} of {cls.method} must be >= {spec['min']}, got {value}")
            checked[name] = value
        return checked

    # ------------------------------------------------------------------ training
    def make_training_task(self, **cfg: Any):  # pragma: no cover
        raise NotImplementedError(f"{self.method} has no training task")

    # ------------------------------------------------------------------ serialisation
    def get_config(self) -> dict:
        """Constructor arguments that rebuild this model (JSON-serialisable)."""
        return copy.deepcopy(dict(getattr(self, "config", {})))

    def own_state_dict(self) -> Dict[str, torch.Tensor]:
        """Every tensor but the Stable Diffusion backbone's (those go to diffusers subfolders)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("sd.")}

    def save_pretrained(self, path: Union[str, Path]) -> Path:
        """``diffdepth.json`` + ``model.safetensors`` + (SD-backed methods) the ``sd_components`` of
        ``self.sd`` as diffusers subfolders. Written file by file, each atomically, into ``path``
        (the trainer's checkpoint folder already holds the training state)."""
        from safetensors.torch import save_file

        from .utils import atomic_path

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        sd = getattr(self, "sd", None)
        if sd is not None and self.sd_components is not None:
            sd.save_pretrained(path, components=[c for c in self.sd_components if getattr(sd, c, None) is not None])
        state = {k: v.detach().contiguous().cpu() for k, v in self.own_state_dict().items()}
        with atomic_path(path / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt", "method": self.method})
        self.write_marker(path)
        return path

    def write_marker(self, path: Union[str, Path], extra: Optional[dict] = None) -> None:
        from .utils import atomic_path
        from . import __version__

        cls = type(self)
        data = {"method": self.method, "target": f"{cls.__module__}:{cls.__qualname__}",
                "diffdepth_version": __version__, "config": self.get_config()}
        if extra:
            data.update(extra)
        with atomic_path(Path(path) / CONFIG_NAME) as tmp:
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True))

    @classmethod
    def can_load(cls, path: Union[str, Path]) -> bool:
        """Whether ``path`` is a checkpoint of this class (default: its ``diffdepth.json`` names this method).
        Methods that also read foreign layouts (official checkpoints, diffusers pipelines) extend it."""
        marker = read_json(Path(path) / CONFIG_NAME)
        return marker is not None and marker.get("method") == cls.method

    @classmethod
    def upgrade_state_key(cls, name: str) -> str:
        """Today's name of a parameter, buffer or name prefix saved under an earlier one (:attr:`legacy_state_prefixes`)."""
        old = next((p for p in cls.legacy_state_prefixes if name.startswith(p)), None)
        return name if old is None else cls.legacy_state_prefixes[old] + name[len(old):]

    @classmethod
    def saved_config(cls, marker: Dict[str, Any]) -> Dict[str, Any]:
        """Constructor arguments from a ``diffdepth.json``; a key it lacks (saved before the option
        existed) gets its :attr:`legacy_config` value: the behaviour that checkpoint was made with."""
        return {**cls.legacy_config, **marker.get("config", {})}

    @classmethod
    def from_pretrained(cls, source: Union[str, Path], device: Optional[torch.device] = None,
                        dtype: Optional[torch.dtype] = None, **overrides: Any) -> "DepthModel":
        """Load a :meth:`save_pretrained` folder (local or hub id); ``overrides`` replace saved constructor
        arguments (inference options; architecture options must match the weights)."""
        path = cls.resolve_source(source, overrides)
        marker = read_json(path / CONFIG_NAME)
        if marker is None:
            raise CheckpointError(f"{path} is not a diffdepth checkpoint (no {CONFIG_NAME})")
        target = f"{cls.__module__}:{cls.__qualname__}"
        if marker.get("method") not in (None, cls.method) and marker.get("target") != target:
            raise CheckpointError(f"{path} is a {marker.get('method')!r} checkpoint, not {cls.method!r}")
        weights = next((path / n for n in (WEIGHTS_NAME, *cls.legacy_weights) if (path / n).exists()), None)
        if weights is None:  # before the (slow) backbone load
            raise CheckpointError(f"{path} has no {WEIGHTS_NAME} — the checkpoint is incomplete")
        model = cls.construct(path, {**cls.saved_config(marker), **overrides})
        from safetensors.torch import load_file

        state = load_file(str(weights))
        own = set(model.own_state_dict())
        missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
        if missing or unexpected:
            raise CheckpointError(f"{weights} does not match the config in {CONFIG_NAME} ({len(missing)} missing "
                                  f"e.g. {missing[:2]}, {len(unexpected)} unexpected e.g. {unexpected[:2]}) — "
                                  f"do not override architecture options when loading")
        model.load_state_dict(state, strict=False)
        return model.to(device=device, dtype=dtype).eval()

    @classmethod
    def resolve_source(cls, source: Union[str, Path], overrides: Dict[str, Any]) -> Path:
        """A hub id or local path -> the local checkpoint folder (a hook: e.g. convert an official file)."""
        from .hub import resolve_checkpoint

        return resolve_checkpoint(source)

    @classmethod
    def construct(cls, path: Path, config: Dict[str, Any]) -> "DepthModel":
        """The model of a checkpoint folder before its weights are loaded: SD-backed methods get the
        backbone from the diffusers subfolders present as their first argument."""
        if cls.sd_components is None:
            return cls(**config)
        from .backbone import StableDiffusion

        parts = [c for c in cls.sd_components if (path / c).is_dir()]
        return cls(StableDiffusion.from_pretrained(path, components=parts), **config)

    @classmethod
    def make_tiny(cls, seed: int = 0, **overrides: Any) -> "DepthModel":  # pragma: no cover
        """A randomly initialised tiny instance (few dozen channels) for tests and make-tiny."""
        raise NotImplementedError

    @classmethod
    def build(cls, backbone: str = "stabilityai/stable-diffusion-2-1", **config: Any) -> "DepthModel":  # pragma: no cover
        """A new, untrained model around a pretrained Stable Diffusion (hub id or folder).

        This is what training recipes start from; ``make_tiny`` is its tiny twin.
        """
        raise NotImplementedError
