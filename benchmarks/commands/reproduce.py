"""``unlearnbench reproduce``: re-run stored cells from their recorded configs and compare every metric
with the stored value within per-metric tolerances; exit 1 on any mismatch, naming cell and metric.

Each stored record's ``config`` is rebuilt into a :class:`~unlearnbench.benchmarks.suite.CellSpec`
(``CellSpec.from_config``; its key must equal the stored cell key) and run by the same harness, on
the device type the record was made on, with a fresh temporary model cache (``--reuse-cache`` loads
the stored original/retrain models instead), the recorded CPU thread count, and nothing written to
the store. What differences to expect on CPU, on CUDA and across devices: ``reports/reproduce.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HELP_EPILOG = """\
--cells FILTER (repeatable; a cell is re-run if it matches any): comma-separated terms that must all
hold. key=glob matches a field (keys: suite, dataset, model, request, method, seed, status, device;
'|' separates alternatives); a term without '=' is a glob on the cell label
dataset/model/request/method/seedN. Examples:
  --cells method=retrain,dataset=digits    --cells 'method=original|retrain,seed=0'
  --cells 'digits/mlp/class-3/*/seed1'

Tolerances (absolute): --tolerance FILE (TOML, 'name-or-glob = tol', top level or under [tolerances])
over the suite's [tolerances] table over built-ins (timing and memory, inf = not compared: time_s,
speedup_vs_retrain, peak_mem_mib, *_s, *seconds, cell.*); 'default' covers the rest (1e-6 if unset).

Expected differences: on the CPU (fp32, deterministic algorithms, the recorded thread count, same CPU
type) a re-run is bit-exact, so any difference is a bug or a code change. On CUDA it is not, even on
the same GPU: bf16 autocast, TF32 and cudnn.benchmark (which may choose other convolution algorithms
per process) and atomic-add kernels change low-order bits that compound over training; use
statistical tolerances there. Across devices (CPU vs GPU, another GPU model) only statistical
agreement is meaningful. Timing and memory are never compared.
"""


from unlearnbench.benchmarks.validate import device_arg, positive_int_arg


def add_parser(sub) -> None:
    p = sub.add_parser("reproduce", help="re-run stored cells and compare every metric within tolerances",
                       description="Re-run stored runs from their recorded configs (fresh model cache, same device, "
                                   "store untouched) and compare each metric with the stored value. Exit status 1 on "
                                   "any mismatch, 2 on a usage error.",
                       epilog=HELP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from ._results import add_common

    add_common(p)
    p.add_argument("--cells", action="append", default=None, metavar="FILTER",
                   help="which stored cells to re-run (see below; default: all)")
    p.add_argument("--tolerance", default=None, metavar="FILE", help="TOML file of per-metric tolerances")
    p.add_argument("--device", type=device_arg, default=None,
                   help="re-run on this device (cpu | cuda | cuda:N) instead of the recorded device type")
    p.add_argument("--reuse-cache", action="store_true",
                   help="load original/retrain models from the model cache instead of retraining them")
    p.add_argument("--cache-dir", default=None, help="with --reuse-cache: the cache (default: <results>/cache/models)")
    p.add_argument("--threads", type=positive_int_arg("--threads"), default=None,
                   help="CPU threads for the re-run (default: the count the record states)")
    p.add_argument("--data-root", default=None, help="folder with dataset files (env UNLEARNBENCH_DATA_ROOT)")
    p.add_argument("--show", choices=("mismatches", "all"), default="mismatches",
                   help="rows of the diff table (default: mismatches only)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from unlearnbench.benchmarks.cli import data_root, user_errors
    from unlearnbench.benchmarks.env import device_name, git_state
    from unlearnbench.benchmarks.executors import progress_bar
    from unlearnbench.benchmarks.harness import RunContext, resolve_device, run_cell
    from unlearnbench.benchmarks.suite import CellSpec
    from unlearnbench.reports.reproduce import (Diff, ReproduceError, Tolerances, cell_label, compare, diff_table,
                                                load_tolerance_file, select_rows, summary)

    from ._results import select

    def fail(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 2

    try:
        file_tol = load_tolerance_file(Path(args.tolerance).read_text(), args.tolerance) if args.tolerance else {}
    except OSError as exc:
        return fail(f"cannot read --tolerance file: {exc}")
    except ReproduceError as exc:
        return fail(str(exc))
    root = data_root(args)
    sels = select(args, all_suites_ok=True)
    jobs = []  # (selection, record)
    for sel in sels:
        by_id = {r.run_id: r for r in sel.records}
        try:
            rows = select_rows([r.row() for r in sel.records], args.cells)
        except ReproduceError as exc:
            return fail(str(exc))
        jobs += [(sel, by_id[row["run_id"]]) for row in rows]
    if not jobs:
        return fail(f"no stored cells match --cells {' '.join(args.cells or [])!r} in {args.results}")

    # the device of each record: as recorded, unless --device; a missing device is an error before any work
    devices = {}
    for sel, rec in jobs:
        want = args.device or str(rec.env.get("device_type", "cpu"))
        if want not in devices:
            try:
                devices[want] = resolve_device(want)
            except (RuntimeError, ValueError) as exc:
                return fail(f"{cell_label(rec.row())} was recorded on {want!r} "
                            f"({rec.env.get('device_name', '?')}), which is not available here ({exc}). Re-run on a "
                            "machine with that device, or pass --device cpu with a loose --tolerance file "
                            "(results differ across devices; see `unlearnbench reproduce --help`).")

    commit, dirty = git_state()
    stored_commits = sorted({(str(rec.env.get("git_commit")), rec.env.get("git_dirty")) for _, rec in jobs})
    if any(c != commit or d for c, d in stored_commits) or dirty:
        shown = ", ".join(f"{c[:12]}{' (dirty)' if d else ''}" for c, d in stored_commits)
        print(f"note: stored runs come from commit {shown}; this checkout is {commit[:12]}"
              f"{' (dirty)' if dirty else ''}: a mismatch may come from a code change", file=sys.stderr)

    diffs = []
    warned_threads = False
    tmp = tempfile.TemporaryDirectory(prefix="unlearnbench-reproduce-")
    try:
        contexts: dict[tuple[str, int | None], RunContext] = {}
        jobs.sort(key=lambda j: (j[1].dataset, j[1].model, j[1].seed, j[1].request, j[1].method))
        with progress_bar(len(jobs), enabled=sys.stderr.isatty()) as update:
            for sel, rec in jobs:
                label = cell_label(rec.row())
                update(description=label)
                want = args.device or str(rec.env.get("device_type", "cpu"))
                device = devices[want]
                threads = None
                if device.type == "cpu":
                    recorded = rec.env.get("cpu_threads")
                    threads = int(args.threads or recorded or torch.get_num_threads())
                    if recorded and threads != int(recorded) and not warned_threads:
                        print(f"note: re-running with {threads} CPU threads, recorded with {recorded}: CPU results "
                              "depend on the thread count", file=sys.stderr)
                        warned_threads = True
                if (want, threads) not in contexts:
                    if args.reuse_cache:  # the stored models; never written to (the folder may be read-only)
                        cache = Path(args.cache_dir or Path(args.results) / "cache" / "models")
                        readonly = True
                    else:
                        cache, readonly = Path(tmp.name) / "cache" / want, False
                    contexts[(want, threads)] = RunContext(results_dir=Path(tmp.name), device=device, cache_dir=cache,
                                                           cache_readonly=readonly, cpu_threads=threads,
                                                           data_root=root)
                ctx = contexts[(want, threads)]
                if threads is not None:
                    torch.set_num_threads(threads)
                recorded_name = rec.env.get("device_name")
                if device.type == rec.env.get("device_type") and recorded_name and recorded_name != device_name(device):
                    print(f"note: {label} was recorded on {recorded_name}, re-run on {device_name(device)}",
                          file=sys.stderr)
                tolerances = Tolerances.merge(sel.suite.tolerances if sel.suite else {}, file_tol,
                                              not_reproducible=_not_reproducible(rec.metrics))
                try:  # a config that no longer builds (e.g. a method since renamed) is this cell's mismatch
                    cell = CellSpec.from_config(rec.config, rec.suite)
                    dtype = str(rec.env.get("device_type", device.type))
                    rec_threads = rec.env.get("cpu_threads") if dtype == "cpu" else None
                    key = cell.key(dtype, rec_threads if isinstance(rec_threads, int) else None)
                    if key != rec.cell_key and cell.key(dtype) == rec.cell_key:
                        key = rec.cell_key  # stored before the thread count entered CPU cell keys
                except (*user_errors(), KeyError, TypeError) as exc:
                    diffs.append(Diff(label, "config", "stored config", f"cannot rebuild the cell: {exc}", 0.0,
                                      "mismatch"))
                    update(advance=1)
                    continue
                if key != rec.cell_key:  # the stored config does not determine the stored cell: not a re-run
                    diffs.append(Diff(label, "config", f"cell_key {rec.cell_key}", f"cell_key {key}", 0.0,
                                      "mismatch"))
                    update(advance=1)
                    continue
                new, _ = run_cell(cell, ctx)
                diffs += compare(label, rec.row(), new.row(), tolerances)
                update(advance=1)
    finally:
        tmp.cleanup()
    table = diff_table(diffs, args.show)
    if table:
        print(table, end="")
    text, passed = summary(diffs)
    print(text)
    return 0 if passed else 1


def _not_reproducible(names) -> list[str]:
    """The stored names whose declaration says a re-run cannot give them again (attacks' ``reproducible``)."""
    from unlearnbench.attacks import declaration

    return [n for n in names if (spec := declaration(n)) is not None and not spec.reproducible]
