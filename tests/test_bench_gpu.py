"""`diffdepth bench gpu`: the prepared GPU measurement, run as a --dry-run on the CPU so it cannot rot."""
import json

import torch
from torch import nn

from diffdepth.bench.gpu import METHODS, Meter, build_random
from diffdepth.cli import main


def test_dry_run_measures_every_method_and_the_baselines(tmp_path):
    md, js = tmp_path / "gpu.md", tmp_path / "gpu.json"
    rc = main(["bench", "gpu", "--dry-run", "--repeats", "1", "--warmup", "0", "--baseline-dtypes", "fp32,bf16",
               "--out", str(md), "--json", str(js)])
    assert rc == 0
    rows = json.loads(js.read_text())["rows"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == len(rows), [r for r in rows if r["status"] != "ok"]
    assert {r["method"] for r in ok} == set(METHODS)
    for r in ok:
        assert r["s"] > 0 and r["runs"] == 1 and r["total_gb"] > 0
    settings = {(r["method"], r["setting"], r["size"]) for r in ok}
    for size in (32, 64):  # 512² and 1024² at 1/16
        assert ("primedepth", "official procedure fp32", size) in settings
        assert ("primedepth", "official procedure bf16", size) in settings
    assert ("primedepth", "predict", 48) in settings  # 768²
    for part in ("1 step", "VAE encode", "UNet step", "VAE decode", "ensemble of 10"):
        assert ("marigold", part, 48) in settings
    assert any(r["batch"] == 2 for r in ok)  # the images/s sweep
    text = md.read_text()
    assert "DRY RUN" in text and "complete" in text and "diffdepth bench gpu --dry-run" in text
    baseline_rows = [l for l in text.splitlines() if l.startswith("| official procedure")]
    assert len(baseline_rows) == 4 and all("×" in l for l in baseline_rows)
    marigold_rows = [l for l in text.splitlines() if l.startswith("| 1 trailing step vs 50×10")]
    assert len(marigold_rows) == 3 and all(l.rstrip().endswith("× |") for l in marigold_rows)


def test_over_budget_still_writes_a_table_marked_partial(tmp_path):
    md = tmp_path / "gpu.md"
    assert main(["bench", "gpu", "--dry-run", "--methods", "diffsql,marigold", "--budget-s", "0",
                 "--out", str(md)]) == 0
    text = md.read_text()
    assert "**partial**" in text and text.count("skipped (budget)") == 5  # 2 diffsql + 3 marigold sizes


def test_build_random_keeps_buffers_and_fills_parameters_on_the_device():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(64, 32)
            self.norm = nn.LayerNorm(32)
            self.register_buffer("index", torch.arange(5) * 3)
            self.register_buffer("derived", self.a.weight.sum(1))  # from a parameter: left on meta

    net = build_random(Net, torch.device("cpu"), torch.float32, seed=0)
    assert torch.equal(net.index, torch.arange(5) * 3)
    assert not any(p.is_meta for p in net.parameters()) and not any(b.is_meta for b in net.buffers())
    assert abs(net.a.weight.std().item() - 64 ** -0.5) < 0.02 and torch.equal(net.a.bias, torch.zeros(32))
    assert torch.equal(net.norm.weight, torch.ones(32)) and torch.isfinite(net.derived).all()


def test_meter_times_the_asked_calls_and_stops_at_the_cap():
    calls = []
    meter = Meter(torch.device("cpu"))
    r = meter.measure(lambda: calls.append(1), repeats=5, warmup=2, cap_s=60)
    assert len(calls) == 7 and r["runs"] == 5 and r["s"] >= 0 and r["total_gb"] > 0
    calls.clear()
    r = meter.measure(lambda: calls.append(1), repeats=5, warmup=2, cap_s=0)  # one warm-up, one timed call
    assert len(calls) == 2 and r["runs"] == 1


def test_a_run_stopped_midway_leaves_a_table_marked_partial(tmp_path, monkeypatch):
    from diffdepth.bench import gpu

    md = tmp_path / "gpu.md"
    real = gpu.Run.run_method

    def stop_at_marigold(self, method):
        if method == "marigold":
            raise KeyboardInterrupt  # what gpu.sh's timeout does
        return real(self, method)

    monkeypatch.setattr(gpu.Run, "run_method", stop_at_marigold)
    rc = main(["bench", "gpu", "--dry-run", "--methods", "diffsql,marigold", "--repeats", "1", "--warmup", "0",
               "--no-batches", "--out", str(md)])
    assert rc == 130
    text = md.read_text()
    assert "**partial**: in progress or stopped after 2 measurements" in text
    assert text.count("| diffsql | predict |") == 2 and "| marigold |" not in text


def test_channels_last_runs_ours_nhwc_and_the_baseline_nchw(tmp_path, monkeypatch):
    """--channels-last: our predict sees NHWC conv weights, the official-procedure baseline NCHW."""
    import torch

    import diffdepth.bench.official as official
    from diffdepth.methods.primedepth.model import PrimeDepth

    def conv_layout(model):
        w = next(m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.ndim == 4
                 and m.weight.shape[-1] > 1)
        return "nhwc" if w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() else "nchw"

    seen = {"ours": set(), "official": set()}
    real_predict, real_official = PrimeDepth.predict, official.OfficialProcedure.predict

    def ours(self, *a, **k):
        seen["ours"].add(conv_layout(self))
        return real_predict(self, *a, **k)

    def base(self, *a, **k):
        seen["official"].add(conv_layout(self.model))
        return real_official(self, *a, **k)

    monkeypatch.setattr(PrimeDepth, "predict", ours)
    monkeypatch.setattr(official.OfficialProcedure, "predict", base)
    js = tmp_path / "cl.json"
    assert main(["bench", "gpu", "--dry-run", "--channels-last", "--methods", "primedepth", "--repeats", "1",
                 "--warmup", "0", "--baseline-dtypes", "fp32", "--no-batches", "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    assert "--channels-last" in data["command"] and all(r["status"] == "ok" for r in data["rows"])
    assert seen == {"ours": {"nhwc"}, "official": {"nchw"}}
