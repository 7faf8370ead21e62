"""``unlearnbench leaderboard``: the leaderboard of a suite's stored results (Markdown, HTML, CSV, LaTeX).

The table is a pure function of the stored records (``reports/leaderboard.py``): the same records
give byte-identical output except the one ``Generated:`` line (``--generated-at`` fixes it too).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

from ._results import add_common, declarations, reference_methods, select

SUFFIX_FORMAT = {".md": "md", ".markdown": "md", ".html": "html", ".htm": "html", ".csv": "csv", ".tex": "tex"}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "leaderboard", help="build the leaderboard of stored results (md, html, csv, tex)",
        description="Per (dataset, model, request, device): methods x values, each cell mean ± 95%% CI over seeds "
                    "(Student t) with n, placed by each value's declaration (score, gap, cost, diagnostic); the "
                    "reference rows (original, retrain) first and never ranked; the methods ranked by the suite's "
                    "primary score (default avg_gap) in its declared direction, with the methods that cannot be told "
                    "apart from the best marked (paired t-test over seeds, Holm); mean ranks across cells (Friedman, "
                    "Nemenyi); paper-reported numbers where a cell matches (reports/anchors.py); the provenance of the "
                    "runs. Definitions: docs/metrics.md. Deterministic: the same records give the same bytes except "
                    "the 'Generated:' line.")
    add_common(p)
    p.add_argument("--format", choices=("md", "html", "csv", "tex"), default=None,
                   help="output format (default: from --out's suffix, else md)")
    p.add_argument("--out", default=None, help="write to this file (default: standard output)")
    p.add_argument("--primary", default=None, help="rank by this metric instead of the suite's primary score")
    p.add_argument("--higher-is-better", action="store_true", default=None,
                   help="rank high values of the primary score first, overriding its declared direction (needed only "
                        "for a value nothing declares, or to reverse a declaration deliberately)")
    p.add_argument("--records", default=None,
                   help="read the records from an `unlearnbench export` JSON file instead of --results")
    p.add_argument("--generated-at", default=None,
                   help="text of the 'Generated:' line (default: the current UTC time)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unlearnbench.reports.leaderboard import build, render

    if args.out is not None:
        from unlearnbench.benchmarks.validate import out_file_arg

        out_file_arg(args.out)
    fmt = args.format or (SUFFIX_FORMAT.get(Path(args.out).suffix.lower(), "md") if args.out else "md")
    if args.records:
        from unlearnbench.benchmarks.suite import SuiteError, load_suite

        from .export import load_rows

        name, rows = load_rows(args.records)
        try:
            suite = load_suite(args.suite or name)
        except SuiteError:
            suite = None
    else:
        (sel,) = select(args)
        name, rows, suite = sel.name, [r.row() for r in sel.records], sel.suite
    primary = args.primary or (suite.primary if suite else "avg_gap")
    from unlearnbench.benchmarks.validate import stored_value_name

    stored_value_name(primary, rows, "--primary" if args.primary else "the suite's primary score")
    when = args.generated_at or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    lb = build(rows, primary=primary, higher_is_better=args.higher_is_better, specs=declarations(rows),
               references=reference_methods(), method_order=list(suite.methods) if suite else None,
               generated_at=when, title=f"Leaderboard: suite {name}")
    text = render(lb, fmt)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8", newline="")
        print(f"wrote {out} ({fmt}, {len(lb.groups)} table group(s), {len(rows)} runs)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
