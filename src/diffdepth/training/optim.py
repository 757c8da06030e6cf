"""Optimiser with parameter groups, per-prefix LR multipliers, and EMA of trainable weights.

Only parameters with ``requires_grad=True`` enter the optimiser, so frozen modules
(a frozen VAE / text encoder / SD UNet) never receive optimizer state.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Iterable, List, Tuple

import torch
from torch import nn

from ..errors import ConfigError


def multiplier_for(name: str, multipliers: Dict[str, float]) -> Tuple[str, float]:
    """The longest prefix of ``name`` in ``multipliers`` and its factor (``('', 1.0)`` if none)."""
    best = ""
    for prefix in multipliers:
        if name.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    return best, float(multipliers[best]) if best else 1.0


def param_groups(model: nn.Module, lr: float, weight_decay: float = 0.0,
                 lr_multipliers: Dict[str, float] | None = None, no_decay_1d: bool = False) -> List[dict]:
    """Trainable parameters grouped by (LR multiplier, weight decay).

    Each group carries ``lr`` (= base lr × multiplier, the value at schedule factor 1),
    ``base_lr`` (same, kept so the trainer can apply the schedule), ``lr_multiplier``,
    ``prefix`` and ``names``. A multiplier of 0 freezes the matching parameters
    (they are left out, like ``requires_grad=False``). A prefix of an earlier parameter layout is renamed by
    the model's ``upgrade_state_key`` (e.g. Marigold's ``unet.`` is ``sd.unet.`` today).
    """
    rename = getattr(model, "upgrade_state_key", lambda name: name)
    multipliers = {rename(k): v for k, v in (lr_multipliers or {}).items()}
    unused = set(multipliers)
    groups: "OrderedDict[tuple, dict]" = OrderedDict()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        prefix, mult = multiplier_for(name, multipliers)
        unused.discard(prefix)
        if mult == 0:
            continue
        wd = 0.0 if (no_decay_1d and p.ndim <= 1) else weight_decay
        key = (prefix, mult, wd)
        g = groups.setdefault(key, {"params": [], "names": [], "lr": lr * mult, "base_lr": lr * mult,
                                    "lr_multiplier": mult, "weight_decay": wd, "prefix": prefix})
        g["params"].append(p)
        g["names"].append(name)
    if unused:
        raise ConfigError(f"optim.lr_multipliers: prefix(es) {', '.join(sorted(unused))} match no trainable "
                          f"parameter of {type(model).__name__}")
    if not groups:
        raise ConfigError(f"{type(model).__name__} has no trainable parameter (all requires_grad=False)")
    return list(groups.values())


def build_optimizer(model: nn.Module, optim_cfg: dict) -> torch.optim.Optimizer:
    """Adam/AdamW over :func:`param_groups` from the ``optim`` config section."""
    groups = param_groups(model, float(optim_cfg["lr"]), float(optim_cfg["weight_decay"]),
                          optim_cfg.get("lr_multipliers"), bool(optim_cfg.get("no_decay_1d", False)))
    name = optim_cfg["name"].lower()
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}.get(name)
    if cls is None:
        raise ConfigError(f"optim.name: unknown optimiser {name!r}; use adam or adamw")
    return cls(groups, lr=float(optim_cfg["lr"]), betas=tuple(float(b) for b in optim_cfg["betas"]),
               eps=float(optim_cfg["eps"]), weight_decay=float(optim_cfg["weight_decay"]))


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * factor


class EMA:
    """Exponential moving average of a model's trainable parameters (fp32 shadow copies).

    ``shadow = d * shadow + (1 - d) * param`` after each optimizer step, with
    ``d = min(decay, (1 + n) / (10 + n))`` when ``warmup`` (n = updates so far).
    ``swap(model)`` exchanges the live and averaged weights (call twice to undo).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.shadow: "OrderedDict[str, torch.Tensor]" = OrderedDict(
            (n, p.detach().float().clone()) for n, p in model.named_parameters() if p.requires_grad)

    def _params(self, model: nn.Module) -> Iterable[Tuple[str, torch.Tensor]]:
        for n, p in model.named_parameters():
            if n in self.shadow:
                yield n, p

    def current_decay(self) -> float:
        if self.warmup:
            return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        for n, p in self._params(model):
            s = self.shadow[n]
            if s.device != p.device:
                s = self.shadow[n] = s.to(p.device)
            s.mul_(d).add_(p.detach().float(), alpha=1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def swap(self, model: nn.Module) -> None:
        for n, p in self._params(model):
            live = p.detach().clone()
            p.copy_(self.shadow[n].to(p.dtype))
            self.shadow[n] = live.float()

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "shadow": {k: v.detach().cpu() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) - set(state["shadow"])
        if missing:
            raise ValueError(f"EMA state lacks {len(missing)} parameters, e.g. {sorted(missing)[0]}")
        self.num_updates = int(state["num_updates"])
        for k in self.shadow:
            self.shadow[k] = state["shadow"][k].to(self.shadow[k].device).float()
