"""``unlearnbench export``: a suite's newest run records as JSON (configs, hashes, environment, metrics;
no per-example scores), so that a published leaderboard can be rebuilt from a committed file with
``unlearnbench leaderboard --records FILE``."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

from ._results import add_common, select

FORMAT = "unlearnbench-records/1"


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a suite's run records as JSON (for published leaderboards)",
                       description="Write the newest record of every cell of a suite as JSON: identity, config, "
                                   "hashes, environment and metrics (NaN as null). Per-example scores stay in the "
                                   "store's .npz files.")
    add_common(p)
    p.add_argument("--out", required=True, help="JSON file to write")
    p.set_defaults(func=run)


def _clean(v):
    return None if isinstance(v, float) and math.isnan(v) else v


_TRACE_FILE = re.compile(r'File "([^"]+)"')


def portable_reason(text: str) -> str:
    """A failure reason with the traceback's file paths made machine-independent: a file of this package
    becomes ``unlearnbench/<path in the package>``, one in an installed package ``<site-packages>/...``,
    any other just its name (a published record must not carry the paths of the machine that ran it)."""
    root = Path(__file__).resolve().parents[2]

    def short(m: re.Match) -> str:
        path = m.group(1)
        try:
            rel = Path(path).resolve().relative_to(root)
            return f'File "unlearnbench/{rel.as_posix()}"'
        except (ValueError, OSError):
            pass
        if "site-packages/" in path:
            return f'File "<site-packages>/{path.split("site-packages/", 1)[1]}"'
        return f'File "{Path(path).name}"'

    return _TRACE_FILE.sub(short, text)


def run(args: argparse.Namespace) -> int:
    (sel,) = select(args)
    rows = [{k: portable_reason(v) if k == "reason" and isinstance(v, str) else _clean(v)
             for k, v in r.row().items() if k != "scores_file"} for r in sel.records]
    rows.sort(key=lambda r: (r["dataset"], r["model"], r["request"], r["method"], r["seed"], r["cell_key"]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"format": FORMAT, "suite": sel.name, "rows": rows}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out} ({len(rows)} records of suite {sel.name})", file=sys.stderr)
    return 0


def load_rows(path: str) -> tuple[str, list[dict]]:
    """(suite name, rows) of an exported file; null metrics read back as NaN."""
    data = json.loads(Path(path).read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path} is not an `unlearnbench export` file (format {data.get('format')!r})")
    rows = [{k: (float("nan") if v is None and k not in ("reason",) else v) for k, v in r.items()}
            for r in data["rows"]]
    return data["suite"], rows
