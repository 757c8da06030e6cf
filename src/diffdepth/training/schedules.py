"""Learning-rate schedules as pure functions of the optimizer step.

``lr_factor(step, **cfg)`` returns the multiplier of the base learning rate for the
optimizer step ``step`` (0-based: the factor used by the first update is
``lr_factor(0)``). Being pure functions of the step, they need no state in a
checkpoint: a resumed run recomputes the same value.

Warm-up (all schedules but ``onecycle`` and ``vpd``): ``factor = step / warmup_steps`` for
``step < warmup_steps`` (Marigold's convention: the first update has lr 0), then
the schedule proper runs over ``s = step - warmup_steps`` for
``L = decay_steps - warmup_steps`` steps.

* ``constant``: 1.
* ``exponential`` (Marigold, Ke et al. 2024, Sec. 4 "exponential decay after 100 warm-up
  steps"): ``final_ratio ** (s / L)``; ``final_ratio`` once ``step >= decay_steps``.
* ``polynomial``: ``(1 - final_ratio) (1 - s/L) ** power + final_ratio``.
* ``onecycle`` (Smith & Topin 2019; same values as ``torch.optim.lr_scheduler.OneCycleLR``
  with ``max_lr = lr``): rises from ``1/div_factor`` to 1 over
  ``pct_start * decay_steps - 1`` steps, then anneals to
  ``1/(div_factor * final_div_factor)`` at step ``decay_steps - 1`` (cosine or linear).
* ``multistep``: ``gamma ** (number of milestones <= step)`` (Monodepth2/DiffSQL:
  ×0.1 at epoch 15).
* ``vpd`` (VPD's ``depth/train.py``, also ECoDepth's; no warm-up): with ``g = step + 1``
  (VPD counts from 1), ``r = final_ratio`` (VPD: min_lr/max_lr = 3e-5/5e-4) and
  ``P = decay_steps / 2`` (VPD: iterations per epoch × (epochs // 2)):
  ``r + (1 − r)(g/P) ** power`` for ``g < P``, then ``max(r, 1 − (1 − r)(g/P − 1) ** power)``
  (VPD: power 0.9) — up to the peak, down to the floor ``r`` at ``decay_steps``, then flat.
"""
from __future__ import annotations

import bisect
import math
from typing import Optional, Sequence

from ..errors import ConfigError

SCHEDULES = ("constant", "exponential", "polynomial", "onecycle", "multistep", "vpd")


def _anneal(start: float, end: float, pct: float, how: str) -> float:
    if how == "cos":
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)
    return (end - start) * pct + start


def lr_factor(step: int, name: str = "constant", *, max_steps: int = 1, warmup_steps: int = 0,
              decay_steps: Optional[int] = None, final_ratio: float = 0.01, power: float = 1.0,
              pct_start: float = 0.3, div_factor: float = 25.0, final_div_factor: float = 1e4,
              anneal: str = "cos", milestones: Sequence[int] = (), gamma: float = 0.1) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (see module doc)."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    total = int(decay_steps) if decay_steps is not None else int(max_steps)
    if name == "onecycle":
        if total < 2:
            raise ConfigError("schedule onecycle needs decay_steps (or train.max_steps) >= 2")
        initial = 1.0 / div_factor
        final = initial / final_div_factor
        up_end = float(pct_start * total) - 1.0
        down_end = float(total - 1)
        step = min(step, total - 1)
        if step <= up_end:
            return _anneal(initial, 1.0, step / up_end if up_end > 0 else 1.0, anneal)
        return _anneal(1.0, final, (step - up_end) / (down_end - up_end), anneal)
    if name == "vpd":
        if total < 2:
            raise ConfigError("schedule vpd needs decay_steps (or train.max_steps) >= 2")
        g, r = (step + 1) / (total / 2.0), float(final_ratio)
        if g < 1.0:
            return r + (1.0 - r) * g ** power
        return max(r, 1.0 - (1.0 - r) * (g - 1.0) ** power)
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    if name == "constant":
        return 1.0
    if name == "multistep":
        return gamma ** bisect.bisect_right(sorted(milestones), step)
    length = total - warmup_steps
    if name in ("exponential", "polynomial"):
        if length <= 0 or step >= total:
            return float(final_ratio)
        frac = (step - warmup_steps) / length
        if name == "exponential":
            return math.exp(frac * math.log(final_ratio)) if final_ratio > 0 else (1.0 if frac == 0 else 0.0)
        return (1.0 - final_ratio) * (1.0 - frac) ** power + final_ratio
    raise ConfigError(f"unknown schedule {name!r}; use one of {', '.join(SCHEDULES)}")


def schedule_from_config(cfg: dict):
    """``step -> factor`` for a resolved config (``schedule`` section + ``train.max_steps``)."""
    s = dict(cfg["schedule"])
    name = s.pop("name")
    max_steps = cfg["train"]["max_steps"]

    def factor(step: int) -> float:
        return lr_factor(step, name, max_steps=max_steps, **s)

    factor(0)  # fail early on a bad combination
    return factor
