"""``unlearnbench run``: run a suite's cells (skipping finished ones) and print a summary table."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run a suite (default: the embedded digits suite)",
                       description="Run every pending cell of a suite; finished cells are skipped (--force redoes "
                                   "them). Results go to the SQLite store in --results.")
    p.add_argument("--suite", default="default", help="built-in suite name or path to a .toml file (default: default)")
    p.add_argument("--methods", type=_csv, default=None, help="comma-separated subset of the suite's methods")
    p.add_argument("--seeds", type=_csv_int, default=None, help="comma-separated seeds overriding the suite's")
    p.add_argument("--datasets", type=_csv, default=None, help="comma-separated subset of the suite's datasets")
    p.add_argument("--requests", type=_csv, default=None,
                   help="comma-separated subset of the suite's requests, by label (e.g. random-10%%,class-3)")
    p.add_argument("--data-root", default=None,
                   help="folder with dataset files (env UNLEARNBENCH_DATA_ROOT); e.g. ../shared/data")
    p.add_argument("--download", action="store_true", help="let torchvision download missing datasets")
    p.add_argument("--results", default="results", help="results folder (default: ./results)")
    p.add_argument("--cache-dir", default=None, help="model cache (default: <results>/cache/models)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument("--executor", default="inprocess", choices=("inprocess", "ray"), help="where cells run")
    p.add_argument("--address", default=None, help="Ray cluster address (with --executor ray)")
    p.add_argument("--force", action="store_true", help="re-run finished cells (results are appended)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--allow-cpu", action="store_true",
                   help="also run datasets the suite marks requires = \"cuda\" when no GPU is used (slow)")
    p.set_defaults(func=run)


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _csv_int(s: str) -> list[int]:
    try:
        return [int(x) for x in _csv(s)]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--seeds takes comma-separated integers, got {s!r}") from exc


def run(args: argparse.Namespace) -> int:
    from unlearnbench.benchmarks.cli import default_data_root
    from unlearnbench.benchmarks.executors import get_executor, plan, progress_bar
    from unlearnbench.benchmarks.harness import RunContext, resolve_device
    from unlearnbench.benchmarks.store import Store
    from unlearnbench.benchmarks.suite import load_suite

    import sys

    console = Console(width=None if sys.stdout.isatty() else 160)
    suite = load_suite(args.suite)
    cells = suite.cells(methods=args.methods, seeds=args.seeds, datasets=args.datasets, requests=args.requests)
    device = resolve_device(args.device)
    ctx = RunContext(results_dir=Path(args.results), data_root=args.data_root or default_data_root(),
                     download=args.download, device=device, cache_dir=args.cache_dir)
    counts = {"ok": 0, "not_applicable": 0, "failed": 0}
    t0 = time.perf_counter()
    with Store(args.results) as store:
        todo = plan(cells, ctx, store, force=args.force, allow_cpu=args.allow_cpu)
        console.print(f"suite [bold]{suite.name}[/]: {len(cells)} cells on {device} — {todo.done} already finished, "
                      f"{len(todo.pending)} to run" + (f", {len(todo.skipped)} skipped" if todo.skipped else ""))
        for cell, why in todo.skipped[:3]:
            console.print(f"  skipped {cell.label}: {why}")
        if len(todo.skipped) > 3:
            console.print(f"  ... and {len(todo.skipped) - 3} more skipped for the same reason(s)")
        executor = get_executor(args.executor, address=args.address) if args.executor == "ray" else get_executor(
            "inprocess")
        with progress_bar(len(todo.pending), enabled=not args.quiet) as update:
            def sink(record, scores) -> None:
                store.write(record, scores)  # the driver is the only writer
                counts[record.status] += 1
                if record.status == "failed":
                    console.print(f"[red]failed[/] {record.dataset}/{record.request}/{record.method}/seed{record.seed}: "
                                  f"{record.reason.splitlines()[0]}")
                update(advance=1)

            executor(todo.pending, ctx, sink, on_start=lambda c: update(description=c.label))
        keys = {c.key(device.type) for c in cells}
        rows = [r.row() for r in store.records(suite=suite.name) if r.cell_key in keys]
    console.print(f"ran {sum(counts.values())} cells in {time.perf_counter() - t0:.1f} s "
                  f"({counts['ok']} ok, {counts['not_applicable']} not applicable, {counts['failed']} failed); "
                  f"results in {args.results}/")
    print_summary(console, rows, list(suite.methods))
    return 1 if counts["failed"] else 0


def print_summary(console: Console, rows: list[dict], method_order: list[str]) -> None:
    from unlearnbench.reports.summary import SUMMARY_COLUMNS, summary_frame

    frame = summary_frame(rows, SUMMARY_COLUMNS, method_order)
    if frame.empty:
        return
    for (dataset, model, request), g in frame.groupby(["dataset", "model", "request"], sort=False):
        table = Table(title=f"{dataset} / {model} / {request}  (mean ± std over seeds)", title_justify="left")
        cols = ["method", "n", *[c for c in SUMMARY_COLUMNS if c in g.columns]]
        for c in cols:
            table.add_column(c, justify="left" if c == "method" else "right")
        for _, row in g.iterrows():
            if row["status"] == "not_applicable":
                table.add_row(row["method"], "—", *(["not applicable"] + [""] * (len(cols) - 3)))
                continue
            table.add_row(*[str(row[c]) for c in cols])
        console.print(table)
