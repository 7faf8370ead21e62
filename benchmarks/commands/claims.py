"""``unlearnbench claims``: the seed papers' claims checked against stored results (``reports/claims.py``).

Reads a results folder (``--results``, ``--suite``) or ``unlearnbench export`` files (``--records``), like
``unlearnbench leaderboard``, and prints (or writes) every claim of PRUNE, prediction-distribution
fine-tuning and weight perturbation with the cells it was checked on, the numbers against retrain, a verdict
and the rule used for it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._results import add_common, select


def add_parser(sub) -> None:
    p = sub.add_parser(
        "claims", help="check the seed papers' claims against stored results",
        description="For each claim of the seed papers (PRUNE: certified forgetting, class-level unlearning, "
                    "lightweight storage, efficiency, resistance to membership inference; prediction-distribution "
                    "fine-tuning: backdoors, classes, subsets, no storage, fast; weight perturbation: 15x faster "
                    "than retraining, removes the forget data's contribution): the cells it was checked on, the "
                    "numbers against retrain, 'holds' / 'does not hold' / 'not measured here', and the rule used.")
    add_common(p)
    p.add_argument("--records", nargs="+", default=None, metavar="FILE",
                   help="read the records from one or more `unlearnbench export` JSON files instead of --results "
                        "(e.g. the seeds suite's and the backdoor suite's: every claim is checked on all of them)")
    p.add_argument("--out", default=None, help="write Markdown to this file (default: standard output)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unlearnbench.attacks import declaration
    from unlearnbench.reports.claims import claims, render

    if args.records:
        from .export import load_rows

        rows, names, parts = [], [], []
        for path in args.records:
            suite, these = load_rows(path)
            rows += these
            names.append(suite)
            parts.append(f"`{Path(path).name}` (suite {suite}, {len(these)} records)")
        name = " + ".join(dict.fromkeys(names))
        source = "Records: " + "; ".join(parts) + "."
    else:
        (sel,) = select(args)
        name, rows = sel.name, [r.row() for r in sel.records]
        source = f"Records: suite {name} in the results folder ({len(rows)} records)."
    text = render(claims(rows, declaration), title=f"Claims of the seed papers: suite {name}", source=source)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
