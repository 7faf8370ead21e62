"""Methods floor: architectures, the one training loop, the method contract/registry, one file per method.

Every module in this package is imported by :func:`load_all`, so a new method is one new file with a
``@register(...)`` class: nothing else to edit.
"""

import importlib
import pkgutil

from .base import (Method, MethodError, UnlearnRequest, create_method, describe, method_class, method_names,
                   param, register)
from .training import Budget, Recipe, accuracy, fit, predict

_INFRASTRUCTURE = {"base", "models", "training"}
_loaded = False


def load_all() -> None:
    """Import every method module (each registers itself)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name not in _INFRASTRUCTURE and not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")


__all__ = ["Budget", "Method", "MethodError", "Recipe", "UnlearnRequest", "accuracy", "create_method", "describe",
           "fit", "load_all", "method_class", "method_names", "param", "predict", "register"]
