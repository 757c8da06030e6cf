"""PrimeDepth pre-training on pseudo-label folders: the reader, label/caption caching, the
segmentation regulariser switch, and the debug recipe as 2 CPU processes with and without labels."""
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffdepth.data.pseudo import PseudoLabelDataset, prepare_pseudo_labels
from diffdepth.data.synth import write_dataset
from diffdepth.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ROOT / "configs" / "primedepth" / "pretrain.yaml"
RECIPE = ROOT / "configs" / "primedepth" / "pretrain_debug.yaml"


@pytest.fixture(scope="module")
def synth_pl(tmp_path_factory):
    out = tmp_path_factory.mktemp("pl") / "pl"
    write_dataset(out, "indoor", 4, (32, 32), seed=0, layout="pseudo")
    return out


def test_reader_reads_synth_pseudo_folder(synth_pl):
    from diffdepth.data.synth import render_sample

    ds = PseudoLabelDataset(synth_pl)
    assert len(ds) == 4 and ds.depth_kind == "depth"  # from labels.json
    s = ds[1]
    r = render_sample("indoor", 1, 0, (32, 32))
    np.testing.assert_array_equal(s["depth"][0], np.where(r["valid"], r["depth"], 0))
    np.testing.assert_array_equal(s["valid"][0], r["valid"])
    ids = r["ids"]
    np.testing.assert_array_equal(s["segmentation"][0], np.where((ids >= 0) & (ids < 150), ids, 255))
    assert s["label_kind"] == "depth" and s["caption"].startswith("a rendered room")
    assert "segmentation" not in PseudoLabelDataset(synth_pl, segmentation=None)[0]


def test_reader_layout_variants_and_errors(tmp_path, synth_pl):
    root = tmp_path / "x"
    shutil.copytree(synth_pl / "images", root / "images")
    (root / "depth").mkdir()
    # uint16 PNG disparity at half resolution, any scale; captions from a .jsonl file
    disp = (np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) + 1) * 100
    for name in ("indoor_00000", "indoor_00001", "indoor_00002", "indoor_00003"):
        Image.fromarray(disp).save(root / "depth" / f"{name}.png")
    (root / "captions.jsonl").write_text(json.dumps({"name": "indoor_00002", "caption": "a chair"}) + "\n")
    ds = PseudoLabelDataset(root)
    assert ds.depth_kind == "disparity"  # no labels.json
    s = ds[2]
    assert s["depth"].shape == (1, 32, 32) and s["valid"].all() and s["caption"] == "a chair"
    assert ds[0]["caption"] == "" and "segmentation" not in s
    assert s["depth"].min() >= 100 and s["depth"].max() <= 25600
    # a segmentation class outside 0..149 is named with its file
    (root / "segmentation").mkdir()
    Image.fromarray(np.full((32, 32), 150, np.uint8), "L").save(root / "segmentation" / "indoor_00000.png")
    with pytest.raises(InputError, match=r"indoor_00000.png has class 150"):
        PseudoLabelDataset(root)[0]
    assert PseudoLabelDataset(root)[1]["segmentation"].min() == 255  # no file: all ignored
    # a label at a quarter of the size: nearest on pixel centres (output i reads input (i + 0.5) / 4)
    small = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(small, "L").save(root / "segmentation" / "indoor_00002.png")
    seg = PseudoLabelDataset(root)[2]["segmentation"][0]
    np.testing.assert_array_equal(seg, np.repeat(np.repeat(small, 4, 0), 4, 1))
    # an image without a teacher label stops the reader with its name
    (root / "depth" / "indoor_00003.png").unlink()
    with pytest.raises(InputError, match="indoor_00003"):
        PseudoLabelDataset(root)


def test_teacher_labels_are_made_once_and_cached(tmp_path, synth_pl):
    root = tmp_path / "y"
    shutil.copytree(synth_pl / "images", root / "images")
    calls = []

    def teacher(images):  # [B,3,H,W] -> [B,1,H,W]
        calls.append(images.shape)
        return images.mean(1, keepdim=True) + 1.0

    def captioner(images):
        return [f"an image of size {im.size[0]}" for im in images]

    prepare_pseudo_labels(root, teacher={"callable": teacher, "kind": "disparity"}, captioner=captioner)
    assert len(calls) == 4 and all(c == (1, 3, 32, 32) for c in calls)
    assert json.loads((root / "labels.json").read_text())["depth_kind"] == "disparity"
    img = np.asarray(Image.open(root / "images" / "indoor_00001.png"), np.float32) / 255
    np.testing.assert_allclose(np.load(root / "depth" / "indoor_00001.npy"), img.mean(-1) + 1, atol=1e-6)
    assert (root / "captions" / "indoor_00001.txt").read_text() == "an image of size 32\n"
    # cached: a second call runs nothing, the reader sees everything
    prepare_pseudo_labels(root, teacher={"callable": teacher}, captioner=captioner)
    assert len(calls) == 4
    assert PseudoLabelDataset(root)[3]["caption"] == "an image of size 32"


def test_diffdepth_model_as_teacher(tmp_path, synth_pl):
    from diffdepth.methods.primedepth import PrimeDepth
    from diffdepth.pipeline import DepthPipeline

    model = PrimeDepth.make_tiny(seed=0)
    model.save_pretrained(tmp_path / "teacher")
    root = tmp_path / "z"
    for name in ("indoor_00000.png", "indoor_00001.png"):
        (root / "images").mkdir(parents=True, exist_ok=True)
        shutil.copy(synth_pl / "images" / name, root / "images" / name)
    prepare_pseudo_labels(root, teacher={"diffdepth": str(tmp_path / "teacher"), "device": "cpu"})
    assert json.loads((root / "labels.json").read_text())["depth_kind"] == "disparity"
    expect = DepthPipeline(model)(str(root / "images" / "indoor_00001.png"))
    np.testing.assert_allclose(np.load(root / "depth" / "indoor_00001.npy"), expect.depth, rtol=1e-5, atol=1e-6)


def _task_and_data(synth_pl, segmentation):
    from diffdepth.methods.primedepth import PrimeDepth

    model = PrimeDepth.make_tiny(seed=0, seg_classes=150).train()
    task = model.make_training_task(crop=[32, 32], flip_prob=0.0)
    ds = PseudoLabelDataset(synth_pl, segmentation="segmentation" if segmentation else None)
    return model, task, ds


def _batch(task, ds, idx):
    samples = [task.transform(ds[i], np.random.default_rng(i)) for i in idx]
    return torch.utils.data.default_collate(samples)


def test_segmentation_head_frozen_without_labels(synth_pl):
    model, task, ds = _task_and_data(synth_pl, segmentation=False)
    lines = task.bind_data([ds])
    assert "off" in lines[0] and not any(p.requires_grad for p in model.seg_head.parameters())
    batch = _batch(task, ds, [0, 1])
    assert "segmentation" not in batch and batch["caption"][0].startswith("a rendered")
    out = task(batch)
    assert "segmentation" not in out["output"] and set(out["logs"]) == {"ssi"}
    out["loss"].backward()
    assert all(p.grad is None for p in model.seg_head.parameters())
    assert all(p.grad is not None for p in model.refiner.parameters() if p.requires_grad)


def test_segmentation_regulariser_with_labels(synth_pl):
    from diffdepth.losses.segmentation import dice_loss, focal_loss

    model, task, ds = _task_and_data(synth_pl, segmentation=True)
    assert "on" in task.bind_data([ds])[0]
    batch = _batch(task, ds, [0, 1])
    out = task(batch)
    logits = out["output"]["segmentation"]
    dice, focal = dice_loss(logits, batch["segmentation"]), focal_loss(logits, batch["segmentation"])
    assert out["logs"]["dice"] == pytest.approx(float(dice), rel=1e-5)
    assert out["logs"]["focal"] == pytest.approx(float(focal), rel=1e-5)
    assert out["logs"]["lambda"] == pytest.approx(float((dice + focal) / out["logs"]["ssi"]), rel=1e-5)
    assert out["loss"].item() == pytest.approx(2 * float(dice + focal), rel=1e-5)  # Eq. 5: λ·L_ssi = L_seg
    # a batch with no labelled pixel still runs the head (same DDP graph) with zero gradient
    batch["segmentation"].fill_(255)
    model.zero_grad()
    out = task(batch)
    assert "segmentation" in out["output"] and "dice" not in out["logs"]
    out["loss"].backward()
    grads = [p.grad for p in model.seg_head.parameters()]
    assert all(g is not None and float(g.abs().max()) == 0.0 for g in grads)


@pytest.mark.parametrize("with_labels", [True, False])
def test_two_process_pretrain_debug_recipe(tmp_path, synth_pl, with_labels):
    from safetensors.torch import load_file

    from diffdepth.methods.primedepth import PrimeDepth
    from diffdepth.training import checkpoint as ckpt
    from test_distributed import free_port, run_group

    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    assert accelerate is not None, "the accelerate CLI comes with the accelerate dependency"
    run = tmp_path / "run"
    if with_labels:  # the paper recipe itself, --debug, on a synthetic pseudo-label folder
        recipe = [str(PRETRAIN), "--debug", "model.tiny=true", "model.args.refiner_out_channels=16",
                  "train.mixed_precision=no", "log.images_every=0", "log.tensorboard=false",
                  "data.train.0.root=%s" % synth_pl]
    else:  # the debug recipe renders its own folder (under 2 processes); its labels left unused
        recipe = [str(RECIPE), "data.train.0.reader={segmentation: null}", "data.train.0.n=4",
                  "data.train.0.size=[32,32]"]
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "diffdepth.cli", "train", *recipe, "train.max_steps=2", "task.crop=[32,32]", "--output-dir", str(run)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", ""))
    code, stderr = run_group(cmd, env, timeout=400, cwd=tmp_path)
    assert code == 0, stderr[-3000:]
    assert "2 process(es)" in stderr
    assert ("segmentation regulariser: on" if with_labels else "segmentation regulariser: off") in stderr
    state = ckpt.read_state(run / "checkpoint-2")
    assert state["world_size"] == 2 and state["replicas_identical"] == 2
    trained = load_file(str(run / "checkpoint-2" / "model.safetensors"))
    init = PrimeDepth.make_tiny(seed=0, refiner_out_channels=16, seg_classes=150).state_dict()
    seg_keys = [k for k in trained if k.startswith("seg_head.")]
    changed = [k for k in seg_keys if not torch.equal(trained[k], init[k])]
    assert seg_keys and (changed if with_labels else not changed)
    assert any(not torch.equal(trained[k], init[k]) for k in trained if k.startswith("refiner."))


def test_transformers_depth_model_as_teacher(tmp_path, synth_pl):
    """A tiny random Depth Anything (Dinov2 backbone) saved in the transformers format."""
    from transformers import (AutoImageProcessor, AutoModelForDepthEstimation, DepthAnythingConfig,
                              DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor)

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            image_size=28, patch_size=14, out_features=["stage1", "stage2"],
                            reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=backbone.to_dict(), reassemble_hidden_size=32, neck_hidden_sizes=[16, 32],
                              reassemble_factors=[2, 1], fusion_hidden_size=16, head_hidden_size=8, patch_size=14)
    torch.manual_seed(0)
    DepthAnythingForDepthEstimation(cfg).save_pretrained(tmp_path / "da")
    DPTImageProcessor(size={"height": 28, "width": 28}, keep_aspect_ratio=False, ensure_multiple_of=14,
                      do_pad=False).save_pretrained(tmp_path / "da")
    root = tmp_path / "t"
    shutil.copytree(synth_pl / "images", root / "images")
    prepare_pseudo_labels(root, teacher={"transformers": str(tmp_path / "da"), "device": "cpu"})
    assert json.loads((root / "labels.json").read_text())["depth_kind"] == "disparity"
    proc = AutoImageProcessor.from_pretrained(tmp_path / "da")
    net = AutoModelForDepthEstimation.from_pretrained(tmp_path / "da").eval()
    rgb = np.asarray(Image.open(root / "images" / "indoor_00003.png").convert("RGB"))
    with torch.no_grad():
        pred = net(**proc(images=rgb, return_tensors="pt")).predicted_depth  # [1,28,28]
    expect = torch.nn.functional.interpolate(pred[:, None], size=(32, 32), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(np.load(root / "depth" / "indoor_00003.npy"), expect[0, 0].numpy(), rtol=1e-5, atol=1e-6)
    assert PseudoLabelDataset(root)[3]["depth"].shape == (1, 32, 32)


def test_task_switches_and_mixed_readers(synth_pl, tmp_path):
    """task.segmentation=false freezes the head even with labels; readers with and without
    captions/labels mix in one batch (missing caption = empty prompt, missing labels = ignored)."""
    from diffdepth.data.folder import FolderDepthDataset
    from diffdepth.methods.primedepth import PrimeDepth

    model = PrimeDepth.make_tiny(seed=0, seg_classes=150)
    task = model.make_training_task(crop=[32, 32], flip_prob=1.0, segmentation=False)
    ds = PseudoLabelDataset(synth_pl)
    assert "task.segmentation is false" in task.bind_data([ds])[0]
    assert not any(p.requires_grad for p in model.seg_head.parameters())
    assert "segmentation" not in _batch(task, ds, [0])
    write_dataset(tmp_path / "f", "indoor", 2, (32, 32), seed=5, layout="folder")
    plain = FolderDepthDataset(tmp_path / "f")
    task = PrimeDepth.make_tiny(seed=0, seg_classes=150).make_training_task(crop=[32, 32], flip_prob=1.0)
    assert "on" in task.bind_data([ds, plain])[0]
    samples = [task.transform(ds[0], np.random.default_rng(0)), task.transform(plain[1], np.random.default_rng(1))]
    batch = torch.utils.data.default_collate(samples)
    assert batch["caption"][0].startswith("a rendered") and batch["caption"][1] == ""
    assert bool((batch["segmentation"][1] == 255).all()) and bool((batch["segmentation"][0] != 255).any())
    # flip_prob 1: labels are mirrored with the image; depth labels became disparity (1/m)
    np.testing.assert_array_equal(batch["segmentation"][0, 0].numpy(), ds[0]["segmentation"][0][:, ::-1])
    d = ds[0]["depth"][0][:, ::-1]
    np.testing.assert_allclose(batch["depth"][0, 0].numpy(), np.where(d > 0, 1 / np.maximum(d, 1e-8), 0), rtol=1e-6)
    assert task(batch)["logs"]["dice"] > 0
