"""The flicker metric (TAE, evaluation/temporal.py) and the reprojection it rests on (geometry.py)."""
import json

import numpy as np
import pytest

from diffdepth import cli
from diffdepth.data.benchmarks import open_benchmark
from diffdepth.evaluation.protocols import get_protocol
from diffdepth.evaluation.runner import evaluate, summarize
from diffdepth.evaluation.temporal import pair_tae
from diffdepth.geometry import intrinsics_from_focal, relative_pose, reproject_depth


def test_reproject_a_plane_moving_towards_it():
    K = intrinsics_from_focal(40, 30, 50.0)
    depth = np.full((30, 40), 5.0)
    forward = np.eye(4)
    forward[2, 3] = 1.0  # camera b is 1 m further along +z: a->b subtracts 1 from z
    a_to_b = relative_pose(np.eye(4), forward)
    moved = reproject_depth(depth, K, a_to_b)
    hit = moved > 0
    # 1.25x magnified about the principal point (20, 15): pixel (28, 15) lands on (30, 15), none on (27, 15); forward
    # splatting leaves holes (~1 - 0.8^2 of the pixels), as in Video Depth Anything's TAE
    assert hit[15, 30] and hit[15, 20] and not hit[15, 27]
    assert 0.55 < hit[5:25, 5:35].mean() < 0.75
    np.testing.assert_allclose(moved[hit], 4.0)
    np.testing.assert_allclose(reproject_depth(depth, K, np.eye(4)), depth)  # identity: unchanged
    # a sideways move: the plane shifts by f * t / z = 50 * 0.5 / 5 = 5 px to the left
    side = np.eye(4)
    side[0, 3] = 0.5
    flat = reproject_depth(depth, K, relative_pose(np.eye(4), side))
    assert (flat[:, 35:] == 0).all() and (flat[:, :35] == 5.0).all()


def test_pair_tae_is_zero_for_consistent_depth_and_grows_with_a_scale_jump():
    K = intrinsics_from_focal(40, 30, 50.0)
    yy, xx = np.mgrid[0:30, 0:40]
    depth = 4.0 + 0.05 * xx + 0.02 * yy
    pose_b = np.eye(4)
    pose_b[0, 3] = 0.2  # camera b to the right of a
    # ground truth of frame b: frame a's points seen from b, rendered exactly
    pts_b = reproject_depth(depth, K, relative_pose(np.eye(4), pose_b))
    region = np.ones((30, 40), bool)
    same = pair_tae(depth, np.where(pts_b > 0, pts_b, 1.0), K, np.eye(4), pose_b, region, pts_b > 0)
    assert same < 0.01
    jumped = pair_tae(depth, np.where(pts_b > 0, 1.1 * pts_b, 1.0), K, np.eye(4), pose_b, region, pts_b > 0)
    assert jumped > 0.08  # a 10% jump in scale between the frames


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    root = tmp_path_factory.mktemp("seq")
    assert cli.main(["synth", str(root), "--kind", "sequence", "--n", "6", "--size", "48x160", "--seed", "1"]) == 0
    return root


def dense(sample):
    """The ground truth with its holes (sky) at the far limit: what a dense prediction gives."""
    d = sample["depth"][0].astype(np.float64)
    return np.where(d > 0, d, 80.0)


def _records(root, predict, kind="metric_depth", alignment=None):
    protocol = get_protocol("kitti_mono2_improved")
    ds = open_benchmark(protocol.name, root, root / "test_files.txt")
    return evaluate(ds, predict, protocol, alignment, kind=kind, progress=False), protocol


def test_tae_perfect_stable_and_jittered(sequence):
    rng = np.random.default_rng(0)
    jitter = {}

    def perfect(sample):
        return dense(sample), "metric_depth"

    def stable(sample):  # off by one scale and shift for the whole clip: affine-invariant, no flicker
        return 0.5 * dense(sample) + 2.0, "affine_invariant_depth"

    def jittered(sample):  # a new scale and shift every frame: what per-frame alignment hides
        s, t = jitter.setdefault(sample["name"], (rng.uniform(0.6, 1.4), rng.uniform(-2, 2)))
        return s * dense(sample) + t, "affine_invariant_depth"

    out = {}
    for name, fn in (("perfect", perfect), ("stable", stable), ("jittered", jittered)):
        records, protocol = _records(sequence, fn, alignment="auto")  # lsq for the affine kinds
        assert [r.status for r in records] == ["ok"] * len(records)
        out[name] = summarize(records, protocol)
    for name in out:  # the protocol's test split lists the last frames of the drive
        assert out[name]["temporal"]["pairs"] == len(records) - 1 >= 1
    # only rounding to whole pixels remains (at 48x160 the road's grazing angle makes that ~3%)
    assert out["perfect"]["temporal"]["tae"] < 0.05
    assert out["stable"]["temporal"]["tae"] == pytest.approx(out["perfect"]["temporal"]["tae"], abs=1e-3)
    # per-frame least squares makes each jittered frame as good as the stable one ...
    assert out["jittered"]["metrics"]["abs_rel"] == pytest.approx(out["stable"]["metrics"]["abs_rel"], abs=1e-3)
    # ... the flicker metric does not
    assert out["jittered"]["temporal"]["tae"] > 3 * out["stable"]["temporal"]["tae"]


def test_eval_cli_reports_tae_beside_the_per_frame_metrics(sequence, tmp_path, capsys):
    preds = tmp_path / "preds"
    ds = open_benchmark("kitti_mono2_improved", sequence, sequence / "test_files.txt")
    for sample in ds:
        path = preds / f"{sample['name']}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, dense(sample).astype(np.float32))
    out = tmp_path / "run"
    rc = cli.main(["eval", "--dataset", "kitti_mono2_improved", "--data-root", str(sequence), "--split-file",
                   str(sequence / "test_files.txt"), "--predictions", str(preds), "--kind", "metric_depth",
                   "--out", str(out), "--no-progress"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["temporal"]["pairs"] == len(ds) - 1 and summary["temporal"]["tae"] < 0.05
    assert "temporal consistency: TAE" in capsys.readouterr().out
    header = (out / "per_sample.csv").read_text().splitlines()[0].split(",")
    assert "tae" in header


def test_sharded_blocks_score_the_tae_of_one_pass(sequence):
    # under a launcher each process scores one block of the samples; a sequence crossing a block boundary
    # is stitched back (score_open_ends) and aligned whole, so every split gives the one-pass TAE
    from diffdepth.evaluation.runner import score_open_ends

    protocol = get_protocol("kitti_mono2_improved")
    ds = open_benchmark(protocol.name, sequence, sequence / "test_files.txt")
    frames = [ds[i] for i in range(3)]
    unposed = {k: v for k, v in frames[0].items() if k != "pose"}
    # a sequence, a sample that ends it, the same sequence's key again (a new run: pairs are consecutive
    # frames), then another sequence straight after
    samples = (frames + [dict(unposed, name="unposed")] + [dict(s, name=s["name"] + "-a") for s in frames]
               + [dict(s, name=s["name"] + "-b", sequence="b") for s in frames])
    rng = np.random.default_rng(3)
    jitter = {s["name"]: (rng.uniform(0.6, 1.4), rng.uniform(-2, 2)) for s in samples}

    def jittered(sample):  # per-frame scale and shift: the whole-sequence alignment decides the TAE
        s, t = jitter[sample["name"]]
        return s * dense(sample) + t

    def run(block, open_ends=None):
        return evaluate(block, jittered, protocol, "auto", kind="affine_invariant_depth", progress=False,
                        open_ends=open_ends)

    whole = [r.metrics.get("tae") for r in run(samples)]
    assert sum(t is not None for t in whole) == 3 * (len(frames) - 1)
    n = len(samples)
    for i in range(1, n):
        for j in range(i, n + 1):  # j == n: an empty last block, as a launcher with more processes than samples
            parts = []
            for block in (samples[:i], samples[i:j], samples[j:]):
                ends = []
                parts.append((run(block, ends), ends))
            assert [r.metrics.get("tae") for r in score_open_ends(parts, protocol)] == whole, (i, j)
