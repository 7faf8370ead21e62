"""Executors run a suite's pending cells and hand each finished record to the driver, which alone
writes the store. ``inprocess`` (the default) runs cells one after another in this process; the Ray
executor (``unlearnbench[ray]``) lives in :mod:`unlearnbench.benchmarks.ray_executor`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from .harness import RunContext, run_cell
from .store import RunRecord, Store
from .suite import CellSpec

ResultSink = Callable[[RunRecord, dict[str, np.ndarray]], None]


@dataclass
class Plan:
    pending: list[CellSpec]
    done: int  # cells already finished in the store
    skipped: list[tuple[CellSpec, str]] = field(default_factory=list)  # cannot run here, with the reason


def plan(cells: Iterable[CellSpec], ctx: RunContext, store: Store, force: bool = False) -> Plan:
    finished = set() if force else store.finished_keys()
    p = Plan([], 0)
    for cell in cells:
        if cell.dataset.requires == "cuda" and ctx.device.type != "cuda":
            p.skipped.append((cell, "needs a CUDA GPU (the suite marks this dataset requires = \"cuda\")"))
        elif cell.key(ctx.device.type) in finished:
            p.done += 1
        else:
            p.pending.append(cell)
    return p


def run_inprocess(cells: list[CellSpec], ctx: RunContext, sink: ResultSink,
                  on_start: Callable[[CellSpec], None] | None = None) -> None:
    for cell in cells:
        if on_start:
            on_start(cell)
        record, scores = run_cell(cell, ctx)
        sink(record, scores)


EXECUTORS = {"inprocess": run_inprocess}


def get_executor(name: str, **options):
    if name == "inprocess":
        return run_inprocess
    if name == "ray":
        try:
            from .ray_executor import make_ray_executor
        except ImportError as exc:
            raise RuntimeError("the ray executor needs Ray: pip install 'unlearnbench[ray]'") from exc
        return make_ray_executor(**options)
    raise ValueError(f"unknown executor {name!r}; choose inprocess or ray")


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
