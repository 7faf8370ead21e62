"""The method contract and its registry.

A method is a frozen dataclass whose fields are its hyperparameters (typed, defaulted, one line of
doc each through :func:`param`), registered at its definition with :func:`register`, with one verb::

    unlearn(request: UnlearnRequest) -> nn.Module

It declares what it needs beyond forget/retain data as *tags*; the harness supplies it or marks the
cell "not applicable". It never sees test data, paths, the retrain reference or the CLI. The harness
owns everything else: copying the model, seeding, device and precision, budget, timing, scoring.

Tags:
- ``needs_heldout``: gets ``request.heldout`` (unseen third-party data from the held-out split; for
  class forgetting it excludes the forgotten class) and, for class forgetting, ``request.heldout_forgotten``
  (the held-out images of the forgotten class: unseen data of the class, for a stop rule that a retrained
  model passes; the evaluation's membership attacks use test images of the class, never these).
- ``needs_relu_head``: the model's ``head`` must be a ReLU MLP (PRUNE).
- ``class_only``: only for the ``class`` request; other cells are recorded as not applicable.
- ``reference``: a reference row (``retrain``, the target every gap is measured against, which the
  harness caches per cell; ``original``, the no-op): reports show it and never rank it.
- ``nondeterministic``: exempt from the determinism check (a reason must be given in ``tag_reasons``).
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
import torch.nn as nn

from unlearnbench.datasets import TensorData
from unlearnbench.errors import UserError

from .training import Budget, Recipe, device_generator

TAGS = frozenset({"needs_heldout", "needs_relu_head", "class_only", "reference", "nondeterministic"})
TAG_DOCS = {  # what each tag means (docs/methods.md; a method's tag_reasons say why it carries one)
    "needs_heldout": "gets `request.heldout`: unseen third-party data from the held-out split (for class "
                     "forgetting without the forgotten class)",
    "needs_relu_head": "the model's `head` must be a ReLU MLP; other models are recorded as not applicable",
    "class_only": "only for the `class` request; other cells are recorded as not applicable",
    "reference": "a reference row (the retrain target every gap is measured against, or the no-op original): "
                 "reports show it and never rank it",
    "nondeterministic": "exempt from the determinism check (the reason is required)",
}


class MethodError(UserError, ValueError):
    """Unknown method, bad hyperparameter, or a method that cannot serve a request."""


@dataclass(frozen=True)
class Search:
    """Where a hyperparameter may be searched (``unlearnbench tune``): a float range (``log`` or linear),
    an integer range, or a list of categorical values. Declared with :func:`log_range`, :func:`linear_range`,
    :func:`int_range` or :func:`categorical` in :func:`param`."""

    kind: str  # "float" | "int" | "categorical"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    values: tuple = ()

    def __post_init__(self) -> None:
        if self.kind not in ("float", "int", "categorical"):
            raise MethodError(f"search kind must be float, int or categorical, got {self.kind!r}")
        if self.kind == "categorical":
            if not self.values:
                raise MethodError("a categorical search needs at least one value")
            return
        if self.low is None or self.high is None or not self.low < self.high:
            raise MethodError(f"a {self.kind} search needs low < high, got [{self.low}, {self.high}]")
        if self.log and self.low <= 0:
            raise MethodError(f"a log-scale search needs low > 0, got {self.low}")

    def contains(self, value: Any) -> bool:
        if self.kind == "categorical":
            return value in self.values
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    def describe(self) -> str:
        if self.kind == "categorical":
            return "{" + ", ".join(repr(v) for v in self.values) + "}"
        scale = "log" if self.log else "linear"
        return f"[{self.low:g}, {self.high:g}] {scale}" + (" int" if self.kind == "int" else "")


def log_range(low: float, high: float) -> Search:
    """A float searched on a log scale in [low, high] (learning rates, penalty weights)."""
    return Search("float", float(low), float(high), log=True)


def linear_range(low: float, high: float) -> Search:
    """A float searched uniformly in [low, high]."""
    return Search("float", float(low), float(high))


def int_range(low: int, high: int, log: bool = False) -> Search:
    """An integer searched in [low, high] (log scale if ``log``)."""
    return Search("int", int(low), int(high), log=log)


def categorical(*values: Any) -> Search:
    """One of ``values``."""
    return Search("categorical", values=tuple(values))


@dataclass(frozen=True)
class Bounds:
    """The valid values of a numeric hyperparameter: ``low`` / ``high`` (None: unbounded), each inclusive
    unless ``low_open`` / ``high_open``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, v: float) -> bool:
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        return not (self.high is not None and (v >= self.high if self.high_open else v > self.high))

    def describe(self) -> str:
        lo = "(-inf" if self.low is None else ("(" if self.low_open else "[") + f"{self.low:g}"
        hi = "inf)" if self.high is None else f"{self.high:g}" + (")" if self.high_open else "]")
        return f"{lo}, {hi}"


POSITIVE = Bounds(0, None, low_open=True)


def param(default: Any, doc: str, *, choices: tuple | None = None, search: Search | None = None,
          bounds: Bounds | None = None) -> Any:
    """A hyperparameter field: its default, one line of doc, optionally the allowed values (``choices``),
    the valid range of a number (``bounds``) and where ``unlearnbench tune`` may search it (``search``).
    A number with a log-scale search range and no bounds must be > 0 (a log scale declares a positive
    quantity: learning rates, epochs, penalty weights)."""
    if search is not None and not isinstance(search, Search):
        raise MethodError(f"param search must be a Search (log_range, linear_range, int_range, categorical), "
                          f"got {search!r}")
    if bounds is None and search is not None and search.log:
        bounds = POSITIVE
    return field(default=default, metadata={"doc": doc, "choices": choices, "search": search, "bounds": bounds})


def search_space(cls: type["Method"]) -> dict[str, Search]:
    """The declared search ranges of a method's hyperparameters (field name -> :class:`Search`)."""
    return {f.name: f.metadata["search"] for f in dataclasses.fields(cls) if f.metadata.get("search") is not None}


@dataclass(frozen=True)
class UnlearnRequest:
    """Everything a method may use. ``model`` is the harness's copy of the original (mutate freely)."""

    model: nn.Module
    forget: TensorData
    retain: TensorData
    num_classes: int
    kind: str  # the forget request: "random" | "class" | "points" | "backdoor" | ...
    recipe: Recipe  # the recipe that trained the original model
    new_model: Callable[[], nn.Module]  # a freshly initialised model of the same architecture, on the device
    seed: int
    budget: Budget = Budget()
    forget_class: int | None = None
    heldout: TensorData | None = None  # only for methods tagged needs_heldout
    info: dict[str, float] = field(default_factory=dict)  # diagnostics the method reports (stored as metrics)
    # class requests, methods tagged needs_heldout: the held-out images of the forgotten class (``heldout`` has none)
    heldout_forgotten: TensorData | None = None
    # None inside ``unlearn``; set by the harness for ``report()`` only, after timing (see :class:`ReportData`)
    evaluation: "ReportData | None" = None

    @property
    def device(self) -> torch.device:
        return self.forget.device

    def generator(self, offset: int = 0) -> torch.Generator:
        """A generator on the device, seeded by the run seed (``offset`` gives independent streams)."""
        return device_generator(self.device, self.seed * 1000003 + offset)


@dataclass(frozen=True)
class ReportData:
    """What ``report()`` may look at besides the request, handed over by the harness after ``unlearn`` has
    been timed (``request.evaluation``; never set while ``unlearn`` runs, so ``unlearn`` never sees test
    data): the original model and the cell's whole held-out and test splits, for diagnostics such as the
    number of test predictions a method changed."""

    original: nn.Module | None = None
    heldout: TensorData | None = None
    test: TensorData | None = None


class Method:
    """Base of every method; subclasses are frozen dataclasses registered with :func:`register`."""

    name: ClassVar[str] = ""
    tags: ClassVar[frozenset[str]] = frozenset()
    tag_reasons: ClassVar[dict[str, str]] = {}
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""  # the citation, when given to register(paper=...); the module docstring cites it too
    origin: ClassVar[str] = ""  # "built-in", or the plug-in distribution ("name version") that registered it

    def unlearn(self, request: UnlearnRequest) -> nn.Module:  # pragma: no cover - interface
        raise NotImplementedError

    def report(self, model: nn.Module, request: UnlearnRequest) -> dict[str, float]:
        """Method-specific metrics computed after timing (e.g. PRUNE's certified fraction). The harness calls it
        with ``request.evaluation`` set (:class:`ReportData`: the original model, held-out and test splits); other
        callers may leave it None."""
        return {}

    # -- what the harness asks before running a cell
    def not_applicable(self, kind: str, model: nn.Module) -> str | None:
        """None if the method can serve this request kind on this model, else the reason it cannot."""
        if "class_only" in self.tags and kind != "class":
            return f"{self.name} forgets whole classes only (request kind {kind!r})"
        if "needs_relu_head" in self.tags:
            from .models import ModelError, head_linears

            try:
                head_linears(model)
            except ModelError as exc:
                return f"{self.name} needs a ReLU MLP head: {exc}"
        return None

    def hyperparameters(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


_REGISTRY: dict[str, type[Method]] = {}


def register(name: str, *, tags: tuple[str, ...] | frozenset[str] = (), summary: str = "",
             tag_reasons: dict[str, str] | None = None, paper: str = ""):
    """Class decorator: register a frozen-dataclass method under ``name`` (``paper``: its citation, one line,
    shown in ``docs/methods.md``). Built-in methods and plug-ins (``unlearnbench.plugins``) register alike."""

    def deco(cls: type[Method]) -> type[Method]:
        if name in _REGISTRY:
            raise MethodError(f"method {name!r} is registered twice ({_REGISTRY[name].__module__} and {cls.__module__})")
        if not (dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen):  # type: ignore[attr-defined]
            raise MethodError(f"method {name!r}: {cls.__name__} must be a frozen dataclass")
        if not issubclass(cls, Method):
            raise MethodError(f"method {name!r}: {cls.__name__} must subclass Method")
        bad = set(tags) - TAGS
        if bad:
            raise MethodError(f"method {name!r}: unknown tag(s) {sorted(bad)}; known: {sorted(TAGS)}")
        for f in dataclasses.fields(cls):
            if not f.metadata.get("doc"):
                raise MethodError(f"method {name!r}: field {f.name!r} needs one line of doc (use param(default, doc))")
            if f.default is dataclasses.MISSING:
                raise MethodError(f"method {name!r}: field {f.name!r} needs a default")
            bounds = f.metadata.get("bounds")
            if bounds is not None and not bounds.contains(f.default):
                raise MethodError(f"method {name!r}: the default of {f.name!r} ({f.default!r}) lies outside its "
                                  f"bounds {bounds.describe()}")
            search = f.metadata.get("search")
            if search is not None and not search.contains(f.default):
                raise MethodError(f"method {name!r}: the default of {f.name!r} ({f.default!r}) lies outside its "
                                  f"search range {search.describe()}")
        if "nondeterministic" in tags and not (tag_reasons or {}).get("nondeterministic"):
            raise MethodError(f"method {name!r}: tag 'nondeterministic' needs a reason in tag_reasons")
        cls.name = name
        cls.tags = frozenset(tags)
        cls.tag_reasons = dict(tag_reasons or {})
        cls.summary = summary or (cls.__doc__ or "").strip().splitlines()[0]
        cls.paper = " ".join(paper.split())
        from unlearnbench.plugins import origin_of

        cls.origin = origin_of(cls.__module__)
        _REGISTRY[name] = cls
        return cls

    return deco


def _ensure_loaded() -> None:
    from . import load_all

    load_all()


def method_names() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def method_class(name: str) -> type[Method]:
    _ensure_loaded()
    if name not in _REGISTRY:
        near = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
        raise MethodError(f"unknown method {name!r}.{hint} Registered methods: {', '.join(sorted(_REGISTRY))}. "
                          "A method from another package is registered once that package is installed "
                          "(its `unlearnbench.methods` entry point).")
    return _REGISTRY[name]


def method_origin(name: str) -> str:
    """Where a registered method comes from: ``built-in``, or the plug-in distribution (``name version``)."""
    return method_class(name).origin


def _check_value(method: str, f: dataclasses.Field, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if origin is tuple and isinstance(value, list):
        value = tuple(value)
    ok_types: tuple = ()
    if hint in (int, float, str, bool):
        ok_types = (hint,)
    elif origin is tuple:
        ok_types = (tuple,)
    elif origin is typing.Union or type(hint).__name__ == "UnionType":
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        if float in args and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        ok_types = tuple(a for a in args if isinstance(a, type))
    if ok_types and (not isinstance(value, ok_types) or (isinstance(value, bool) and bool not in ok_types)):
        names = "/".join(t.__name__ for t in ok_types)
        raise MethodError(f"method {method!r}: {f.name} must be {names}, got {value!r}")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise MethodError(f"method {method!r}: {f.name} must be one of {list(choices)}, got {value!r}")
    bounds = f.metadata.get("bounds")
    if bounds is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != value or not bounds.contains(value):  # NaN fails every bound
            raise MethodError(f"method {method!r}: {f.name} must lie in {bounds.describe()}, got {value!r}")
    return value


def create_method(name: str, overrides: dict[str, Any] | None = None) -> Method:
    """Instantiate a registered method with validated hyperparameter overrides."""
    cls = method_class(name)
    overrides = dict(overrides or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        near = {u: difflib.get_close_matches(u, list(fields), n=1) for u in unknown}
        hints = "; ".join(f"{u!r}" + (f" (did you mean {near[u][0]!r}?)" if near[u] else "") for u in unknown)
        raise MethodError(f"method {name!r} has no hyperparameter {hints}. It takes: "
                          f"{', '.join(sorted(fields)) or 'none'}.")
    hints = typing.get_type_hints(cls)
    values = {k: _check_value(name, fields[k], hints[k], v) for k, v in overrides.items()}
    return cls(**values)


def describe(cls: type[Method]) -> list[tuple[str, str, Any, str, str]]:
    """(field, type, default, doc, search range or "") rows for ``unlearnbench list methods``."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        tname = t.__name__ if isinstance(t, type) else str(t).replace("typing.", "")
        search = f.metadata.get("search")
        rows.append((f.name, tname, f.default, f.metadata.get("doc", ""), search.describe() if search else ""))
    return rows
