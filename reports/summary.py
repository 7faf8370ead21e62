"""The end-of-run summary: mean ± std over seeds per (dataset, model, request, method).

A pure function of run rows (dicts as the store's ``RunRecord.row()`` gives them); it imports
nothing from ``benchmarks``.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import pandas as pd

SUMMARY_COLUMNS = ("forget_acc", "retain_acc", "test_acc", "mia.loss_auc", "mia.svc_efficacy", "avg_gap", "time_s")
GROUP = ["dataset", "model", "request", "method"]


def summary_frame(rows: Iterable[dict[str, Any]], columns: Iterable[str] = SUMMARY_COLUMNS,
                  method_order: list[str] | None = None) -> pd.DataFrame:
    """One row per group with ``<col>`` as "mean ± std" strings, plus ``n`` (seeds) and ``status``."""
    df = pd.DataFrame(list(rows))
    if df.empty:
        return df
    columns = [c for c in columns if c in df.columns]
    out = []
    for key, g in df.groupby(GROUP, sort=False):
        ok = g[g["status"] == "ok"]
        row = dict(zip(GROUP, key))
        row["n"] = len(ok)
        statuses = sorted(set(g["status"]))
        row["status"] = "ok" if statuses == ["ok"] else ",".join(statuses)
        for c in columns:
            vals = pd.to_numeric(ok[c], errors="coerce").dropna() if c in ok else pd.Series(dtype=float)
            row[c] = format_mean_std(vals.tolist())
        out.append(row)
    frame = pd.DataFrame(out)
    if method_order:
        order = {m: i for i, m in enumerate(method_order)}
        frame["_o"] = frame["method"].map(lambda m: order.get(m, len(order)))
        frame = frame.sort_values(["dataset", "model", "request", "_o"], kind="stable").drop(columns="_o")
    return frame.reset_index(drop=True)


def format_mean_std(values: list[float], digits: int = 3) -> str:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return "—"
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return f"{mean:.{digits}f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    return f"{mean:.{digits}f}±{std:.{digits}f}"
