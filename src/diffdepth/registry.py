"""Method id -> implementing class, default checkpoint and description.

Classes are imported lazily so ``diffdepth info`` and the CLI start fast and a
broken optional method cannot break the others.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch

from .errors import CheckpointError, InputError


@dataclass(frozen=True)
class MethodInfo:
    id: str
    target: str  # "module:Class"
    default_checkpoint: Optional[str]
    output_kind: str
    summary: str

    def load_class(self):
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)


_METHODS: dict[str, MethodInfo] = {}


def register(info: MethodInfo) -> None:
    _METHODS[info.id] = info


register(MethodInfo(
    "marigold", "diffdepth.methods.marigold:MarigoldDepth", "prs-eth/marigold-depth-v1-1",
    "affine_invariant_depth", "SD UNet fine-tuned as a latent depth denoiser (Ke et al. 2024)"))
register(MethodInfo(
    "metricgold", "diffdepth.methods.marigold:MetricGoldDepth", None,
    "metric_depth", "Marigold with log-depth normalisation: depth in metres (MetricGold)"))
register(MethodInfo(
    "primedepth", "diffdepth.methods.primedepth:PrimeDepth", "CVL-Heidelberg/PrimeDepth",
    "affine_invariant_disparity", "frozen SD, one step, preimage refined in pixel space (Zavadski et al. 2024)"))
register(MethodInfo(
    "seecoder-vpd", "diffdepth.methods.seecoder_vpd:SeeCoderVPD", None,
    "metric_depth", "UNet conditioned on SeeCoder image-semantic tokens + VPD decoder"))
register(MethodInfo(
    "diffsql", "diffdepth.methods.diffsql:DiffSQL", None,
    "relative_depth", "self-supervised ResNet + SD features + dynamic self-query bins (DiffSQL)"))
register(MethodInfo(
    "hf", "diffdepth.methods.hf:HFDepth", "depth-anything/Depth-Anything-V2-Small-hf",
    "from the model config", "any transformers depth-estimation model (Depth Anything, DPT, ZoeDepth ...)"))

#: what ``diffdepth predict photo.jpg`` uses when no --method is given
DEFAULT_METHOD = "marigold"


def list_methods() -> list[MethodInfo]:
    return list(_METHODS.values())


def get_method(method: str) -> MethodInfo:
    """A registered id, or ``"package.module:Class"`` for a method outside the registry."""
    if ":" in method and method not in _METHODS:
        return MethodInfo(method, method, None, "", "external method")
    try:
        return _METHODS[method]
    except KeyError:
        raise InputError(f"unknown method {method!r}; available: {', '.join(_METHODS)}") from None


def detect_method(path: Path) -> Optional[str]:
    """The method of a local checkpoint (a registry id, or "module:Class" for a method outside the registry):
    the one its ``diffdepth.json`` names, else the first registered class whose ``can_load`` accepts it."""
    from .model import CONFIG_NAME, read_json

    marker = read_json(path / CONFIG_NAME)
    if marker is not None:
        method = marker.get("method")
        return marker["target"] if method not in _METHODS and marker.get("target") else method
    for info in _METHODS.values():
        if info.load_class().can_load(path):
            return info.id
    return None


def load_model(method: Optional[str] = None, checkpoint: Union[str, Path, None] = None,
               device: Union[str, torch.device, None] = "auto",
               dtype: Union[str, torch.dtype, None] = None, **kwargs):
    """Load a depth model for inference.

    ``method`` may be omitted when ``checkpoint`` is a local folder (or file) a method's ``can_load``
    recognises; ``checkpoint`` may be omitted to use the method's published default.
    """
    from .utils import parse_device, parse_dtype

    method, checkpoint = resolve_method(method, checkpoint)
    cls = get_method(method).load_class()
    return cls.from_pretrained(checkpoint, device=parse_device(device), dtype=parse_dtype(dtype), **kwargs)


def _looks_local(text: str) -> bool:
    """A path rather than a hub id (``owner/name``): starts with . / ~, or has a drive or deeper nesting."""
    return text.startswith((".", "/", "~", "\\")) or text.count("/") > 1 or "\\" in text or text.endswith("/") \
        or (len(text) > 1 and text[1] == ":")


def resolve_method(method: Optional[str], checkpoint: Union[str, Path, None]) -> tuple:
    """(method id, checkpoint) that :func:`load_model` will load, without loading anything:
    the method from the checkpoint's marker when not given, the method's published weights
    when no checkpoint is given. Errors name the real cause (a missing local folder, a
    training run folder instead of one of its checkpoints, ...)."""
    if checkpoint is None:
        method = method or DEFAULT_METHOD
        checkpoint = get_method(method).default_checkpoint
        if checkpoint is None:
            raise InputError(f"method {method!r} has no published checkpoint — pass --checkpoint PATH "
                             f"(train one, or `diffdepth make-tiny DIR --method {method}` for a smoke test)")
        return method, checkpoint
    local = Path(checkpoint).expanduser()
    if local.exists():
        found = detect_method(local)
        if found is None and local.is_dir():
            runs = sorted((int(p.name.split("-")[1]), p) for p in local.glob("checkpoint-*")
                          if p.is_dir() and p.name.split("-")[1].isdigit())
            if runs:
                raise CheckpointError(f"{local} is a training run folder, not a checkpoint — pass one of its "
                                      f"checkpoints, e.g. --checkpoint {runs[-1][1]}")
        if method is None:
            if found is None:
                raise CheckpointError(f"cannot tell which method {local} belongs to: no method recognises it (no "
                                      f"diffdepth.json; not a Marigold, transformers depth or official PrimeDepth "
                                      f"checkpoint) — pass --method")
            method = found
        elif (found is not None and found != method and ":" not in method
              and not get_method(method).load_class().can_load(local)):
            raise CheckpointError(f"{local} is a {found!r} checkpoint, not {method!r} — drop --method or fix it")
    elif _looks_local(str(checkpoint)):
        raise InputError(f"checkpoint {checkpoint}: no such file or folder")
    elif method is None:
        raise InputError(f"pass --method when --checkpoint is a hub id ({checkpoint} is not a local folder)")
    get_method(method)
    return method, checkpoint
