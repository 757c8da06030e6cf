"""A short self-supervised DiffSQL run (the debug recipe, trainer included) on a synthetic driving
sequence makes depth on held-out frames better than the untrained network's (median-scaled AbsRel)."""
from pathlib import Path

import pytest
import torch

from diffdepth.cli import main

REPO = Path(__file__).resolve().parents[1]
STEPS = 60


def _abs_rel_on(model, dataset):
    from diffdepth.methods.diffsql.task import median_scaled_abs_rel

    frames = torch.stack([torch.as_tensor(dataset[i]["frames"][0]) for i in range(len(dataset))])
    depth = torch.stack([torch.as_tensor(dataset[i]["depth"]) for i in range(len(dataset))])
    valid = torch.stack([torch.as_tensor(dataset[i]["valid"]) for i in range(len(dataset))])
    pred = model.predict(frames).depth
    return median_scaled_abs_rel(pred, depth, valid)


@pytest.mark.slow
def test_debug_training_lowers_median_scaled_abs_rel_on_held_out_frames(tmp_path):
    import yaml

    from diffdepth.data.sequences import KittiRawSequences
    from diffdepth.methods.diffsql import DiffSQL

    torch.set_num_threads(min(2, torch.get_num_threads()))
    run = tmp_path / "run"
    assert main(["train", str(REPO / "configs/diffsql/debug.yaml"), f"train.max_steps={STEPS}",
                 f"checkpoint.every={STEPS}", "--output-dir", str(run)]) == 0
    cfg = yaml.safe_load((REPO / "configs/diffsql/debug.yaml").read_text())
    data = next((run / "data").glob("synth-sequence-*"))
    held_out = KittiRawSequences(data, split_file=data / "val_files.txt", size=(32, 64))  # frames never trained on
    assert len(held_out) >= 3

    untrained = DiffSQL.make_tiny(seed=0, **cfg["model"]["args"]).eval()  # the run's initial weights
    trained = DiffSQL.from_pretrained(run / f"checkpoint-{STEPS}")
    before = _abs_rel_on(untrained, held_out)
    after = _abs_rel_on(trained, held_out)
    print(f"median-scaled AbsRel on {len(held_out)} held-out frames: untrained {before:.4f}, "
          f"after {STEPS} self-supervised steps {after:.4f}")
    assert after < 0.85 * before, (before, after)
