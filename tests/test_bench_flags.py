"""Every ``diffdepth bench`` subcommand takes the same core flags (issue 17, item 10).

The flags are defined once (``diffdepth.bench.common.add_common_arguments``); the old spellings
(``--resolutions``, ``--height/--width``, gpu's ``--dry-run``/``--out``) parse to the same value,
and a flag that cannot apply to a benchmark is refused with one line, never ignored.
"""
import json

import pytest

from diffdepth.bench.common import COMMON_FLAGS, finalize, parse_sizes
from diffdepth.cli import build_parser, main
from diffdepth.commands.bench import BENCHMARKS


def parse(*argv):
    return finalize(build_parser().parse_args(["bench", *argv]))


def refusal(*argv) -> str:
    with pytest.raises(SystemExit) as err:
        parse(*argv)
    return str(err.value)


def test_parse_sizes():
    assert parse_sizes("256, 384x512") == [(256, 256), (384, 512)]
    for bad in ("", "0", "12x", "ax3", "1x2x3", "-4"):
        with pytest.raises(Exception, match="is not a size"):
            parse_sizes(bad)


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_every_benchmark_parses_the_common_flags(name, tmp_path):
    args = parse(name)
    assert hasattr(args, "_common"), f"bench {name}: define its flags with bench.common.add_common_arguments"
    spec = args._common
    dests = spec["dests"]
    sizes = "32,64" if spec["square"] else "32,48x64"
    values = {"sizes": [sizes], "json": [str(tmp_path / "r.json")], "record": [str(tmp_path / "r.md")],
              "tiny": [], "device": ["cpu"], "dtype": ["bf16"], "threads": ["3"], "repeats": ["4"]}
    expected = {"sizes": [(32, 32), (64, 64)] if spec["square"] else [(32, 32), (48, 64)],
                "json": str(tmp_path / "r.json"), "record": str(tmp_path / "r.md"), "tiny": True, "device": "cpu",
                "dtype": "bf16", "threads": 3, "repeats": 4}
    for flag in COMMON_FLAGS:
        argv = [name, f"--{flag}", *values[flag]]
        why = spec["unsupported"].get(flag)
        if flag in spec["fixed"]:  # one value only: that one parses, any other is refused
            value, reason = spec["fixed"][flag]
            assert getattr(parse(name, f"--{flag}", value), flag) == value
            other = "cuda" if flag == "device" else "bf16"
            assert refusal(name, f"--{flag}", other) == (f"diffdepth bench {name}: error: --{flag} {other}: this "
                                                          f"benchmark runs with {value} only ({reason})")
        elif why:  # parsed, then refused with the reason: never silently ignored
            msg = refusal(*argv)
            assert msg == f"diffdepth bench {name}: error: --{flag} does not apply to this benchmark: {why}"
        else:
            assert getattr(parse(*argv), dests.get(flag, flag)) == expected[flag], flag
    # defaults: sizes resolved to a list of (h, w); --tiny picks the small default where one is declared
    if "sizes" not in spec["unsupported"]:
        assert parse(name).sizes == parse_sizes(spec["sizes"])
        if spec["tiny_sizes"]:
            assert parse(name, "--tiny").sizes == parse_sizes(spec["tiny_sizes"])
        assert parse(name, "--tiny", "--sizes", "64").sizes == [(64, 64)]  # an explicit size wins


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_bad_common_values_are_refused_in_one_line(name, tmp_path):
    spec = parse(name)._common
    with pytest.raises(SystemExit) as err:  # argparse: usage + one error line, status 2
        build_parser().parse_args(["bench", name, "--sizes", "0"])
    assert err.value.code == 2
    if "repeats" not in spec["unsupported"]:
        assert refusal(name, "--repeats", "0") == f"diffdepth bench {name}: error: --repeats 0: must be >= 1"
    missing = tmp_path / "no" / "r.json"
    assert refusal(name, "--json", str(missing)).endswith(f"folder {missing.parent} does not exist; create it first")
    if spec["square"]:
        assert "square images only" in refusal(name, "--sizes", "32x48")


def test_old_spellings_map_to_the_same_value(tmp_path):
    assert parse("marigold", "--resolutions", "32", "64").sizes == parse("marigold", "--sizes", "32,64").sizes \
        == [(32, 32), (64, 64)]
    for name in ("diffsql", "seecoder-vpd"):
        new = parse(name, "--sizes", "64x96")
        old = parse(name, "--height", "64", "--width", "96")
        assert old.sizes == new.sizes == [(64, 96)] and (old.height, old.width) == (new.height, new.width) == (64, 96)
        h0, w0 = parse_sizes(parse(name)._common["sizes"])[0]
        assert parse(name, "--height", "64").sizes == [(64, w0)]  # the other side keeps its default
        assert parse(name, "--width", "96").sizes == [(h0, 96)]
        assert refusal(name, "--sizes", "64", "--height", "64").endswith("give either --sizes or --height/--width, "
                                                                          "not both")
    assert parse("gpu", "--tiny").dry_run is parse("gpu", "--dry-run").dry_run is True
    md = str(tmp_path / "g.md")
    assert parse("gpu", "--record", md).out == parse("gpu", "--out", md).out == md
    assert parse("seecoder-vpd", "--tiny").sizes == [(64, 96)]
    assert parse("pipeline", "--tiny").dry_run is parse("pipeline", "--dry-run").dry_run is True
    assert parse("pipeline", "--tiny").sizes == [(64, 96)]
    assert parse("pipeline", "--repeats", "3").rounds == parse("pipeline", "--rounds", "3").rounds == 3


def test_tiny_never_silently_overrides_an_explicit_choice():
    with pytest.raises(SystemExit, match="--tiny means --unet tiny --seecoder tiny; drop --unet sd15 or --tiny"):
        main(["bench", "seecoder-vpd", "--tiny", "--unet", "sd15"])


#: each benchmark with --tiny at a tiny size (taps is parsed only: 4 subprocesses, ~25 s even tiny)
RUNS = {
    "marigold": ["--sizes", "32", "--measure-steps", "1", "--no-warmup", "--members", "2"],
    "seecoder-vpd": ["--sizes", "32x64,64"],
    "native": ["--sizes", "32x48", "--variants", "chunked", "--threads", "1"],
    "primedepth": ["--sizes", "32", "--no-official", "--threads", "1"],
    "diffsql": ["--sizes", "64x96", "--threads", "1", "--repeats", "1", "--warmup", "0"],
    "gpu": ["--methods", "diffsql", "--no-batches", "--repeats", "1", "--warmup", "0"],
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_tiny_run_writes_json_and_record(name, tmp_path, capsys):
    js, md = tmp_path / "r.json", tmp_path / "r.md"
    assert main(["bench", name, "--tiny", *RUNS[name], "--json", str(js), "--record", str(md)]) == 0
    out = capsys.readouterr().out
    data = json.loads(js.read_text())
    record = md.read_text()
    assert record.strip() and record.strip().splitlines()[0] in out  # the printed report, recorded
    if name == "gpu":
        assert "DRY RUN" in record and {r["method"] for r in data["rows"]} == {"diffsql"}
        return
    if name == "primedepth":  # its own JSON layout (kept: scripts read it)
        assert [r["size"] for r in data["results"]] == [32] and "machine" in data
        return
    sizes = parse(name, *RUNS[name]).sizes
    assert data["benchmark"] == name and data["sizes"] == [list(s) for s in sizes]
    got = [r["side"] if name == "marigold" else r["size"] for r in data["results"]]
    assert got == ([h for h, _ in sizes] if name == "marigold" else [list(s) for s in sizes])
    if name in ("marigold", "diffsql"):  # (native's model is always the tiny one)
        assert "TINY" in record
    if name == "seecoder-vpd":
        assert "1 x 32x64" in record and "1 x 64x64" in record and "UNet tiny, SeeCoder tiny" in record


def test_taps_worker_shapes_follow_sizes():
    """taps is too slow to run here even tiny (4 subprocesses); its worker is checked in-process."""
    from diffdepth.bench.taps import worker

    r = worker(32, 48, "check", 1, "cpu", "fp32", "sd21", tiny=True, threads=1)
    assert r["max_abs_diff"] < 1e-5 and r["maps"] > 0
