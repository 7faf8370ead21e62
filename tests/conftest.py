"""Shared fixtures and markers.

- ``@pytest.mark.gpu``: skipped unless torch sees a CUDA GPU.
- ``@pytest.mark.slow``: skipped unless ``--runslow`` is given.
- ``@pytest.mark.data``: skipped unless the real dataset files are found (``UNLEARNBENCH_DATA_ROOT`` or
  ``../shared/data`` beside the checkout).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def shared_data_root() -> Path | None:
    env = os.environ.get("UNLEARNBENCH_DATA_ROOT")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if (cand / "mnist").is_dir() or (cand / "MNIST").is_dir() or (cand / "cifar10_jpeg").is_dir():
            return cand
    return None


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    has_gpu = torch.cuda.is_available()
    run_slow = config.getoption("--runslow")
    has_data = shared_data_root() is not None
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine)"))
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: run with --runslow"))
        if "data" in item.keywords and not has_data:
            item.add_marker(pytest.mark.skip(reason="real dataset files not found (set UNLEARNBENCH_DATA_ROOT)"))


@pytest.fixture(scope="session")
def data_root() -> Path | None:
    return shared_data_root()
