"""The ``hf`` method: tiny random transformers depth models saved in the real format, checked against
``transformers.pipeline("depth-estimation")`` on the same files."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import diffdepth
from diffdepth.cli import main
from diffdepth.errors import CheckpointError
from diffdepth.methods.hf import make_tiny_hf
from diffdepth.registry import detect_method
from diffdepth.types import AFFINE_DISPARITY, METRIC_DEPTH


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    dirs = {}
    for family, seed in (("depth_anything", 0), ("dpt", 1)):
        make_tiny_hf(family, seed=seed).save_pretrained(root / family)
        dirs[family] = root / family
    return dirs


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    # two sizes and aspect ratios: the processors resize each to their own multiple (14 / 32)
    for name, (h, w) in {"a": (45, 61), "sub/b": (50, 38)}.items():
        path = root / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return root


def _reference(folder, model_dir):
    """transformers' own depth-estimation pipeline with the same (slow, PIL) processor."""
    from transformers import pipeline

    from diffdepth.methods.hf.model import _load_processor

    pipe = pipeline("depth-estimation", model=str(model_dir), image_processor=_load_processor(model_dir),
                    device="cpu")
    return {str(p.relative_to(folder).with_suffix("")): pipe(str(p))["predicted_depth"].numpy()
            for p in sorted(folder.rglob("*.png"))}


@pytest.mark.parametrize("family", ["depth_anything", "dpt"])
def test_predict_cli_equals_transformers_pipeline(family, hf_dirs, photos, tmp_path):
    out = tmp_path / "out"
    rc = main(["predict", str(photos), "--method", "hf", "--checkpoint", str(hf_dirs[family]),
               "--out", str(out), "--save", "npy,png16,color", "--device", "cpu"])
    assert rc == 0
    ref = _reference(photos, hf_dirs[family])
    assert set(ref) == {"a", "sub/b"}
    for name, expected in ref.items():
        got = np.load(out / f"{name}.npy")
        assert got.shape == expected.shape
        assert np.abs(expected).max() > 0.1  # the random model predicts something non-trivial
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
        assert (out / f"{name}_depth16.png").exists() and (out / f"{name}_color.png").exists()


def test_python_api_and_detection_of_a_plain_transformers_folder(hf_dirs, photos, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    for f in hf_dirs["depth_anything"].iterdir():
        if f.name != "diffdepth.json":  # exactly what transformers writes, nothing of ours
            (plain / f.name).write_bytes(f.read_bytes())
    assert detect_method(plain) == "hf"
    model = diffdepth.load_model(checkpoint=plain, device="cpu")
    assert model.method == "hf" and model.output_kind == AFFINE_DISPARITY
    pred = diffdepth.DepthPipeline(model)(str(photos / "a.png"))
    assert pred.kind == AFFINE_DISPARITY
    expected = _reference(photos, plain)["a"]
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(pred.depth, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_output_kind_from_config_and_overrides(tmp_path, photos):
    metric = tmp_path / "metric"
    make_tiny_hf("depth_anything", depth_estimation_type="metric", max_depth=20).save_pretrained(metric)
    m = diffdepth.load_model("hf", checkpoint=metric, device="cpu")
    assert m.output_kind == METRIC_DEPTH
    assert make_tiny_hf("dpt").output_kind == AFFINE_DISPARITY
    # override when loading (and it survives save/load through diffdepth.json) ...
    forced = diffdepth.load_model("hf", checkpoint=metric, device="cpu", output_kind=AFFINE_DISPARITY)
    assert forced.output_kind == AFFINE_DISPARITY
    forced.save_pretrained(tmp_path / "forced")
    assert json.loads((tmp_path / "forced" / "diffdepth.json").read_text())["config"]["output_kind"] == AFFINE_DISPARITY
    assert diffdepth.load_model(checkpoint=tmp_path / "forced", device="cpu").output_kind == AFFINE_DISPARITY
    # ... and per call (CLI: --opt output_kind=...)
    out = tmp_path / "out"
    assert main(["predict", str(photos / "a.png"), "--method", "hf", "--checkpoint", str(metric), "--out", str(out),
                 "--save", "npy", "--opt", "output_kind=affine_invariant_disparity"]) == 0
    pred = diffdepth.DepthPipeline(m, output_kind=AFFINE_DISPARITY)(str(photos / "a.png"))
    assert pred.kind == AFFINE_DISPARITY
    np.testing.assert_allclose(np.load(out / "a.npy"), pred.depth, rtol=1e-6)


def test_unknown_family_needs_an_explicit_kind():
    from types import SimpleNamespace

    from diffdepth.methods.hf import infer_output_kind

    with pytest.raises(CheckpointError, match="output_kind"):
        infer_output_kind(SimpleNamespace(model_type="new_depth_model"))
    assert infer_output_kind(SimpleNamespace(model_type="zoedepth")) == METRIC_DEPTH


def test_a_folder_that_is_not_a_transformers_model_is_a_one_line_error(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        diffdepth.load_model("hf", checkpoint=tmp_path / "x", device="cpu")
