"""diffdepth.distributed (on Accelerate's PartialState): single-process no-ops and a real 2-process gloo run.

Run as a script under a launcher, this file is the worker of the 2-process test:
    torchrun --nproc_per_node 2 tests/test_distributed.py OUT_DIR
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from diffdepth import distributed as dist

ITEMS = [f"img{i:02d}.png" for i in range(11)]


def test_single_process_helpers_are_noops(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert dist.world_size() == 1 and dist.is_main() and not dist.is_distributed()
    assert dist.shard(ITEMS) == ITEMS
    assert dist.gather_objects({"a": 1}) == [{"a": 1}]
    assert dist.broadcast_object(5) == 5
    dist.barrier()


def test_world_size_without_rendezvous_is_a_clear_error(monkeypatch):
    from diffdepth.errors import InputError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(InputError, match="torchrun"):
        dist.gather_objects(1)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_group(cmd, env, timeout, cwd=None):
    """Run a launcher in its own process group; on timeout kill the whole group (no orphans)."""
    import signal

    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        return -9, f"timed out after {timeout} s\n" + err
    return proc.returncode, err


def _worker(out_dir: str) -> None:
    """Each process shards ITEMS, 'processes' its share and gathers everything back."""
    mine = dist.shard(ITEMS)
    records = [{"name": x, "value": len(x) * 10 + int(x[3:5])} for x in mine]
    everyone = dist.gather_objects(records)
    merged = [r for part in everyone for r in part]  # contiguous shards: rank order == input order
    rank = dist.state().process_index
    stamp = dist.broadcast_object(f"from-rank-{rank}")
    dist.barrier()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "world": dist.world_size(), "mine": mine, "merged": merged,
        "stamp": stamp}))


def test_two_process_gloo_shard_and_gather(tmp_path):
    launcher = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    cmd = ([launcher] if launcher else [sys.executable, "-m", "torch.distributed.run"])
    cmd += ["--nproc_per_node", "2", "--master_port", str(free_port()), __file__, str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    code, stderr = run_group(cmd, env, timeout=180)
    assert code == 0, stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert (r0["world"], r1["world"]) == (2, 2)
    assert r0["mine"] == ITEMS[:6] and r1["mine"] == ITEMS[6:]
    single = [{"name": x, "value": len(x) * 10 + int(x[3:5])} for x in ITEMS]  # the 1-process result
    assert r0["merged"] == r1["merged"] == single
    assert r0["stamp"] == r1["stamp"] == "from-rank-0"


if __name__ == "__main__":
    _worker(sys.argv[1])
