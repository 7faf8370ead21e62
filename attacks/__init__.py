"""Attacks floor: the metric/attack registry, accuracy metrics, membership inference, backdoor attacks.

Every module here is imported by :func:`load_all`; a new attack is one new file with a
``@register_metric(...)`` function.
"""

import importlib
import pkgutil

from .base import (DIRECTIONS, KINDS, EvalContext, MetricError, MetricInfo, MetricResult, ValueSpec, declaration,
                   declare_family, declare_measured, declared_families, declared_values, list_metrics, metric_info,
                   register_derived, register_metric, register_part, value)

_INFRASTRUCTURE = {"base"}
_loaded = False


def load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name not in _INFRASTRUCTURE and not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")


__all__ = ["DIRECTIONS", "KINDS", "EvalContext", "MetricError", "MetricInfo", "MetricResult", "ValueSpec", "declaration",
           "declare_family", "declare_measured", "declared_families", "declared_values", "list_metrics", "load_all",
           "metric_info", "register_derived", "register_metric", "register_part", "value"]
