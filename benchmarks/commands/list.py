"""``unlearnbench list methods|models|datasets|requests|metrics|suites``: what is registered."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

WHAT = ("methods", "models", "datasets", "requests", "metrics", "suites")


def add_parser(sub) -> None:
    p = sub.add_parser("list", help="list registered methods, models, datasets, requests, metrics or suites")
    p.add_argument("what", choices=WHAT)
    p.add_argument("--verbose", "-v", action="store_true", help="methods: show every hyperparameter")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    console = Console()
    table = Table(show_lines=args.what == "methods" and args.verbose)
    if args.what == "methods":
        from unlearnbench.methods import describe, method_class, method_names

        # --verbose keeps the hyperparameters column wide: the origin goes under the name instead
        cols = ("method", "tags", "summary", "hyperparameters") if args.verbose else ("method", "from", "tags", "summary")
        for c in cols:
            table.add_column(c)
        for name in method_names():
            cls = method_class(name)
            row = ([f"{name}\n({cls.origin})"] if args.verbose else [name, cls.origin]) + \
                [", ".join(sorted(cls.tags)), cls.summary]
            if args.verbose:
                row.append("\n".join(f"{f} ({t}) = {d!r}: {doc}" + (f" [search {rng}]" if rng else "")
                                      for f, t, d, doc, rng in describe(cls)))
            table.add_row(*row)
    elif args.what == "models":
        from unlearnbench.methods.models import MODELS

        for c in ("model", "from", "description"):
            table.add_column(c)
        for name in sorted(MODELS):
            doc = (MODELS[name].__doc__ or "").strip().splitlines()
            table.add_row(name, MODELS.origins.get(name, ""), doc[0] if doc else "")
    elif args.what == "datasets":
        from unlearnbench.datasets import list_sources

        for c in ("dataset", "files", "held-out", "description"):
            table.add_column(c)
        for s in list_sources():
            table.add_row(s.name, "--data-root" if s.needs_files else "embedded", str(s.default_heldout), s.description)
    elif args.what == "requests":
        from unlearnbench.attacks import load_all
        from unlearnbench.datasets import list_requests

        load_all()  # attack modules register request kinds too (backdoor)
        for c in ("request", "parameters", "description"):
            table.add_column(c)
        for r in list_requests():
            table.add_row(r.name, ", ".join(r.params), r.description)
    elif args.what == "metrics":
        from unlearnbench.attacks import list_metrics

        for c in ("metric group", "produces", "description"):
            table.add_column(c)
        for m in list_metrics():
            table.add_row(m.name, ", ".join(m.produces), m.description)
    else:
        from unlearnbench.benchmarks.suite import list_suites, load_suite

        for c in ("suite", "datasets", "requests", "methods", "seeds", "description"):
            table.add_column(c)
        for path in list_suites():
            s = load_suite(str(path))
            table.add_row(s.name, ", ".join(d.spec.display for d in s.datasets), ", ".join(r.label for r in s.requests),
                          str(len(s.methods)), str(len(s.seeds)), s.description)
    console.print(table)
    if args.what == "methods":
        console.print("from: built-in, or the plug-in distribution that registered it (docs/methods.md describes "
                      "the built-ins; `unlearnbench check-method NAME` checks any of them)", highlight=False,
                      soft_wrap=True)
    from unlearnbench import plugins

    skipped = plugins.problems()  # each was reported on stderr (why, and the fix) when it was skipped
    if skipped:
        console.print("skipped plug-in(s), see the warnings above: "
                      + "; ".join(f"{p.distribution} ({p.group})" for p in skipped), highlight=False, soft_wrap=True)
    return 0
