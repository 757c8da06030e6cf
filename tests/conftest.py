"""Shared fixtures: one tiny Stable Diffusion per test session, in memory and on disk."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):  # one thread per worker: no oversubscription on 2 cores
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_sd():
    from diffdepth.backbone import make_tiny_sd

    return make_tiny_sd(seed=0)


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory, tiny_sd):
    path = tmp_path_factory.mktemp("tiny-sd")
    tiny_sd.save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def toy_ckpt(tmp_path):
    """A saved ``test-mean`` checkpoint (depth = offset + mean RGB, offset 1)."""
    import _toy_methods

    _toy_methods.register()
    path = tmp_path / "ckpt"
    _toy_methods.MeanDepth(offset=1.0).save_pretrained(path)
    return path

