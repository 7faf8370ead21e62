"""The environment a run records: code version, library versions, device, determinism flags."""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch


@functools.lru_cache(maxsize=1)
def git_state() -> tuple[str, bool | None]:
    """(commit, dirty) of the checkout this package runs from; ("unknown", None) outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
        return commit, bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        return "unknown", None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


@functools.lru_cache(maxsize=4)
def _static_env(device_str: str) -> dict[str, Any]:
    import numpy
    import sklearn

    import unlearnbench

    device = torch.device(device_str)
    commit, dirty = git_state()
    try:
        import torchvision

        tv = torchvision.__version__
    except ImportError:  # pragma: no cover
        tv = "missing"
    return {
        "unlearnbench": unlearnbench.__version__, "git_commit": commit, "git_dirty": dirty,
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": tv,
        "numpy": numpy.__version__, "sklearn": sklearn.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "device_type": device.type, "device_name": device_name(device),
        "platform": platform.platform(terse=True), "cpu_threads": torch.get_num_threads(),
    }


def environment(device: torch.device, seed: int) -> dict[str, Any]:
    env = dict(_static_env(str(device)))
    env.update({
        "seed": seed,
        "cpu_threads": torch.get_num_threads(),  # now, not when the static part was cached (it enters CPU cell keys)
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark if device.type == "cuda" else None,
        "precision": "bf16-autocast" if device.type == "cuda" else "fp32",
    })
    return env


def timing_env(device: torch.device) -> dict[str, Any]:
    """What must match for two wall times to be comparable: the device (name), the library versions, the
    CPU thread count and the precision. Stored beside every cached model's training time."""
    static = _static_env(str(device))
    return {"device_type": device.type, "device_name": static["device_name"], "torch": static["torch"],
            "torchvision": static["torchvision"], "cpu_threads": torch.get_num_threads() if device.type == "cpu"
            else None, "precision": "bf16-autocast" if device.type == "cuda" else "fp32"}
