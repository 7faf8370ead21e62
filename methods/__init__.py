"""Methods floor: architectures, the one training loop, the method contract/registry, one file per method.

Every module in this package is imported by :func:`load_all`, so a new method is one new file with a
``@register(...)`` class: nothing else to edit. Methods of other installed distributions arrive through
the ``unlearnbench.methods`` entry-point group (see ``unlearnbench.plugins``), after the built-ins.
"""

import importlib
import pkgutil

from .base import (Method, MethodError, Search, UnlearnRequest, categorical, create_method, describe, int_range,
                   linear_range, log_range, method_class, method_names, method_origin, param, register,
                   search_space)
from .training import Budget, Recipe, accuracy, fit, predict

_INFRASTRUCTURE = {"base", "models", "training", "cost", "docs"}
_loaded = False


def load_all() -> None:
    """Import every built-in method module (each registers itself), then the method plug-ins: a plug-in
    that fails to import or registers a name twice is reported with its distribution and skipped."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name not in _INFRASTRUCTURE and not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")
    from unlearnbench import plugins

    from .base import _REGISTRY

    plugins.load_group("unlearnbench.methods", [_REGISTRY])


__all__ = ["Budget", "Method", "MethodError", "Recipe", "Search", "UnlearnRequest", "accuracy", "categorical",
           "create_method", "describe", "fit", "int_range", "linear_range", "load_all", "log_range", "method_class",
           "method_names", "method_origin", "param", "predict", "register", "search_space"]
