"""Closeness to the reference: ``gap.<m>`` for every declared value with a retrain counterpart, and the
derived ``avg_gap`` (docs/metrics.md, "Closeness to the reference").

``gap.m = |m(θ_u) − m(θ_r)|`` on the same cell (same seed, same evaluation samples); ``avg_gap`` is
the mean of the gaps of forget, retain and test accuracy and ``mia.svc_efficacy`` (SalUn's "Avg.
Gap"), NaN when one of them is missing.
"""

from __future__ import annotations

import math

import numpy as np

from .base import declaration, derived_values, register_derived, value

AVG_GAP_OF = ("forget_acc", "retain_acc", "test_acc", "mia.svc_efficacy")


@register_derived(value("avg_gap", "gap", "lower", "fraction", "mean of gap.forget_acc, gap.retain_acc, "
                        "gap.test_acc and gap.mia.svc_efficacy (SalUn's Avg. Gap); the default primary score",
                        gap=False), needs=tuple(f"gap.{k}" for k in AVG_GAP_OF))
def avg_gap(values: dict[str, float]) -> float:
    parts = [values.get(f"gap.{k}", float("nan")) for k in AVG_GAP_OF]
    return float(np.mean(parts)) if not any(math.isnan(p) for p in parts) else float("nan")


def gaps(values: dict[str, float], ref: dict[str, float]) -> dict[str, float]:
    """``gap.m`` for every value both have whose declaration has a retrain counterpart, then every
    registered derived value."""
    out = {}
    for k in sorted(values):
        spec = declaration(k)
        if k in ref and spec is not None and spec.gap:
            out[f"gap.{k}"] = abs(values[k] - ref[k])
    for d in derived_values():
        out[d.spec.name] = d.fn({**values, **out})
    return out
