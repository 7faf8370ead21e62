"""Plug-ins: methods, metrics, datasets and models from other installed distributions.

A distribution declares entry points in one of four groups (``pyproject.toml``)::

    [project.entry-points."unlearnbench.methods"]
    my_method = "my_package.my_method"      # a module (or any object) whose import registers things

The value names a module (``pkg.mod``) or an object in one (``pkg.mod:obj``); loading it imports that
module, whose decorators (``@register``, ``@register_metric``, ``@register_source``/``@register_request``,
``@register_model``) register what it defines, exactly like a built-in file. The entry point's own name
is only a label. Groups and the registries they feed:

- ``unlearnbench.methods``: methods (``unlearnbench.methods.register``), loaded by ``methods.load_all``;
- ``unlearnbench.metrics``: metric groups (``unlearnbench.attacks.register_metric``), by ``attacks.load_all``;
- ``unlearnbench.datasets``: dataset sources and request kinds, when a dataset or request kind is first
  looked up;
- ``unlearnbench.models``: architectures (``unlearnbench.methods.models.register_model``), when a model
  name is first looked up.

Built-ins are always registered first, and plug-ins in the order (distribution name, entry-point name),
so what a name means does not depend on the order site-packages lists distributions. A plug-in whose
import raises -- a missing dependency, a bug, or a name that is already registered (by a built-in or
another plug-in: registering a name twice is an error) -- is *skipped*: everything its import had
registered in that group's registries is removed again, and one line naming its distribution goes to
stderr (``warning: skipped plug-in ...``) and into :func:`problems` (``unlearnbench list methods``
shows them). It never stops the program: the built-ins and the other plug-ins keep working.

This module sits above the floors (``unlearnbench`` itself) and imports none of them; each floor calls
:func:`load_group` with its own registries.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.metadata as md
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

GROUPS = ("unlearnbench.methods", "unlearnbench.metrics", "unlearnbench.datasets", "unlearnbench.models")
BUILTIN = "built-in"


@dataclass(frozen=True)
class PluginProblem:
    """A plug-in that was skipped: its group, entry point, distribution, and what went wrong."""

    group: str
    entry_point: str  # "name = value"
    distribution: str  # "name version"
    error: str  # "ExceptionType: message"

    def line(self) -> str:
        dist = self.distribution.split(" ")[0]
        return (f"skipped plug-in {self.distribution!r} (entry point {self.entry_point!r} in group "
                f"{self.group!r}): {self.error} -- fix the plug-in or uninstall it (pip uninstall {dist})")


_lock = threading.RLock()
_loaded: set[str] = set()
_problems: list[PluginProblem] = []
_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("unlearnbench_plugin", default=None)


def distribution_label(ep: md.EntryPoint) -> str:
    """``name version`` of the distribution that declares ``ep`` (``?`` when unknown)."""
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "?"
    return f"{dist.name or '?'} {dist.version}"


def entry_points(group: str) -> list[md.EntryPoint]:
    """The entry points of ``group`` over every installed distribution, in (distribution, name) order."""
    eps = md.entry_points(group=group)
    return sorted(eps, key=lambda ep: (distribution_label(ep).lower(), ep.name, ep.value))


def current_origin() -> str | None:
    """The distribution (``name version``) whose entry point is being loaded right now, else None."""
    return _current.get()


def origin_of(module: str) -> str:
    """Where something registered from ``module`` comes from: the plug-in distribution being loaded,
    ``built-in`` for this package's own modules, else ``module <name>`` (imported by the user's code)."""
    cur = _current.get()
    if cur is not None:
        return cur
    if module == "unlearnbench" or module.startswith("unlearnbench."):
        return BUILTIN
    return f"module {module}"


def _snapshot(registries: Sequence[Any]) -> list[Any]:
    return [dict(r) if isinstance(r, dict) else list(r) for r in registries]


def _restore(registries: Sequence[Any], snapshot: list[Any]) -> None:
    for reg, old in zip(registries, snapshot):
        if isinstance(reg, dict):
            reg.clear()
            reg.update(old)
        else:
            reg[:] = old


def _report(problem: PluginProblem) -> None:
    _problems.append(problem)
    print(f"warning: {problem.line()}", file=sys.stderr)


def load_group(group: str, registries: Sequence[Any], *, force: bool = False) -> list[str]:
    """Load every entry point of ``group`` once per process (again with ``force``), each in turn; one
    that raises while loading is reported and its registrations in ``registries`` (the dicts and lists
    the group's decorators write to) are undone. Returns the labels of the distributions loaded."""
    if group not in GROUPS:
        raise ValueError(f"unknown plug-in group {group!r}; known: {', '.join(GROUPS)}")
    with _lock:
        if group in _loaded and not force:
            return []
        _loaded.add(group)
        loaded = []
        for ep in entry_points(group):
            dist = distribution_label(ep)
            before = _snapshot(registries)
            token = _current.set(dist)
            try:
                ep.load()
            except (Exception, SystemExit) as exc:  # a broken plug-in never stops the program
                _restore(registries, before)
                msg = " ".join(str(exc).split()) or "(no message)"
                _report(PluginProblem(group, f"{ep.name} = {ep.value}", dist, f"{type(exc).__name__}: {msg}"))
            else:
                loaded.append(dist)
            finally:
                _current.reset(token)
        return loaded


def problems(group: str | None = None) -> list[PluginProblem]:
    """The plug-ins skipped so far in this process (of ``group``, or all)."""
    return [p for p in _problems if group is None or p.group == group]


@contextlib.contextmanager
def isolated() -> Iterator[None]:
    """For tests: forget which groups were loaded and the problems seen, restoring both afterwards."""
    with _lock:
        loaded, probs = set(_loaded), list(_problems)
        _loaded.clear()
        _problems.clear()
    try:
        yield
    finally:
        with _lock:
            _loaded.clear()
            _loaded.update(loaded)
            _problems[:] = probs


def ensure(group: str, registries: Callable[[], Iterable[Any]]) -> None:
    """Cheap after the first call: load ``group`` with the registries ``registries()`` returns."""
    if group not in _loaded:
        load_group(group, list(registries()))
