"""Shared by the report commands (leaderboard, reproduce, figures): open the store, resolve the suite,
read its records, and hand the pure functions in ``reports/`` the declarations of the stored values and the
reference methods."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Iterable

from unlearnbench.benchmarks.store import RunRecord, Store, StoreError, open_store
from unlearnbench.benchmarks.suite import Suite, SuiteError, load_suite


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", default=None,
                   help="suite name (as stored in the results) or path to its .toml; the suite file, when it exists, "
                        "supplies the primary score, method order and tolerances (default: the only suite in the "
                        "results)")
    p.add_argument("--results", default="results", help="results folder (default: ./results)")


@dataclass
class Selection:
    store: Store
    name: str
    suite: Suite | None  # the suite file, when one resolves (built-in name or path)
    records: list[RunRecord]


def _try_suite(name_or_path: str, explicit: bool) -> Suite | None:
    try:
        return load_suite(name_or_path)
    except SuiteError:
        if explicit and (name_or_path.endswith(".toml") or "/" in name_or_path):
            raise
        return None


def select(args: argparse.Namespace, all_suites_ok: bool = False) -> list[Selection]:
    """The suites to report on and their newest records; raises StoreError when there is nothing."""
    store = open_store(args.results, must_exist=True)
    stored = store.suites()
    if not stored:
        raise StoreError(f"no runs in {args.results} yet. Run a suite first, e.g. `unlearnbench run --results "
                         f"{args.results}`.")
    if args.suite:
        suite = _try_suite(args.suite, explicit=True)
        name = suite.name if suite else args.suite
        if name not in stored:
            raise StoreError(f"no results for suite {name!r} in {args.results}; it holds: {', '.join(stored)}")
        names = [name]
    elif len(stored) == 1 or all_suites_ok:
        names = stored
    else:
        raise StoreError(f"{args.results} holds results of several suites ({', '.join(stored)}); pick one with --suite")
    out = []
    for name in names:
        suite = _try_suite(args.suite, explicit=True) if args.suite else _try_suite(name, explicit=False)
        if suite is not None and suite.name != name:
            suite = None
        out.append(Selection(store, name, suite, store.records(suite=name)))
    return out


def declarations(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The declaration (:class:`unlearnbench.attacks.ValueSpec`) of every value name in ``rows``, in the order
    the values were declared (metric groups, then derived values, then gaps, families and method diagnostics
    by name); a name nothing declares is left out (reports show it as an undeclared score)."""
    from unlearnbench.attacks import declaration, list_metrics
    from unlearnbench.attacks.base import derived_values

    skip = {"cell_key", "suite", "dataset", "model", "request", "method", "seed", "status", "config_hash", "reason",
            "run_id", "scores_file", "created_at", "config", "hashes", "env"}
    names = {k for r in rows for k in r if k not in skip}
    out: dict[str, Any] = {}
    for info in list_metrics():
        for v in info.values:
            if v.name in names:
                out[v.name] = v
    for d in derived_values():
        if d.spec.name in names:
            out[d.spec.name] = d.spec
    for n in sorted(names - set(out)):
        spec = declaration(n)
        if spec is not None:
            out[n] = spec
    return out


def reference_methods() -> list[str]:
    """The registered methods tagged ``reference`` (shown in reports, never ranked)."""
    from unlearnbench.methods import method_class, method_names

    return [m for m in method_names() if "reference" in method_class(m).tags]
