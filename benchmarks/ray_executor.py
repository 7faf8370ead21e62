"""The Ray executor (``unlearnbench run --executor ray [--address ADDR]``; needs ``unlearnbench[ray]``).

Cells run as Ray tasks: one GPU each when the run's device is CUDA, one CPU otherwise. The original
and retrain models that cells share are built once per cluster, in three waves of tasks:

1. one *key* task per (dataset, request, seed, budget) group computes the cells' cache keys with the
   harness's own :func:`~unlearnbench.benchmarks.harness.prepare_cell` (so the keys are exactly the
   in-process ones);
2. as the keys arrive, one *build* task per unique original key, then one per unique reference key
   (depending on its original's build), trains the model into the :class:`ModelCache`;
3. every cell task depends on the build of its reference and runs
   :func:`~unlearnbench.benchmarks.harness.run_cell`, which then only loads the cached models.

The model cache must be on a filesystem every node sees (results and cache paths are passed as
absolute paths; the data root too), and every node needs the same ``unlearnbench`` installed.
Workers return ``(record, scores)``; the driver alone calls ``sink`` (which writes the store), once
per cell. A worker lost mid-task (killed, out of memory, node gone) is retried by Ray
(``max_retries``); its half-done work leaves nothing behind (cache entries are written atomically,
the store only ever sees the driver's one write). A task that *raises* is not retried: the driver
keeps writing every other cell's result, then re-raises the first error, as the in-process executor
would (a method's own exception is a ``failed`` record, not an error).

Each worker process keeps one :class:`RunContext` per run configuration, so a dataset stays resident
on the worker's device across the cells it runs.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

try:
    import ray
except ImportError as exc:  # pragma: no cover - get_executor turns this into an install hint
    raise ImportError("the ray executor needs Ray: pip install 'unlearnbench[ray]'") from exc

from .harness import RunContext, original_model, prepare_cell, reference_model, run_cell
from .store import RunRecord
from .suite import CellSpec, stable_hash
from .validate import InputError

ResultSink = Callable[[RunRecord, dict[str, np.ndarray]], None]


# ------------------------------------------------------------------------------ run context


@dataclasses.dataclass(frozen=True)
class ContextSpec:
    """The plain fields of a :class:`RunContext` (paths made absolute, the device as its type), from which
    a worker re-creates the context. Every public init field of ``RunContext`` travels.

    ``cpu_threads``: on the CPU, torch's thread count changes the results (reductions split
    differently), so workers use the driver's count unless told otherwise: the records then equal
    the in-process executor's on the same machine, bit for bit.
    """

    fields: tuple[tuple[str, Any], ...]
    cpu_threads: int | None = None

    @classmethod
    def of(cls, ctx: RunContext, cpu_threads: int | None = None) -> "ContextSpec":
        out: dict[str, Any] = {}
        for f in dataclasses.fields(ctx):
            if not f.init or f.name.startswith("_"):
                continue
            value = getattr(ctx, f.name)
            if f.name == "device":
                value = torch.device(value).type
            elif f.name == "results_dir":
                value = str(Path(value).resolve())
            elif f.name == "cache_dir":
                value = str(Path(ctx.cache.root).resolve())  # the resolved default, so every node agrees
            elif f.name == "data_root" and value is not None and Path(value).exists():
                value = str(Path(value).resolve())
            elif isinstance(value, Path):
                value = str(value.resolve())
            out[f.name] = value
        if out["device"] == "cpu" and cpu_threads is None:
            cpu_threads = torch.get_num_threads()
        return cls(tuple(sorted(out.items())), cpu_threads if out["device"] == "cpu" else None)

    @property
    def device_type(self) -> str:
        return dict(self.fields)["device"]

    def build(self) -> RunContext:
        kw = dict(self.fields)
        if kw["device"] == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"Ray ran a GPU task on {os.uname().nodename}, where torch sees no CUDA GPU "
                               f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); "
                               "install a CUDA build of torch on that node or run with --device cpu")
        kw["device"] = torch.device(kw["device"])
        return RunContext(**kw)


_CONTEXTS: dict[ContextSpec, RunContext] = {}  # per worker process: keeps data resident between tasks


def worker_context(spec: ContextSpec) -> RunContext:
    if spec.cpu_threads is not None and torch.get_num_threads() != spec.cpu_threads:
        torch.set_num_threads(spec.cpu_threads)
    if spec not in _CONTEXTS:
        _CONTEXTS[spec] = spec.build()
    return _CONTEXTS[spec]


# ---------------------------------------------------------------------------- task bodies


def _cell_keys(cells: list[CellSpec], spec: ContextSpec) -> list[tuple[str, str]]:
    """(original key, reference key) of each cell, as the harness computes them."""
    ctx = worker_context(spec)
    out = []
    for cell in cells:
        cd = prepare_cell(cell, ctx)
        out.append((cd.original_key, cd.reference_key))
    return out


def _build_original(cell: CellSpec, spec: ContextSpec) -> dict[str, Any]:
    ctx = worker_context(spec)
    cd = prepare_cell(cell, ctx)
    if ctx.cache.has(cd.original_key):
        return {"key": cd.original_key, "built": False}
    _, info = original_model(cd, ctx)
    return {"key": cd.original_key, "built": True, "train_time_s": info["train_time_s"]}


def _build_reference(cell: CellSpec, spec: ContextSpec, original_built: dict[str, Any]) -> dict[str, Any]:
    ctx = worker_context(spec)
    cd = prepare_cell(cell, ctx)
    if ctx.cache.has(cd.reference_key):
        return {"key": cd.reference_key, "built": False}
    original, _ = original_model(cd, ctx)  # loads the cached original (its build task finished first)
    _, info = reference_model(cd, ctx, original)
    return {"key": cd.reference_key, "built": True, "train_time_s": info["train_time_s"]}


def _run_cell(cell: CellSpec, spec: ContextSpec, reference_built: dict[str, Any]
              ) -> tuple[RunRecord, dict[str, np.ndarray]]:
    return run_cell(cell, worker_context(spec))


_keys_task = ray.remote(_cell_keys)
_original_task = ray.remote(_build_original)
_reference_task = ray.remote(_build_reference)
_cell_task = ray.remote(_run_cell)


def group_key(cell: CellSpec) -> str:
    """Cells that differ only in their method (and metrics) share the original and reference models."""
    cfg = cell.config()
    for k in ("method", "method_params", "metrics", "metric_options"):
        cfg.pop(k)
    return stable_hash(cfg)


# ---------------------------------------------------------------------------------- driver


def _init_ray(address: str | None) -> bool:
    """Connect to ``address`` (or start a local cluster) unless Ray is already up; True if we started it."""
    if ray.is_initialized():
        return False
    env = {}
    if address or os.environ.get("RAY_ADDRESS"):  # workers of a local cluster inherit this environment
        env = {k: v for k, v in os.environ.items() if k.startswith("UNLEARNBENCH_")}
    ray.init(address=address, runtime_env={"env_vars": env} if env else None)
    return True


def make_ray_executor(address: str | None = None, *, max_retries: int = 3, cpus_per_task: float = 1.0,
                      gpus_per_task: float = 1.0, cpu_threads: int | None = None):
    """An executor ``(cells, ctx, sink, on_start=None)`` that runs cells as Ray tasks.

    ``address``: a Ray cluster address (``auto``, ``ray://host:10001``, ...); None connects to
    ``$RAY_ADDRESS`` or starts a local cluster (shut down again when the run ends). A Ray session
    already initialised in this process is used as it is. ``max_retries``: how often a task whose
    worker died is re-run. ``gpus_per_task`` applies when the run's device is CUDA (a fraction packs
    several small cells on one GPU); ``cpus_per_task`` always. ``cpu_threads``: torch threads of a
    worker on CPU runs (default: this process's count, see :class:`ContextSpec`).
    """
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")

    def execute(cells: list[CellSpec], ctx: RunContext, sink: ResultSink,
                on_start: Callable[[CellSpec], None] | None = None) -> None:
        """Ray does not tell the driver when a task starts: ``on_start(cell)`` is called as each cell's
        result arrives, just before ``sink``."""
        if not cells:
            return
        started = _init_ray(address)
        try:
            _drive(list(cells), ContextSpec.of(ctx, cpu_threads), sink, on_start, max_retries, cpus_per_task,
                   gpus_per_task)
        finally:
            if started:
                ray.shutdown()

    return execute


def _drive(cells: list[CellSpec], spec: ContextSpec, sink: ResultSink, on_start, max_retries: int,
           cpus_per_task: float, gpus_per_task: float) -> None:
    gpu = spec.device_type == "cuda"
    opts = {"num_cpus": cpus_per_task, "num_gpus": gpus_per_task if gpu else 0, "max_retries": max_retries,
            "retry_exceptions": False}
    if gpu and ray.cluster_resources().get("GPU", 0) < gpus_per_task:
        raise InputError(f"the run's device is CUDA but the Ray cluster has no GPU "
                           f"(resources: {ray.cluster_resources()}); run with --device cpu or add GPU nodes")

    groups: dict[str, list[CellSpec]] = {}
    for cell in cells:
        groups.setdefault(group_key(cell), []).append(cell)
    key_refs = {_keys_task.options(**opts).remote(g, spec): g for g in groups.values()}
    originals: dict[str, Any] = {}  # original key -> ObjectRef of its build
    references: dict[str, Any] = {}  # reference key -> ObjectRef of its build
    cell_refs: dict[Any, CellSpec] = {}
    written: set[tuple[str, str]] = set()
    errors: list[BaseException] = []

    while key_refs or cell_refs:
        ready, _ = ray.wait([*key_refs, *cell_refs], num_returns=1)
        ref = ready[0]
        if ref in key_refs:
            group = key_refs.pop(ref)
            try:
                keys = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - kept, re-raised after the other cells are written
                errors.append(exc)
                continue
            for cell, (okey, rkey) in zip(group, keys):
                if okey not in originals:
                    originals[okey] = _original_task.options(**opts).remote(cell, spec)
                if rkey not in references:
                    references[rkey] = _reference_task.options(**opts).remote(cell, spec, originals[okey])
                cell_refs[_cell_task.options(**opts).remote(cell, spec, references[rkey])] = cell
            continue
        cell = cell_refs.pop(ref)
        try:
            record, scores = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - kept, re-raised after the other cells are written
            errors.append(exc)
            continue
        ident = (record.suite, record.cell_key)
        if ident in written:  # the driver writes each cell once, whatever happened on the workers
            continue
        written.add(ident)
        if on_start:
            on_start(cell)
        sink(record, scores)
    if errors:
        raise errors[0]
