"""Attacks floor: the metric/attack registry, accuracy metrics, membership inference, backdoor attacks.

Every module here is imported by :func:`load_all`; a new attack is one new file with a
``@register_metric(...)`` function.
"""

import importlib
import pkgutil

from .base import EvalContext, MetricError, MetricInfo, MetricResult, list_metrics, metric_info, register_metric

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


__all__ = ["EvalContext", "MetricError", "MetricInfo", "MetricResult", "list_metrics", "load_all", "metric_info",
           "register_metric"]
