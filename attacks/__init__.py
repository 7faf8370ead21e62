"""Attacks floor: the metric/attack registry, accuracy metrics, membership inference, backdoor attacks.

Every module here is imported by :func:`load_all`; a new attack is one new file with a
``@register_metric(...)`` function. Metric groups of other installed distributions arrive through the
``unlearnbench.metrics`` entry-point group (see ``unlearnbench.plugins``), after the built-ins.
"""

import importlib
import pkgutil

from .base import (DIRECTIONS, KINDS, EvalContext, MetricError, MetricInfo, MetricResult, ValueSpec, declaration,
                   declare_family, declare_measured, declared_families, declared_values, list_metrics, metric_info,
                   register_derived, register_metric, register_part, value)

_INFRASTRUCTURE = {"base"}
_loaded = False


def load_all() -> None:
    """Import every built-in attack module (each registers itself), then the ``unlearnbench.metrics``
    plug-ins: one that fails to import or registers a name twice is reported with its distribution and
    skipped (everything it had registered is removed again)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name not in _INFRASTRUCTURE and not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")
    from unlearnbench import plugins
    from unlearnbench.datasets.requests import _KINDS

    from . import base

    plugins.load_group("unlearnbench.metrics", [base._METRICS, base._VALUES, base._FAMILIES, base._DERIVED,
                                                base._PARTS, base._PART_WHEN, _KINDS])


__all__ = ["DIRECTIONS", "KINDS", "EvalContext", "MetricError", "MetricInfo", "MetricResult", "ValueSpec", "declaration",
           "declare_family", "declare_measured", "declared_families", "declared_values", "list_metrics", "load_all",
           "metric_info", "register_derived", "register_metric", "register_part", "value"]
