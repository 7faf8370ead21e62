"""The Ray executor: the same records as the in-process executor, and no result lost or doubled when a
worker process is killed mid-cell. One local Ray cluster with 2 CPUs serves the whole module."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from unlearnbench.benchmarks.cli import main
from unlearnbench.benchmarks.executors import get_executor, plan
from unlearnbench.benchmarks.harness import RunContext
from unlearnbench.benchmarks.store import Store
from unlearnbench.methods import method_class, method_names

from .helpers import tiny_suite

# Metrics that measure the machine rather than the model: they differ between any two runs.
TIMING = {"time_s", "peak_mem_mib", "speedup_vs_retrain", "original_train_time_s", "retrain_time_s"}
CELL_TASK = b"ray::_run_cell"  # the process title of a Ray worker while it runs a cell


def _timing(name: str) -> bool:
    """Values a re-run cannot give again (their declarations say so: wall times, memory peaks, and whether the
    reference time was measured by the process that scored the cell -- a Ray worker or this one)."""
    from unlearnbench.attacks import declaration

    spec = declaration(name)
    return name in TIMING or (spec is not None and not spec.reproducible)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local 2-CPU cluster. torch runs one thread here and in the workers (the executor hands workers the
    driver's count): CPU results depend on the thread count, and tiny models run far faster on one
    thread on a shared machine."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'unlearnbench[ray]')")
    if ray.is_initialized():
        ray.shutdown()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        torch.set_num_threads(threads)


def _run(results: Path, *extra: str) -> int:
    return main(["run", "--results", str(results), "--device", "cpu", "--quiet", *extra])


def _all_records(results: Path):
    """Every stored row (not only the newest per cell), and the scores of each."""
    with Store(results) as store:
        records = store.records(latest=False)
        return records, {(r.suite, r.cell_key): store.scores(r) for r in records}


def _few_default_methods() -> list[str]:
    """original and retrain, plus the first two other registered methods that are deterministic."""
    others = [m for m in method_names() if m not in ("original", "retrain")
              and "nondeterministic" not in method_class(m).tags]
    return ["original", "retrain", *others[:2]]


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_importing_benchmarks_does_not_import_ray():
    code = ("import sys, unlearnbench.benchmarks.executors, unlearnbench.benchmarks.cli, "
            "unlearnbench.benchmarks.harness; print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"


def test_ray_gives_the_inprocess_records_on_the_default_suite(ray_cluster, tmp_path):
    methods = _few_default_methods()
    args = ("--suite", "default", "--methods", ",".join(methods), "--seeds", "0")
    assert _run(tmp_path / "inprocess", *args) == 0
    assert _run(tmp_path / "ray", *args, "--executor", "ray") == 0
    local, local_scores = _all_records(tmp_path / "inprocess")
    remote, remote_scores = _all_records(tmp_path / "ray")

    assert len(local) == 2 * len(methods)  # requests x methods x one seed
    by_key = {(r.suite, r.cell_key): r for r in local}
    assert len(by_key) == len(local)
    assert sorted(by_key) == sorted((r.suite, r.cell_key) for r in remote)  # the same cells, each once
    compared = 0
    for r in remote:
        ref = by_key[(r.suite, r.cell_key)]
        assert (r.status, r.reason, r.config, r.hashes) == (ref.status, ref.reason, ref.config, ref.hashes)
        assert set(r.metrics) == set(ref.metrics), r.method
        for name, value in ref.metrics.items():
            if not _timing(name):  # bit-equal on the CPU
                assert _same(r.metrics[name], value), f"{r.method}/{r.request}: {name} {r.metrics[name]!r} != {value!r}"
                compared += 1
        rs, ls = remote_scores[(r.suite, r.cell_key)], local_scores[(r.suite, r.cell_key)]
        assert sorted(rs) == sorted(ls)
        for k in ls:
            np.testing.assert_array_equal(rs[k], ls[k])
    assert compared >= 5 * len(remote)  # the model metrics were compared, not only bookkeeping

    from unlearnbench.reports.summary import summary_frame

    cols = ("forget_acc", "retain_acc", "test_acc", "mia.loss_auc", "mia.svc_efficacy", "avg_gap")
    boards = [summary_frame([x.row() for x in recs], cols).sort_values(["request", "method"]).reset_index(drop=True)
              for recs in (local, remote)]
    assert boards[0].equals(boards[1])

    # run again: every cell is finished, nothing is re-run or written twice
    assert _run(tmp_path / "ray", *args, "--executor", "ray") == 0
    again, _ = _all_records(tmp_path / "ray")
    assert [r.run_id for r in again] == [r.run_id for r in remote]


def _parent_pid() -> int:
    return os.getppid()


class _CellKiller(threading.Thread):
    """SIGKILLs the first worker of our cluster seen running a cell (its process title is ray::_run_cell)."""

    def __init__(self, raylet_pid: int):
        super().__init__(daemon=True)
        self.raylet_pid = raylet_pid
        self.killed: int | None = None
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set() and self.killed is None:
            for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                    ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                if cmd.startswith(CELL_TASK) and ppid == self.raylet_pid:
                    os.kill(pid, signal.SIGKILL)
                    self.killed = pid
                    return
            time.sleep(0.005)


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds Ray workers through /proc (Linux)")
def test_a_worker_killed_mid_cell_loses_and_doubles_nothing(ray_cluster, tmp_path):
    ray = ray_cluster
    raylet_pid = ray.get(ray.remote(_parent_pid).remote())  # workers are children of the raylet
    # enough work per cell that the killer sees one running
    suite = tiny_suite(methods=["original", "retrain"], seeds=[0, 1, 2],
                       recipe={"epochs": 30, "batch_size": 16, "lr": 0.05, "augment": False})
    cells = suite.cells()
    ctx = RunContext(results_dir=tmp_path / "results", device=torch.device("cpu"))
    killer = _CellKiller(raylet_pid)
    killer.start()
    try:
        with Store(ctx.results_dir) as store:
            todo = plan(cells, ctx, store)
            assert len(todo.pending) == len(cells) == 6
            get_executor("ray")(todo.pending, ctx, lambda rec, scores: store.write(rec, scores))
    finally:
        killer.done.set()
        killer.join(5)

    assert killer.killed is not None, "no worker was seen running a cell, so none was killed"
    with pytest.raises(ProcessLookupError):
        os.kill(killer.killed, 0)  # the worker really is gone
    records, _ = _all_records(ctx.results_dir)
    keys = [r.cell_key for r in records]
    assert len(keys) == len(set(keys)) == len(cells)  # every cell exactly once: none lost, none doubled
    assert sorted(keys) == sorted(c.key("cpu") for c in cells)
    assert all(r.status == "ok" for r in records), [(r.method, r.status, r.reason[:200]) for r in records]
