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
    from unlearnbench.benchmarks.validate import out_file_arg

    out = out_file_arg(args.out)
    (sel,) = select(args)
    rows = [{k: portable_reason(v) if k == "reason" and isinstance(v, str) else _clean(v)
             for k, v in r.row().items() if k != "scores_file"} for r in sel.records]
    rows.sort(key=lambda r: (r["dataset"], r["model"], r["request"], r["method"], r["seed"], r["cell_key"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"format": FORMAT, "suite": sel.name, "rows": rows}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out} ({len(rows)} records of suite {sel.name})", file=sys.stderr)
    return 0


def load_rows(path: str) -> tuple[str, list[dict]]:
    """(suite name, rows) of an exported file; null metrics read back as NaN. A file that is not one is an
    InputError naming it (``--records``)."""
    from unlearnbench.benchmarks.validate import InputError

    p = Path(path)
    if not p.is_file():
        raise InputError(f"--records {path}: {'is a folder, not a file' if p.is_dir() else 'no such file'}: name "
                         "a JSON file written by `unlearnbench export`")
    try:
        data = json.loads(p.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"--records {path} is not valid JSON ({exc}): name a file written by `unlearnbench export`"
                         ) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        fmt = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise InputError(f"--records {path} is not an `unlearnbench export` file (format {fmt!r}, want {FORMAT!r})")
    need = ("run_id", "cell_key", "suite", "dataset", "model", "request", "method", "seed", "status")
    rows_in = data.get("rows")
    if not isinstance(data.get("suite"), str) or not isinstance(rows_in, list) or not all(
            isinstance(r, dict) and all(k in r for k in need) for r in rows_in):
        raise InputError(f"--records {path} is damaged: it needs a suite name and rows with {', '.join(need)}; "
                         "export it again")
    rows = [{k: (float("nan") if v is None and k not in ("reason",) else v) for k, v in r.items()}
            for r in rows_in]
    return data["suite"], rows
