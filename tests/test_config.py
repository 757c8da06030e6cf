"""Training configs: inheritance, overrides, schema errors naming key and file, debug caps."""
from pathlib import Path

import pytest
import yaml

from diffdepth.errors import ConfigError
from diffdepth.registry import get_method
from diffdepth.training.config import DEBUG_CAPS, defaults, diff_configs, load_config

ROOT = Path(__file__).resolve().parents[1]

MINIMAL = """
model: {method: "toy_model:ToyDepth", tiny: true}
data:
  train: [{type: "toy_model:ToyDepthSet", n: 4}]
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_yaml_lists_exactly_the_schema_defaults():
    assert yaml.safe_load((ROOT / "configs" / "base.yaml").read_text()) == defaults()


def test_toy_debug_recipe_resolves():
    cfg = load_config(ROOT / "configs" / "toy" / "debug.yaml")
    assert cfg["model"]["method"] == "toy_model:ToyDepth"
    assert cfg["optim"]["lr"] == pytest.approx(3e-2)
    assert cfg["train"]["grad_clip"] == 1.0  # from base.yaml


def test_inheritance_deep_merge_lists_replace_and_relative_paths(tmp_path):
    write(tmp_path / "common" / "a.yaml", MINIMAL + "optim: {lr: 1.0e-3, betas: [0.5, 0.6]}\ntask: {x: 1, y: 2}\n")
    write(tmp_path / "common" / "b.yaml", "optim: {weight_decay: 0.1}\ntask: {y: 3}\nseed: 5\n")
    child = write(tmp_path / "recipes" / "child.yaml",
                  "base: [../common/a.yaml, ../common/b.yaml]\noptim: {betas: [0.9, 0.95]}\nseed: 7\n")
    cfg = load_config(child)
    assert cfg["optim"]["lr"] == pytest.approx(1e-3)          # from a
    assert cfg["optim"]["weight_decay"] == pytest.approx(0.1)  # from b
    assert cfg["optim"]["betas"] == [0.9, 0.95]               # child replaces the list
    assert cfg["task"] == {"x": 1, "y": 3}                     # free-form dicts merge too
    assert cfg["seed"] == 7                                    # file beats its bases
    assert cfg["optim"]["eps"] == pytest.approx(1e-8)          # untouched default


def test_overrides_are_dotted_yaml_typed_and_index_lists(tmp_path):
    f = write(tmp_path / "r.yaml", MINIMAL)
    cfg = load_config(f, ["train.max_steps=7", "optim.lr=1e-4", "optim.betas=[0.8, 0.9]",
                          "model.args.channels=16", "data.train.0.weight=0.25", "train.grad_clip=null",
                          "ema.enabled=true", "optim.lr_multipliers={'body.': 0.1}"])
    assert cfg["train"]["max_steps"] == 7 and isinstance(cfg["train"]["max_steps"], int)
    assert cfg["optim"]["lr"] == pytest.approx(1e-4) and isinstance(cfg["optim"]["lr"], float)  # YAML '1e-4' is a str
    assert cfg["optim"]["betas"] == [0.8, 0.9]
    assert cfg["model"]["args"] == {"channels": 16}
    assert cfg["data"]["train"][0]["weight"] == 0.25 and cfg["data"]["train"][0]["n"] == 4
    assert cfg["train"]["grad_clip"] is None
    assert cfg["ema"]["enabled"] is True
    assert cfg["optim"]["lr_multipliers"] == {"body.": 0.1}


def test_unknown_key_names_key_and_file(tmp_path):
    f = write(tmp_path / "bad.yaml", MINIMAL + "train: {max_step: 10}\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert "train.max_step" in str(e.value) and str(f) in str(e.value)


def test_unknown_key_in_a_base_names_the_base_file(tmp_path):
    base = write(tmp_path / "base.yaml", "optim: {learning_rate: 1}\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\n" + MINIMAL)
    with pytest.raises(ConfigError) as e:
        load_config(child)
    assert "optim.learning_rate" in str(e.value) and str(base) in str(e.value)


def test_wrong_type_names_key_file_and_expected_type(tmp_path):
    f = write(tmp_path / "bad.yaml", MINIMAL + "train: {batch_size: two}\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert "train.batch_size" in msg and str(f) in msg and "integer" in msg and "'two'" in msg
    f2 = write(tmp_path / "bad2.yaml", MINIMAL + "ema: {enabled: 1}\n")
    with pytest.raises(ConfigError, match="ema.enabled"):
        load_config(f2)
    f3 = write(tmp_path / "bad3.yaml", MINIMAL + "train: {mixed_precision: fp8}\n")
    with pytest.raises(ConfigError, match="mixed_precision.*fp16"):
        load_config(f3)
    # YAML reads an unquoted `no` as false; for mixed_precision it means "no"
    f4 = write(tmp_path / "ok4.yaml", MINIMAL + "train: {mixed_precision: no}\n")
    assert load_config(f4)["train"]["mixed_precision"] == "no"
    with pytest.raises(ConfigError, match="train.grad_clip"):
        load_config(f4, ["train.grad_clip=no"])


def test_missing_base_file_names_it_and_the_referencing_file(tmp_path):
    child = write(tmp_path / "child.yaml", "base: nowhere.yaml\n" + MINIMAL)
    with pytest.raises(ConfigError) as e:
        load_config(child)
    assert "nowhere.yaml" in str(e.value) and str(child) in str(e.value) and "not found" in str(e.value)


def test_missing_config_and_bad_yaml_and_cycle(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = write(tmp_path / "bad.yaml", "model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*invalid YAML"):
        load_config(bad)
    write(tmp_path / "x.yaml", "base: y.yaml\n")
    write(tmp_path / "y.yaml", "base: x.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "x.yaml")


def test_override_errors_name_the_override(tmp_path):
    f = write(tmp_path / "r.yaml", MINIMAL)
    with pytest.raises(ConfigError) as e:
        load_config(f, ["train.max_stepz=3"])
    assert "train.max_stepz" in str(e.value) and "command-line override" in str(e.value)
    with pytest.raises(ConfigError, match="train.batch_size.*integer"):
        load_config(f, ["train.batch_size=1.5"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(f, ["train.max_steps"])
    with pytest.raises(ConfigError, match="no sub-keys"):
        load_config(f, ["seed.x=1"])
    with pytest.raises(ConfigError, match="no list item 3"):
        load_config(f, ["data.train.3.weight=1"])


def test_whole_config_checks(tmp_path):
    f = write(tmp_path / "r.yaml", "data:\n  train: [{type: folder, root: x}]\n")
    with pytest.raises(ConfigError, match="model.method"):
        load_config(f)
    g = write(tmp_path / "g.yaml", "model: {method: m}\ndata:\n  train: [{root: x}]\n")
    with pytest.raises(ConfigError, match=r"data.train.0.*type"):
        load_config(g)
    h = write(tmp_path / "h.yaml", MINIMAL)
    with pytest.raises(ConfigError, match="train.max_steps.*>= 1"):
        load_config(h, ["train.max_steps=0"])
    with pytest.raises(ConfigError, match="weights in 'data.train' sum to 0"):
        load_config(h, ["data.train.0.weight=0"])


def test_debug_caps_a_recipe(tmp_path):
    f = write(tmp_path / "r.yaml", """
model: {method: "toy_model:ToyDepth", tiny: true}
data:
  train:
    - {type: "toy_model:ToyDepthSet", n: 4}
    - {type: synth, n: 500}
train: {max_steps: 10000, batch_size: 16, effective_batch_size: 64}
checkpoint: {every: 1000}
val: {every: 500, samples: 100}
""")
    cfg = load_config(f, ["data.num_workers=8"], debug=True)
    assert cfg["debug"] is True
    assert cfg["train"]["max_steps"] == DEBUG_CAPS["train.max_steps"]
    assert cfg["train"]["batch_size"] == DEBUG_CAPS["train.batch_size"]
    assert cfg["train"]["effective_batch_size"] is None
    assert cfg["data"]["num_workers"] == 0
    assert all(e["limit"] == DEBUG_CAPS["dataset limit"] for e in cfg["data"]["train"])
    assert cfg["data"]["train"][1]["n"] == DEBUG_CAPS["dataset limit"]
    assert cfg["checkpoint"]["every"] == DEBUG_CAPS["checkpoint.every"]
    assert cfg["val"]["every"] == DEBUG_CAPS["train.max_steps"] and cfg["val"]["samples"] == 2
    # debug: true in the file has the same effect as --debug
    cfg2 = load_config(f, ["data.num_workers=8", "debug=true"])
    assert cfg2 == cfg


def test_diff_configs_lists_changed_keys(tmp_path):
    f = write(tmp_path / "r.yaml", MINIMAL)
    a = load_config(f)
    b = load_config(f, ["train.max_steps=5", "task.noise=0.1"])
    assert diff_configs(a, b) == ["task", "train.max_steps"]


def test_cli_reports_config_errors_in_one_line(tmp_path, capsys):
    from diffdepth.cli import main

    f = write(tmp_path / "r.yaml", MINIMAL)
    assert main(["train", str(f), "train.max_stepz=1", "--print-config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("diffdepth train: error:") and "train.max_stepz" in err[0]
    # options may follow the overrides; --print-config shows the resolved recipe
    assert main(["train", str(f), "train.max_steps=9", "--debug", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["debug"] is True and printed["train"]["max_steps"] == DEBUG_CAPS["train.max_steps"]


@pytest.mark.parametrize("recipe", sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.yaml")
                                          if p.name != "base.yaml"))
def test_every_shipped_recipe_resolves(recipe):
    cfg = load_config(ROOT / recipe)
    assert cfg["model"]["method"] and cfg["data"]["train"]
    assert load_config(ROOT / recipe, debug=True)["train"]["max_steps"] <= DEBUG_CAPS["train.max_steps"]
    # the validation's predict options are ones the method takes, of the types it declares
    model_class = get_method(cfg["model"]["method"]).load_class()
    assert model_class.check_options(dict(cfg["val"]["predict"])) == cfg["val"]["predict"]
