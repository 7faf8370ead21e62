"""Executors run a suite's pending cells and hand each finished record to the driver, which alone
writes the store. ``inprocess`` (the default) runs cells one after another in this process; the Ray
executor (``unlearnbench[ray]``) lives in :mod:`unlearnbench.benchmarks.ray_executor`.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from unlearnbench.errors import UserError

from .harness import RunContext, run_cell, start_cell
from .store import RunRecord, Store
from .suite import CellSpec
from .validate import InputError

ResultSink = Callable[[RunRecord, dict[str, np.ndarray]], None]


@dataclass
class Plan:
    pending: list[CellSpec]
    done: int  # cells already finished in the store
    skipped: list[tuple[CellSpec, str]] = field(default_factory=list)  # cannot run here, with the reason


def plan(cells: Iterable[CellSpec], ctx: RunContext, store: Store, force: bool = False,
         allow_cpu: bool = False) -> Plan:
    """Split cells into pending, finished (in the store) and skipped. ``allow_cpu`` runs datasets that the
    suite marks ``requires = "cuda"`` on whatever device the context has (slow, but the same cells)."""
    cells = list(cells)
    suites = {c.suite for c in cells}
    finished = set() if force else {(s, k) for s in suites for k in store.finished_keys(s)}
    p = Plan([], 0)
    for cell in cells:
        if cell.dataset.requires == "cuda" and ctx.device.type != "cuda" and not allow_cpu:
            p.skipped.append((cell, "needs a CUDA GPU (the suite marks this dataset requires = \"cuda\"; "
                                    "--allow-cpu runs it here anyway, slowly)"))
        elif (cell.suite, cell.key(ctx.device.type, ctx.cpu_threads)) in finished:
            p.done += 1
        else:
            p.pending.append(cell)
    return p


def run_inprocess(cells: list[CellSpec], ctx: RunContext, sink: ResultSink,
                  on_start: Callable[[CellSpec], None] | None = None, score_threads: int | None = None) -> None:
    """Run cells in order in this process. On CUDA the host-only part of scoring (scikit-learn attacks on
    precomputed logits, certificates) runs on worker threads while the GPU runs the next cell; results
    still reach ``sink`` on this thread, in cell order. On the CPU everything stays on this thread."""
    threads = score_threads if score_threads is not None else (
        min(8, os.cpu_count() or 1) if ctx.device.type == "cuda" else 0)  # libsvm fits release the GIL
    if threads <= 0:
        for cell in cells:
            if on_start:
                on_start(cell)
            record, scores = run_cell(cell, ctx)
            sink(record, scores)
        return
    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="score") as pool:
        for cell in cells:
            if on_start:
                on_start(cell)
            started = start_cell(cell, ctx)
            pending.append(started if isinstance(started, tuple) else pool.submit(started.finish))
            while pending and (isinstance(pending[0], tuple) or pending[0].done() or len(pending) > 2 * threads):
                item = pending.popleft()
                sink(*(item if isinstance(item, tuple) else item.result()))
        while pending:
            item = pending.popleft()
            sink(*(item if isinstance(item, tuple) else item.result()))


EXECUTORS = {"inprocess": run_inprocess}


def get_executor(name: str, **options):
    if name == "inprocess":
        return run_inprocess
    if name == "ray":
        try:
            from .ray_executor import make_ray_executor
        except ImportError as exc:
            raise InputError(f"--executor ray needs Ray, which is not importable here ({exc.__cause__ or exc}): "
                             "pip install 'unlearnbench[ray]', or use --executor inprocess") from exc
        return make_ray_executor(**options)
    raise InputError(f"unknown executor {name!r}: choose inprocess or ray")


class CellInputError(UserError):
    """A pending cell cannot start (its data, request or model options); found before any training."""


def preflight(cells: Iterable[CellSpec], ctx: RunContext) -> None:
    """Check, before anything trains, what every pending cell reads first: its dataset's files and labels,
    its forget request for its seed, and its model options. A problem is a :class:`CellInputError` naming
    the cell, so a bad input never surfaces hours into a run (or after other cells were stored)."""
    from unlearnbench.datasets import build_request
    from unlearnbench.methods.models import build_model

    seen_req: set = set()
    seen_model: set = set()
    for cell in cells:
        d = cell.dataset
        try:
            splits = ctx.splits(cell)
            rkey = (d.spec, cell.request.kind, repr(sorted(cell.request.params.items())), cell.seed)
            if rkey not in seen_req:
                seen_req.add(rkey)
                build_request(splits, cell.request.kind, cell.request.params, cell.seed)
            mkey = (d.model, repr(sorted(d.model_options.items())), splits.image_shape, splits.num_classes)
            if mkey not in seen_model:
                seen_model.add(mkey)
                c = splits.image_shape[0]
                try:
                    build_model(d.model, splits.image_shape, splits.num_classes, [0.0] * c, [1.0] * c,
                                **d.model_options)
                except UserError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a bad option value surfaces as whatever torch raises
                    raise CellInputError(f"model {d.model!r} with model_options {d.model_options} cannot be built "
                                         f"({type(exc).__name__}: {exc}): fix model_options in the suite") from exc
        except UserError as exc:
            raise CellInputError(f"cell {cell.label}: {exc}") from exc


@contextlib.contextmanager
def progress_bar(total: int, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """A rich progress bar over cells; yields ``update(description=None, advance=0)``."""
    if not enabled or total == 0:
        yield lambda description=None, advance=0: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), transient=False) as prog:
        task = prog.add_task("cells", total=total)

        def update(description: str | None = None, advance: int = 0) -> None:
            prog.update(task, description=description or prog.tasks[0].description, advance=advance)

        yield update
