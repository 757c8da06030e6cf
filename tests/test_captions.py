"""Captioners: a tiny random BLIP-2 in the real transformers format, captions as PrimeDepth prompts
(predict --caption), and captions cached in pseudo-label folders."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffdepth.backbone.captions import BLIP2_DEFAULT, Blip2Captioner, load_captioner, make_tiny_blip2

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_blip2(tmp_path_factory):
    return make_tiny_blip2(tmp_path_factory.mktemp("blip2") / "blip2")


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "photo.png"
    rgb = (np.random.default_rng(3).random((40, 52, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def test_blip2_captioner_on_tiny_random_model(tiny_blip2, photo):
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    assert BLIP2_DEFAULT == "Salesforce/blip2-opt-2.7b"  # the official PrimeDepth captioner
    cap = load_captioner(str(tiny_blip2), device="cpu")
    assert isinstance(cap, Blip2Captioner) and cap.dtype == torch.float32
    im = Image.open(photo).convert("RGB")
    arr = np.asarray(im, np.float32) / 255
    out = cap([im, arr, torch.from_numpy(arr).permute(2, 0, 1)])
    assert len(out) == 3 and out[0] and out[0] == out[1] == out[2]  # PIL, HWC float and CHW tensor agree
    # the official recipe, spelled out: processor(images) -> generate() -> batch_decode(skip special) -> strip
    proc = Blip2Processor.from_pretrained(tiny_blip2)
    model = Blip2ForConditionalGeneration.from_pretrained(tiny_blip2).eval()
    ids = model.generate(**proc(images=im, return_tensors="pt"))
    assert out[0] == proc.batch_decode(ids, skip_special_tokens=True)[0].strip()
    assert cap([im, im.transpose(Image.FLIP_LEFT_RIGHT)])[0] == out[0]  # batching changes nothing


def _predict(tmp_path, photo, ckpt, out, *extra):
    from diffdepth.cli import main

    rc = main(["predict", str(photo), "--method", "primedepth", "--checkpoint", str(ckpt), "--out",
               str(tmp_path / out), "--save", "npy", "--device", "cpu", *extra])
    return rc, np.load(tmp_path / out / "photo.npy") if rc == 0 else None


def test_predict_caption_uses_the_caption_as_prompt(tmp_path, tiny_blip2, photo, capsys):
    from diffdepth.methods.primedepth import PrimeDepth

    PrimeDepth.make_tiny(seed=0).save_pretrained(tmp_path / "pd")
    caption = Blip2Captioner(tiny_blip2, device="cpu")([Image.open(photo)])[0]
    rc, captioned = _predict(tmp_path, photo, tmp_path / "pd", "cap", "--caption", str(tiny_blip2))
    assert rc == 0
    rc, prompted = _predict(tmp_path, photo, tmp_path / "pd", "prompt", "--prompt", caption)
    assert rc == 0
    rc, empty = _predict(tmp_path, photo, tmp_path / "pd", "empty")
    assert rc == 0
    np.testing.assert_array_equal(captioned, prompted)
    assert not np.array_equal(captioned, empty)  # the prompt matters
    capsys.readouterr()
    rc, _ = _predict(tmp_path, photo, tmp_path / "pd", "both", "--caption", str(tiny_blip2), "--prompt", "x")
    assert rc == 2 and "--caption and --prompt" in capsys.readouterr().err


def test_captioner_fills_the_pseudo_label_cache_once(tmp_path, tiny_blip2):
    from diffdepth.data.pseudo import PseudoLabelDataset, prepare_pseudo_labels
    from diffdepth.data.synth import write_dataset

    root = tmp_path / "pl"
    write_dataset(root, "indoor", 2, (32, 32), seed=0, layout="pseudo")
    shutil.rmtree(root / "captions")
    prepare_pseudo_labels(root, captioner={"blip2": str(tiny_blip2), "device": "cpu"})
    expect = Blip2Captioner(tiny_blip2, device="cpu")([Image.open(root / "images" / "indoor_00001.png")])[0]
    assert (root / "captions" / "indoor_00001.txt").read_text() == expect + "\n"
    assert PseudoLabelDataset(root)[1]["caption"] == expect
    # cached: a second pass loads no captioner at all (a broken spec would fail if it did)
    prepare_pseudo_labels(root, captioner={"blip2": str(tmp_path / "missing")})


def test_any_reader_gets_cached_captions_from_the_training_factory(tmp_path):
    from diffdepth.data.synth import write_dataset
    from diffdepth.training.data import build_dataset

    root = tmp_path / "f"
    write_dataset(root, "indoor", 3, (32, 32), seed=0, layout="folder")
    seen = []

    def captioner(images):
        seen.append(len(images))
        return [f"mean {float(np.mean(im)):.4f}" for im in images]

    entry = {"type": "folder", "root": str(root), "captioner": captioner}
    ds = build_dataset(entry)
    assert seen == [1, 1, 1]
    for i in range(3):
        s = ds[i]
        assert s["caption"] == f"mean {float(np.mean(s['image'])):.4f}"
        assert (root / "captions" / f"{s['name']}.txt").read_text().strip() == s["caption"]
    ds = build_dataset(entry)  # cached: the captioner is not called again
    assert seen == [1, 1, 1] and ds[2]["caption"].startswith("mean ")
