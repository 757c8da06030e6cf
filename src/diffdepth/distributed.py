"""Process-group helpers for data-parallel inference and evaluation.

Single process (the default) every helper is a no-op: ``rank() == 0``,
``world_size() == 1``, ``shard(items) == list(items)``, ``gather_objects(x) == [x]``.

Under ``accelerate launch --num_processes N ...`` or ``torchrun --nproc_per_node N ...``
the launcher sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; the first helper that needs communication initialises the default
``torch.distributed`` process group from those variables (``nccl`` when a CUDA GPU is
visible, ``gloo`` otherwise). If Accelerate (or anything else) already initialised the
group, it is reused.

Typical use in a batch command::

    from diffdepth import distributed as dist
    mine = dist.shard(inputs)                 # this process's items, deterministic
    records = [process(x) for x in mine]      # each process writes its own outputs
    everyone = dist.gather_objects(records)   # [records of rank 0, rank 1, ...]
    if dist.is_main():
        write_summary(dist.unshard(everyone, len(inputs)))
"""
from __future__ import annotations

import atexit
import os
from datetime import timedelta
from typing import Any, List, Sequence, TypeVar

T = TypeVar("T")

__all__ = ["rank", "world_size", "local_rank", "is_main", "is_distributed", "init", "shard",
           "shard_indices", "unshard", "gather_objects", "broadcast_object", "barrier"]


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def _initialized() -> bool:
    import torch.distributed as tdist

    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    if _initialized():
        import torch.distributed as tdist

        return tdist.get_rank()
    return _env_int("RANK", 0)


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    if _initialized():
        import torch.distributed as tdist

        return tdist.get_world_size()
    return max(1, _env_int("WORLD_SIZE", 1))


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0)


def is_main() -> bool:
    return rank() == 0


def is_distributed() -> bool:
    return world_size() > 1


def init(timeout_s: float = 1800.0) -> bool:
    """Initialise the default process group from the launcher's env vars if needed.

    Returns True when a multi-process group is (now) available. Safe to call many times.
    """
    if _initialized():
        return True
    if max(1, _env_int("WORLD_SIZE", 1)) <= 1:
        return False
    import torch
    import torch.distributed as tdist

    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT", "RANK") if v not in os.environ]
    if missing:
        from .errors import InputError

        raise InputError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set — "
                         "start the command with `accelerate launch` or `torchrun`")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    tdist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    atexit.register(_shutdown)
    return True


def _shutdown() -> None:
    """Wait for every process, then tear the group down before the interpreter exits.

    A gloo group left to interpreter shutdown can abort a process ("terminate called
    without an active exception") while its peer is still finishing, failing the launch.
    """
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        try:  # bounded: a peer that crashed must not keep this process alive
            if tdist.get_backend() == "gloo":
                tdist.monitored_barrier(timeout=timedelta(seconds=60))
            else:
                tdist.barrier()
        except Exception:
            pass
        finally:
            tdist.destroy_process_group()


def shard_indices(n: int, mode: str = "contiguous", rank_: int | None = None,
                  world: int | None = None) -> List[int]:
    """Indices ``0..n-1`` this process handles.

    ``contiguous``: rank r gets one block; block sizes differ by at most one and
    the first ``n % world`` ranks get the larger blocks (like ``numpy.array_split``).
    ``strided``: rank r gets ``r, r + world, r + 2 world, ...``.
    Every index belongs to exactly one rank; the assignment depends only on
    ``(n, world, rank)``.
    """
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    if mode == "strided":
        return list(range(r, n, w))
    if mode != "contiguous":
        raise ValueError(f"unknown shard mode {mode!r}; use 'contiguous' or 'strided'")
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    stop = start + base + (1 if r < extra else 0)
    return list(range(start, stop))


def shard(items: Sequence[T], mode: str = "contiguous") -> List[T]:
    """This process's share of ``items`` (all of them in a single process)."""
    items = list(items)
    return [items[i] for i in shard_indices(len(items), mode)]


def unshard(per_rank: Sequence[Sequence[T]], n: int | None = None, mode: str = "contiguous") -> List[T]:
    """Inverse of :func:`shard`: put the gathered per-rank lists back in input order."""
    world = len(per_rank)
    total = sum(len(p) for p in per_rank) if n is None else n
    out: List[Any] = [None] * total
    for r, part in enumerate(per_rank):
        idx = shard_indices(total, mode, rank_=r, world=world)
        if len(idx) != len(part):
            raise ValueError(f"rank {r} returned {len(part)} items but owns {len(idx)}")
        for i, item in zip(idx, part):
            out[i] = item
    return out


def gather_objects(obj: Any) -> List[Any]:
    """Every process's ``obj`` (picklable), in rank order, on every process."""
    if not init():
        return [obj]
    import torch.distributed as tdist

    out: List[Any] = [None] * tdist.get_world_size()
    tdist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every process."""
    if not init():
        return obj
    import torch.distributed as tdist

    box = [obj if tdist.get_rank() == src else None]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if init():
        import torch.distributed as tdist

        tdist.barrier()
