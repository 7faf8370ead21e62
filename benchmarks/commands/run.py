"""``unlearnbench run``: run a suite's cells (skipping finished ones) and print a summary table."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from unlearnbench.benchmarks.validate import csv_arg, device_arg, seed_text


def add_data_and_device_args(p: argparse.ArgumentParser) -> None:
    """Where a command that trains reads data, writes results and models, and computes (run, tune)."""
    p.add_argument("--data-root", default=None,
                   help="folder with dataset files (env UNLEARNBENCH_DATA_ROOT); e.g. ../shared/data")
    p.add_argument("--download", action="store_true", help="let torchvision download missing datasets")
    p.add_argument("--results", default="results", help="results folder (default: ./results)")
    p.add_argument("--cache-dir", default=None, help="model cache (default: <results>/cache/models)")
    p.add_argument("--device", type=device_arg, default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run a suite (default: the embedded digits suite)",
                       description="Run every pending cell of a suite; finished cells are skipped (--force redoes "
                                   "them). Results go to the SQLite store in --results.")
    p.add_argument("--suite", default="default", help="built-in suite name or path to a .toml file (default: default)")
    p.add_argument("--methods", type=csv_arg("--methods", what="method names"), default=None,
                   help="comma-separated subset of the suite's methods")
    p.add_argument("--seeds", type=csv_arg("--seeds", kind=seed_text, what="integer seeds"), default=None,
                   help="comma-separated seeds overriding the suite's")
    p.add_argument("--datasets", type=csv_arg("--datasets", what="dataset names"), default=None,
                   help="comma-separated subset of the suite's datasets")
    p.add_argument("--requests", type=csv_arg("--requests", what="request labels"), default=None,
                   help="comma-separated subset of the suite's requests, by label (e.g. random-10%%,class-3)")
    add_data_and_device_args(p)
    p.add_argument("--executor", default="inprocess", choices=("inprocess", "ray"), help="where cells run")
    p.add_argument("--address", default=None, help="Ray cluster address (with --executor ray)")
    p.add_argument("--force", action="store_true", help="re-run finished cells (results are appended)")
    p.add_argument("--wait-lock", action="store_true",
                   help="when another run writes to --results, wait for it instead of exiting")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--tuned", default=None, metavar="FILE",
                   help="apply a tuned overlay written by `unlearnbench tune`: the cells it names run with the tuned "
                        "values (recorded as params_source = tuned, with the study; stored beside untuned records)")
    p.add_argument("--allow-cpu", action="store_true",
                   help="also run datasets the suite marks requires = \"cuda\" when no GPU is used (slow)")
    p.add_argument("--retime-reference", action="store_true",
                   help="time every retrain reference again in this run, so speedup_vs_retrain divides two times "
                        "measured under the same load (default: re-time only references whose cached time was "
                        "measured on another device or library version)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unlearnbench.benchmarks.cli import data_root
    from unlearnbench.benchmarks.executors import get_executor, plan, preflight, progress_bar
    from unlearnbench.benchmarks.harness import RunContext, resolve_device
    from unlearnbench.benchmarks.lock import results_lock
    from unlearnbench.benchmarks.store import Store
    from unlearnbench.benchmarks.suite import load_suite
    from unlearnbench.benchmarks.validate import cpu_threads, folder_arg

    import sys

    # every input is checked before any work: environment, folders, suite, selection, device, executor
    cpu_threads()
    results = folder_arg(args.results, "--results")
    cache_dir = folder_arg(args.cache_dir, "--cache-dir") if args.cache_dir is not None else None
    root = data_root(args)
    console = Console(width=None if sys.stdout.isatty() else 160)
    suite = load_suite(args.suite)
    cells = suite.cells(methods=args.methods, seeds=args.seeds, datasets=args.datasets, requests=args.requests)
    if args.tuned:
        from unlearnbench.benchmarks.suite import apply_tuned
        from unlearnbench.benchmarks.tune import load_overlay

        cells = apply_tuned(cells, load_overlay(args.tuned, suite))
    device = resolve_device(args.device)
    executor = get_executor(args.executor, address=args.address) if args.executor == "ray" else get_executor(
        "inprocess")
    results.mkdir(parents=True, exist_ok=True)
    counts = {"ok": 0, "not_applicable": 0, "failed": 0}
    t0 = time.perf_counter()
    with results_lock(results, wait=args.wait_lock), Store(results) as store:
        ctx = RunContext(results_dir=results, data_root=root, download=args.download, device=device,
                         cache_dir=cache_dir, retime_reference=args.retime_reference)
        stale = store.clean_stale() + ctx.cache.clean_stale()  # what a killed run left; we hold the lock
        if stale:
            console.print(f"removed {len(stale)} temporary file(s) left by an interrupted run")
        todo = plan(cells, ctx, store, force=args.force, allow_cpu=args.allow_cpu)
        preflight(todo.pending, ctx)  # data files, labels, requests and models of every pending cell
        console.print(f"suite [bold]{suite.name}[/]: {len(cells)} cells on {device} — {todo.done} already finished, "
                      f"{len(todo.pending)} to run" + (f", {len(todo.skipped)} skipped" if todo.skipped else ""))
        for cell, why in todo.skipped[:3]:
            console.print(f"  skipped {cell.label}: {why}")
        if len(todo.skipped) > 3:
            console.print(f"  ... and {len(todo.skipped) - 3} more skipped for the same reason(s)")
        with progress_bar(len(todo.pending), enabled=not args.quiet) as update:
            def sink(record, scores) -> None:
                store.write(record, scores)  # the driver is the only writer
                counts[record.status] += 1
                if record.status == "failed":
                    console.print(f"[red]failed[/] {record.dataset}/{record.request}/{record.method}/seed{record.seed}: "
                                  f"{record.reason.splitlines()[0]}")
                update(advance=1)

            executor(todo.pending, ctx, sink, on_start=lambda c: update(description=c.label))
        keys = {c.key(device.type, ctx.cpu_threads) for c in cells}
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
