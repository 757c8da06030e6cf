"""``registry.detect_method`` asks the method classes (``can_load``) which one a folder belongs to."""
import json
import shutil
from pathlib import Path

import pytest

from diffdepth.errors import CheckpointError
from diffdepth.registry import detect_method, get_method, list_methods, resolve_method

FIXTURES = Path(__file__).parent / "fixtures"
LEGACY = FIXTURES / "legacy_ckpt"
SAVED = ("primedepth", "marigold", "metricgold", "seecoder-vpd", "diffsql")
FAMILY = {"marigold": {"marigold", "metricgold"}, "metricgold": {"marigold", "metricgold"}}


@pytest.mark.parametrize("method", SAVED)
def test_each_saved_folder_is_detected_and_claimed_by_its_class_only(method):
    assert detect_method(LEGACY / method) == method
    claim = {info.id for info in list_methods() if info.load_class().can_load(LEGACY / method)}
    assert claim == FAMILY.get(method, {method})  # marigold <-> metricgold: one layout, two normalisers


def test_foreign_layouts_are_detected_without_a_marker(tmp_path):
    from diffdepth.methods.hf import make_tiny_hf

    marigold = tmp_path / "marigold-hub"  # diffusers' Marigold layout: model_index.json, no diffdepth.json
    shutil.copytree(LEGACY / "marigold", marigold)
    (marigold / "diffdepth.json").unlink()
    assert detect_method(marigold) == "marigold"
    hf = make_tiny_hf().save_pretrained(tmp_path / "hf")
    assert detect_method(hf) == "hf"
    (hf / "diffdepth.json").unlink()  # a plain transformers depth model
    assert detect_method(hf) == "hf"
    ckpt = FIXTURES / "primedepth_official" / "PrimeDepth-tiny.ckpt"  # an official PrimeDepth file ...
    assert detect_method(ckpt) == "primedepth"
    (tmp_path / "official").mkdir()  # ... or a folder holding one
    shutil.copy(ckpt, tmp_path / "official")
    assert detect_method(tmp_path / "official") == "primedepth"


def test_a_marker_naming_an_outside_method_gives_its_target(tmp_path):
    (tmp_path / "diffdepth.json").write_text(json.dumps({"method": "mine", "target": "pkg.mod:Model"}))
    assert detect_method(tmp_path) == "pkg.mod:Model"


def _foreign(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    sd = tmp_path / "sd"  # a Stable Diffusion folder is a backbone, not a depth model
    shutil.copytree(LEGACY / "primedepth", sd)
    for name in ("diffdepth.json", "primedepth.safetensors"):
        (sd / name).unlink()
    bert = tmp_path / "bert"  # a transformers model that does not estimate depth
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    weights = tmp_path / "weights.safetensors"
    shutil.copy(LEGACY / "diffsql" / "model.safetensors", weights)
    return [empty, sd, bert, weights]


def test_foreign_folders_are_rejected_with_a_clear_error(tmp_path):
    for path in _foreign(tmp_path):
        assert detect_method(path) is None, path
        assert not any(info.load_class().can_load(path) for info in list_methods())
        with pytest.raises(CheckpointError, match="cannot tell which method .* no method recognises it.*--method"):
            resolve_method(None, str(path))


def test_a_given_method_must_be_able_to_load_the_folder(tmp_path):
    with pytest.raises(CheckpointError, match=r"is a 'seecoder-vpd' checkpoint, not 'primedepth'"):
        resolve_method("primedepth", str(LEGACY / "seecoder-vpd"))
    assert resolve_method("metricgold", str(LEGACY / "marigold"))[0] == "metricgold"  # same layout
    assert get_method("diffsql").load_class().can_load(LEGACY / "diffsql")


def test_a_corrupt_marker_is_an_error_not_a_guess(tmp_path):
    (tmp_path / "diffdepth.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        detect_method(tmp_path)
