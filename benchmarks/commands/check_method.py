"""``unlearnbench check-method NAME``: run the method contract on a tiny cell, one line per check.

The checks (``benchmarks/checks.py``) are the ones ``tests/test_contract.py`` runs on every built-in
method; a plug-in author runs them on a new method before benchmarking it. Exit status: 0 when no check
fails (skips included), 1 when one does (the last line names every failing check), 2 for bad input
(an unknown method or check).
"""

from __future__ import annotations

import argparse
import sys
import time


def add_parser(sub) -> None:
    from unlearnbench.benchmarks.validate import csv_arg, device_arg, seed_text

    p = sub.add_parser("check-method", help="check a registered method (built-in or plug-in) against the contract",
                       description="Run the method contract -- interface kept, original and inputs untouched, budget "
                                   "respected, deterministic under a seed (unless tagged nondeterministic), no NaN, no "
                                   "access to test data or the retrain reference, no global side effects -- on a tiny "
                                   "synthetic cell (seconds on a CPU). One line per check; exit 1 if any fails.")
    p.add_argument("methods", metavar="NAME", nargs="*",
                   help="registered method(s) (`unlearnbench list methods`); several share one set of cells")
    p.add_argument("--all", action="store_true", help="check every registered method (built-ins and plug-ins)")
    p.add_argument("--checks", type=csv_arg("--checks", what="check names"), default=None,
                   help="comma-separated subset of the checks (default: all; --list-checks shows them)")
    p.add_argument("--list-checks", action="store_true", help="list the checks and exit")
    p.add_argument("--model", default="mlp", help="architecture of the tiny cell (default: mlp)")
    p.add_argument("--device", type=device_arg, default="cpu",
                   help="cpu (default; determinism is checked there) | cuda | cuda:N | auto")
    p.add_argument("--seed", type=seed_text, default=0, help="the cell's seed (default: 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unlearnbench.benchmarks.checks import CHECKS, ContractCells, check_method, check_names, failed, summary
    from unlearnbench.benchmarks.validate import InputError
    from unlearnbench.methods import method_class
    from unlearnbench.methods.models import MODELS

    if args.list_checks:
        for c in CHECKS.values():
            opt = f" (skipped when tagged {c.opt_out_tag})" if c.opt_out_tag else ""
            print(f"{c.name:28s} {c.doc}{opt}")
        return 0
    from unlearnbench.methods import method_names

    if args.all and args.methods:
        raise InputError("check-method: give method names or --all, not both")
    if not args.all and not args.methods:
        raise InputError("check-method: name a method (e.g. `unlearnbench check-method finetune`), or pass --all")
    names = method_names() if args.all else list(dict.fromkeys(args.methods))
    classes = {n: method_class(n) for n in names}  # MethodError (exit 2) with close matches
    checks = check_names(args.checks)
    if args.model not in MODELS:
        from unlearnbench.benchmarks.validate import close_matches

        raise InputError(f"--model: unknown model {args.model!r}.{close_matches(args.model, MODELS)} Known models: "
                         f"{', '.join(sorted(MODELS))}")
    bad: dict[str, list[str]] = {}
    with ContractCells(model=args.model, device=args.device, seed=args.seed) as cells:
        for i, name in enumerate(names):
            t0 = time.perf_counter()
            if i:
                print()
            print(f"check-method {name} ({classes[name].origin}) on {cells.describe()}", flush=True)
            results = []
            for res in check_method(name, cells, checks):
                results.append(res)
                print(res.line(), flush=True)
            print(summary(results, time.perf_counter() - t0), file=sys.stderr if failed(results) else sys.stdout,
                  flush=True)
            if failed(results):
                bad[name] = failed(results)
    if len(names) > 1:
        print(f"\n{len(names) - len(bad)} of {len(names)} methods pass"
              + (": FAILED " + "; ".join(f"{n} ({', '.join(c)})" for n, c in bad.items()) if bad else ""),
              file=sys.stderr if bad else sys.stdout)
    return 1 if bad else 0
