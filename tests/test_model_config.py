"""``register_to_config``: constructor arguments become the saved config without per-method code."""
import pytest

from diffdepth.errors import ConfigError
from diffdepth.model import DepthModel, register_to_config


class _Toy(DepthModel):
    method = "toy"
    config_ignore = ("module",)

    @register_to_config
    def __init__(self, module=None, sizes=(1, 2), *, mode="auto", **extra):
        super().__init__()
        if mode == "auto":
            self.config["mode"] = "resolved"  # the body may store what "auto" became


def test_arguments_defaults_and_kwargs_are_recorded_json_normalised():
    toy = _Toy(object(), extra_flag=True)
    assert toy.get_config() == {"sizes": [1, 2], "mode": "resolved", "extra_flag": True}
    assert _Toy(sizes=(3,), mode="x").get_config() == {"sizes": [3], "mode": "x"}
    cfg = toy.get_config()
    cfg["sizes"].append(9)  # a copy: callers cannot change the model's config
    assert toy.config["sizes"] == [1, 2]


def test_an_argument_json_cannot_hold_is_an_error():
    with pytest.raises(ConfigError, match="cannot be saved in diffdepth.json"):
        _Toy(sizes=object())


class _Sub(_Toy):
    @register_to_config
    def __init__(self, depth: int = 3):
        super().__init__(sizes=(depth,), mode="fixed")


def test_a_decorated_subclass_records_its_own_arguments_not_its_parents():
    assert _Sub(depth=4).get_config() == {"depth": 4}  # what rebuilds it: _Sub(**config)
