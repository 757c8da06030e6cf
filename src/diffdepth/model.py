"""The interface every method implements (DESIGN.md, principle 2).

A method is an ``nn.Module`` subclass of :class:`DepthModel`:

* ``predict(images[B,3,H,W] in [0,1], **options) -> DepthPrediction`` with
  ``depth[B,1,H,W]``. ``H`` and ``W`` are already multiples of ``size_multiple``
  (the pipeline pads); the module does no file I/O and picks no device.
* ``video_step(images, state, **options) -> (DepthPrediction, state)``: the hook the
  video pipeline calls frame after frame (default: stateless ``predict``).
* ``make_training_task(**cfg)`` returns a callable ``task(batch) -> {"loss", "logs"}``.
* ``save_pretrained(dir)`` / ``from_pretrained(dir or hub id)``: the folder always
  holds ``diffdepth.json`` (``{"method": ..., "config": {...}}``) so
  :func:`diffdepth.load_model` can find the class; constructor arguments are the config.
* ``make_tiny(seed)``: a randomly initialised few-dozen-channel instance for tests and
  ``diffdepth make-tiny``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Optional, Tuple, Union

import torch
from torch import nn

from .errors import CheckpointError, InputError
from .types import DepthPrediction

CONFIG_NAME = "diffdepth.json"
WEIGHTS_NAME = "model.safetensors"


class DepthModel(nn.Module):
    #: registry id, e.g. "primedepth"
    method: ClassVar[str] = ""
    #: one of diffdepth.types.DEPTH_KINDS
    output_kind: ClassVar[str] = ""
    #: options ``predict`` understands beyond the images: name -> {"type", "help", "choices", "min", "metavar"};
    #: the CLI makes a flag ``--name`` of each with a help (bool: a switch), the others go by ``--opt``
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

    # ------------------------------------------------------------------ inference
    def predict(self, images: torch.Tensor, **options: Any) -> DepthPrediction:  # pragma: no cover
        raise NotImplementedError

    def video_step(self, images: torch.Tensor, state: Any = None, **options: Any):
        """One video frame (batch of 1). Override for temporal consistency."""
        return self.predict(images, **options), state

    def check_options(self, options: dict) -> dict:
        unknown = set(options) - set(self.predict_options)
        if unknown:
            names = ", ".join("--" + k.replace("_", "-") for k in sorted(unknown))
            allowed = ", ".join(sorted(self.predict_options)) or "none"
            raise InputError(f"option(s) {names} do not apply to method {self.method!r} (it accepts: {allowed})")
        return options

    # ------------------------------------------------------------------ training
    def make_training_task(self, **cfg: Any):  # pragma: no cover
        raise NotImplementedError(f"{self.method} has no training task")

    # ------------------------------------------------------------------ serialisation
    def get_config(self) -> dict:
        """Constructor arguments that rebuild this model (JSON-serialisable)."""
        return dict(getattr(self, "config", {}))

    def save_pretrained(self, path: Union[str, Path]) -> Path:
        """Default layout: ``diffdepth.json`` + ``model.safetensors`` (all weights).

        Methods with a Stable Diffusion backbone override this to write diffusers
        subfolders; they still call :meth:`write_marker`.
        """
        from safetensors.torch import save_file

        from .utils import atomic_path

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_path(path / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp))
        self.write_marker(path)
        return path

    def save_with_backbone(self, path: Union[str, Path], sd_components: Optional[list] = None) -> Path:
        """Layout for methods built around a ``StableDiffusion`` attribute ``sd``.

        The SD parts go to diffusers subfolders (``vae/``, ``unet/`` ...), every other
        tensor to ``model.safetensors``, the config to ``diffdepth.json``; each file is
        written atomically. ``sd_components``: which SD parts (default: all present).
        """
        from safetensors.torch import save_file

        from .utils import atomic_path

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        sd = getattr(self, "sd", None)
        if sd is not None:
            sd.save_pretrained(path, components=sd_components)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items() if not k.startswith("sd.")}
        with atomic_path(path / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp))
        self.write_marker(path)
        return path

    def load_weights_beside_backbone(self, weights: Union[str, Path]) -> None:
        """Load a safetensors file holding every tensor but the ``sd.`` backbone; keys must match.

        The counterpart of :meth:`save_with_backbone` (whose SD parts are loaded from the
        diffusers subfolders separately).
        """
        from safetensors.torch import load_file

        weights = Path(weights)
        if not weights.exists():
            raise CheckpointError(f"{weights.parent} has no {weights.name} — the checkpoint is incomplete")
        state = load_file(str(weights))
        own = {k for k in self.state_dict() if not k.startswith("sd.")}
        missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
        if missing or unexpected:
            raise CheckpointError(f"{weights} does not match the config in {CONFIG_NAME} ({len(missing)} missing "
                                  f"e.g. {missing[:2]}, {len(unexpected)} unexpected e.g. {unexpected[:2]}) — "
                                  f"do not override architecture options when loading")
        self.load_state_dict(state, strict=False)

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

    @staticmethod
    def read_marker(path: Union[str, Path]) -> dict:
        file = Path(path) / CONFIG_NAME
        try:
            return json.loads(file.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{path} is not a diffdepth checkpoint (no {CONFIG_NAME})") from None
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{file} is not valid JSON ({err}) — the checkpoint is corrupt") from None

    @classmethod
    def from_pretrained(cls, source: Union[str, Path], device: Optional[torch.device] = None,
                        dtype: Optional[torch.dtype] = None, **kwargs: Any) -> "DepthModel":
        """Default loader matching the default :meth:`save_pretrained`."""
        from safetensors.torch import load_file

        from .hub import resolve_checkpoint

        path = resolve_checkpoint(source)
        marker = cls.read_marker(path)
        model = cls(**{**marker.get("config", {}), **kwargs})
        weights = path / WEIGHTS_NAME
        if not weights.exists():
            raise CheckpointError(f"{path} has no {WEIGHTS_NAME}")
        model.load_state_dict(load_file(str(weights)))
        return model.to(device=device, dtype=dtype).eval()

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
