"""Fixtures of the pytest-benchmark files (run on demand, never in the default test run):

    pytest benchmarks/perf --benchmark-only                      # sizes by device: full on CUDA, small on CPU
    pytest benchmarks/perf --benchmark-only --perf-size full --benchmark-json perf.json

``small`` trains on 512 images (ResNet-18 at width 8) to check the code paths on a CPU; ``full`` uses
the whole training pools and the ``baselines`` suite's recipes. Data come from ``--data-root``,
``$UNLEARNBENCH_DATA_ROOT`` or ``shared/data`` beside the checkout; without the files, synthetic sets
of the same shape stand in (``extra_info["synthetic"]`` says so).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from unlearnbench.benchmarks.harness import CellData, RunContext, resolve_device

from unlearnbench.benchmarks.perf import _common as C


def pytest_addoption(parser):
    group = parser.getgroup("unlearnbench perf")
    group.addoption("--perf-size", choices=("small", "full"), default=None,
                    help="workload sizes of benchmarks/perf (default: full on CUDA, small on CPU)")
    group.addoption("--perf-data-root", default=None, help="folder with mnist/ and cifar10_jpeg/")


@dataclass
class Perf:
    """Session state: device, sizes and the cells built so far (data moved to the device once)."""

    ctx: RunContext
    size: str
    data_root: str | None
    _cells: dict[str, tuple[CellData, bool]] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @property
    def full(self) -> bool:
        return self.size == "full"

    @property
    def rounds(self) -> int:
        return 3

    def workload(self, key: str) -> C.Workload:
        w = C.workload(key)
        return w if self.full or key != "cifar" else w.with_model_options(width=8)

    def suite_kw(self, key: str) -> dict[str, Any]:
        kw: dict[str, Any] = {"synthetic": not C.has_data(key, self.data_root)}
        if not self.full:
            kw.update(train_subset=512, heldout=256)
        return kw

    def cell_data(self, key: str) -> tuple[CellData, bool]:
        """(cell data of the workload's first cell, whether the data are a synthetic stand-in)."""
        if key not in self._cells:
            kw = self.suite_kw(key)
            cd = C.cell_data(C.perf_suite(self.workload(key), **kw), self.ctx)
            self._cells[key] = (cd, kw["synthetic"])
        return self._cells[key]


@pytest.fixture(scope="session")
def perf(request, tmp_path_factory) -> Perf:
    device = resolve_device("auto")
    size = request.config.getoption("--perf-size") or ("full" if device.type == "cuda" else "small")
    root = request.config.getoption("--perf-data-root") or C.default_data_root()
    ctx = RunContext(results_dir=tmp_path_factory.mktemp("perf"), data_root=root, device=device)
    return Perf(ctx, size, root)
