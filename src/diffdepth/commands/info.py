"""``diffdepth info``: versions, device and the registered methods."""
from __future__ import annotations

import argparse

HELP = "print versions, the available device and the registered methods with their default checkpoints"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    import platform

    import torch

    from .. import __version__
    from ..registry import DEFAULT_METHOD, list_methods
    from ..utils import parse_device

    versions = {"diffdepth": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for name in ("diffusers", "transformers", "accelerate", "numpy"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = "not installed"
    for k, v in versions.items():
        print(f"{k:13s} {v}")
    dev = parse_device("auto")
    detail = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    print(f"{'device':13s} {dev} ({detail}; {torch.get_num_threads()} CPU threads)")
    print("\nmethods:")
    for m in list_methods():
        mark = " (default)" if m.id == DEFAULT_METHOD else ""
        print(f"  {m.id:13s} {m.output_kind:27s} checkpoint: {m.default_checkpoint or '- (train or convert one)'}{mark}")
        print(f"  {'':13s} {m.summary}")
        for name, (text, values) in _presets(m).items():
            print(f"  {'':13s} --preset {name}: {text} ({', '.join(f'{k}={v}' for k, v in values.items())})")
    return 0


def _presets(info) -> dict:
    """The method's named inference presets (its class's ``presets``; none if it cannot be imported)."""
    try:
        return dict(getattr(info.load_class(), "presets", None) or {})
    except Exception:  # a broken optional method must not break `info`
        return {}
