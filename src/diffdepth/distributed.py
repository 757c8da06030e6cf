"""Data-parallel inference and evaluation on Accelerate's ``PartialState``.

Single process every helper is a no-op. Under ``accelerate launch`` or ``torchrun`` the
first helper that needs the group joins it (``nccl`` with CUDA, ``gloo`` otherwise) or
reuses Accelerate's. ``shard`` gives each rank one contiguous block in rank order
(``split_between_processes``), so the blocks of ``gather_objects(shard(xs))`` joined are ``xs``
on every process.
"""
from __future__ import annotations

import atexit
import os
from datetime import timedelta
from typing import Any, List, Sequence


def world_size() -> int:
    """Processes the launcher started (read from its ``WORLD_SIZE``; joins no group)."""
    return max(1, int(os.environ.get("WORLD_SIZE") or 1))


def is_distributed() -> bool:
    return world_size() > 1


def state():
    """Accelerate's process state; the first call under a launcher joins the process group.
    Not used in a single process, so no device is chosen before the trainer's ``Accelerator``."""
    from accelerate import PartialState

    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT", "RANK") if v not in os.environ]
    if missing and is_distributed():
        from .errors import InputError

        raise InputError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set — "
                         "start the command with `accelerate launch` or `torchrun`")
    if not PartialState._shared_state:
        import torch

        # Accelerate runs several processes on CPU (gloo) only when told cpu=True
        PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(seconds=1800))
        atexit.register(_shutdown)
    return PartialState()


def _shutdown() -> None:
    """Wait (bounded) for every process, then tear the group down before the interpreter exits:
    a gloo group left to interpreter shutdown can abort a process while its peer still works."""
    import torch.distributed as tdist

    if tdist.is_initialized():
        try:
            tdist.monitored_barrier(timeout=timedelta(seconds=60)) if tdist.get_backend() == "gloo" else tdist.barrier()
        except Exception:
            pass
        finally:
            tdist.destroy_process_group()


def is_main() -> bool:
    return not is_distributed() or state().is_main_process


def shard(items: Sequence) -> List:
    """This process's contiguous block of ``items`` (all of them in a single process)."""
    if not is_distributed():
        return list(items)
    with state().split_between_processes(list(items)) as mine:
        return list(mine)


def gather_objects(obj: Any) -> List[Any]:
    """Every process's ``obj`` (picklable), in rank order, on every process."""
    if not is_distributed():
        return [obj]
    from accelerate.utils import gather_object

    state()
    return list(gather_object([obj]))


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every process."""
    if not is_distributed():
        return obj
    from accelerate.utils import broadcast_object_list

    state()
    return broadcast_object_list([obj], from_process=src)[0]


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if is_distributed():
        state().wait_for_everyone()
