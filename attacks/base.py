"""The metric/attack contract and its registry.

A metric group is a function ``fn(ctx: EvalContext) -> MetricResult`` registered under a name with
:func:`register_metric`; it returns one or more named values plus per-example scores, which the
store keeps so curves, intervals and new attacks need no rerun. Every value a group produces is
*declared* where it is registered (:func:`value`: kind, direction, unit, definition, the sample it is
computed on); reports, figures and ``docs/metrics.md`` read those declarations, never the names.
Values the harness measures itself (cost, timings) are declared with :func:`declare_measured` and
:func:`declare_family`; values computed from other values (``avg_gap``) with :func:`register_derived`.
Suites list the groups they want; the harness computes each group once for the unlearned model and
once for the retrain reference (same context, same seed), then the gaps ``gap.<m>`` of every value
declared with ``gap=True``, then the derived values.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import torch.nn as nn

from unlearnbench.datasets import ForgetSplit, TensorData
from unlearnbench.errors import UserError
from unlearnbench.methods.training import predict

if TYPE_CHECKING:
    from .seam import CellHarness


class MetricError(UserError, ValueError):
    pass


@dataclass
class MetricResult:
    values: dict[str, float]
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # per-example arrays, stored in the run's .npz


@dataclass
class EvalContext:
    """What an attack may look at. Logits are computed lazily once per part and shared by all attacks."""

    model: nn.Module
    train: TensorData  # the training pool the original model saw (poisoned, for backdoor requests)
    forget: TensorData
    retain: TensorData
    test: TensorData
    heldout: TensorData
    split: ForgetSplit
    num_classes: int
    seed: int
    batch_size: int = 1024
    # the harness, for attacks that need models of their own (LiRA, U-LiRA, backdoor's original model); see
    # attacks/seam.py. None when a context is built by hand.
    harness: CellHarness | None = None
    _logits: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _parts: dict[str, TensorData] = field(default_factory=dict, repr=False)

    @property
    def device(self) -> torch.device:
        return self.forget.device

    def part(self, name: str) -> TensorData:
        standard = {"forget": self.forget, "retain": self.retain, "test": self.test, "heldout": self.heldout,
                    "train": self.train}
        if name in standard:
            return standard[name]
        if name not in self._parts:
            if name not in _PARTS:
                raise MetricError(f"unknown evaluation part {name!r}; known: {sorted(standard) + sorted(_PARTS)}")
            self._parts[name] = _PARTS[name](self)
        return self._parts[name]

    def logits(self, name: str) -> torch.Tensor:
        if name not in self._logits:
            self._logits[name] = predict(self.model, self.part(name), self.batch_size)
        return self._logits[name]

    def prefetch(self, names=("forget", "retain", "test", "heldout")) -> None:
        """Compute the logits now (the harness does this on the main thread, so that metrics scored on
        a worker thread only index finished tensors and never run the model there): the standard parts
        and every registered derived part (:func:`register_part`)."""
        for name in (*names, *sorted(n for n in _PARTS if _PART_WHEN[n](self))):
            self.logits(name)

    def rng(self, purpose: str) -> np.random.Generator:
        """Randomness of an attack: fixed by (seed, purpose) so the method and the retrain reference
        are scored on the same samples."""
        return np.random.default_rng([self.seed, abs(hash_str(purpose))])


_PARTS: dict[str, Callable[["EvalContext"], TensorData]] = {}
_PART_WHEN: dict[str, Callable[["EvalContext"], bool]] = {}


def register_part(name: str, when: Callable[["EvalContext"], bool] = lambda ctx: True):
    """Register a derived evaluation part ``fn(ctx) -> TensorData`` (e.g. the triggered non-members of the
    membership attacks on backdoor requests): built once per context; its logits are computed with the
    standard parts' wherever ``when(ctx)`` holds."""

    def deco(fn):
        if name in _PARTS:
            raise MetricError(f"evaluation part {name!r} is registered twice")
        _PARTS[name] = fn
        _PART_WHEN[name] = when
        return fn

    return deco


def hash_str(s: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(s.encode()).digest()[:4], "little")


KINDS = ("score", "gap", "cost", "diagnostic")
DIRECTIONS = ("higher", "lower", "closest", "none")  # closest: closest to the retrain reference is best


@dataclass(frozen=True)
class ValueSpec:
    """What one produced value is. Reports and figures read these declarations, never the names.

    - ``kind``: ``score`` (a property of the unlearned model), ``gap`` (a distance to the retrain
      reference), ``cost`` (what the unlearning call used), ``diagnostic`` (how a method or the
      harness got there; shown apart, never ranked).
    - ``direction``: ``higher`` / ``lower`` is better, ``closest`` to the retrain reference is better,
      or ``none``.
    - ``unit``: e.g. ``fraction``, ``AUC``, ``s``, ``MiB``, ``bytes``, ``passes``, ``FLOPs``, ``×``.
    - ``sample``: the data the value is computed on (for membership attacks: members and non-members,
      per request kind).
    - ``gap``: whether the retrain reference has this value too (then the harness stores ``gap.<name>``).
    - ``family``: what figures draw it with: ``accuracy``, ``membership``, ``backdoor``, ``time``,
      ``memory``, ``storage``, ``work`` (or any new family: it still gets its own table column).
    - ``roc``: the per-example arrays ``(labels, scores)`` behind an AUC (for ROC curves).
    - ``before``: the name of the same quantity measured on the original model (e.g. ASR before).
    - ``table``: shown in the Markdown/HTML/LaTeX tables (False: in the CSV only).
    - ``reproducible``: a re-run of the cell gives it again (False for wall times, memory peaks and where a
      time was measured: ``unlearnbench reproduce`` does not compare those).
    """

    name: str
    kind: str
    direction: str
    unit: str
    definition: str
    sample: str = ""
    gap: bool = True
    family: str = ""
    roc: tuple[str, str] | None = None
    before: str | None = None
    table: bool = True
    reproducible: bool = True
    group: str = ""  # the registered group that produces it (set at registration)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise MetricError(f"value {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.direction not in DIRECTIONS:
            raise MetricError(f"value {self.name!r}: direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if not self.definition:
            raise MetricError(f"value {self.name!r}: a definition is required")

    @property
    def higher_is_better(self) -> bool | None:
        return {"higher": True, "lower": False}.get(self.direction)


def value(name: str, kind: str, direction: str, unit: str, definition: str, **kw: Any) -> ValueSpec:
    """Declare one value a metric group produces (see :class:`ValueSpec`)."""
    return ValueSpec(name, kind, direction, unit, definition, **kw)


@dataclass(frozen=True)
class MetricInfo:
    name: str
    fn: Callable[[EvalContext], MetricResult] | None  # None: measured by the harness, not selectable in suites
    values: tuple[ValueSpec, ...]
    description: str
    device_bound: bool  # runs models on the device (shadow models, triggered inputs): scored on the main thread

    @property
    def produces(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.values)

    @property
    def selectable(self) -> bool:
        return self.fn is not None


@dataclass(frozen=True)
class Family:
    """Values named ``<prefix><anything>``, declared once for the whole family (``cell.<phase>_s``,
    ``<method>.<diagnostic>``, ``work.<unit>``)."""

    prefix: str
    spec: ValueSpec


@dataclass(frozen=True)
class Derived:
    """A value computed from other stored values after the gaps (``avg_gap``)."""

    spec: ValueSpec
    needs: tuple[str, ...]
    fn: Callable[[dict[str, float]], float]


_METRICS: dict[str, MetricInfo] = {}
_VALUES: dict[str, ValueSpec] = {}
_FAMILIES: list[Family] = []
_DERIVED: dict[str, Derived] = {}


def _add_values(group: str, values) -> tuple[ValueSpec, ...]:
    out = []
    for v in values:
        if not isinstance(v, ValueSpec):
            raise MetricError(f"metric {group!r}: produces must list value(...) declarations, got {v!r}")
        if v.name in _VALUES:
            raise MetricError(f"value {v.name!r} is declared twice (groups {_VALUES[v.name].group!r} and {group!r})")
        out.append(dataclasses.replace(v, group=group))
    for v in out:
        _VALUES[v.name] = v
    return tuple(out)


def register_metric(name: str, *, produces, description: str, device_bound: bool = False):
    """Register a metric group: ``fn(ctx) -> MetricResult`` producing the declared values ``produces``
    (a sequence of :func:`value` declarations). ``device_bound=True`` for groups that run models
    themselves (anything beyond ``ctx.logits``); the others may be scored on a worker thread while the
    device runs the next cell."""

    def deco(fn):
        if name in _METRICS:
            raise MetricError(f"metric {name!r} is registered twice")
        _METRICS[name] = MetricInfo(name, fn, _add_values(name, produces), description, device_bound)
        return fn

    return deco


def declare_measured(name: str, *, produces, description: str) -> None:
    """Declare values the harness measures itself (cost, timings): same declarations, no function, not
    listed in suites."""
    if name in _METRICS:
        raise MetricError(f"metric {name!r} is registered twice")
    _METRICS[name] = MetricInfo(name, None, _add_values(name, produces), description, False)


def declare_family(prefix: str, spec: ValueSpec) -> None:
    """Declare every value named ``prefix...`` at once (the spec's name is the pattern shown in docs)."""
    if any(f.prefix == prefix for f in _FAMILIES):
        raise MetricError(f"value family {prefix!r} is declared twice")
    _FAMILIES.append(Family(prefix, spec))


def register_derived(spec: ValueSpec, needs: tuple[str, ...]):
    """Register a derived value ``fn(values) -> float`` computed from the stored values ``needs``."""

    def deco(fn):
        if spec.name in _DERIVED or spec.name in _VALUES:
            raise MetricError(f"value {spec.name!r} is declared twice")
        d = Derived(dataclasses.replace(spec, group="derived"), tuple(needs), fn)
        _DERIVED[spec.name] = d
        _VALUES[spec.name] = d.spec
        return fn

    return deco


def gap_spec(of: ValueSpec) -> ValueSpec:
    return ValueSpec(f"gap.{of.name}", "gap", "lower", of.unit,
                     f"|{of.name}(unlearned) − {of.name}(retrain)| on the same cell (same seed)",
                     sample=of.sample, gap=False, family=of.family, group="gap")


def declaration(name: str) -> ValueSpec | None:
    """The declaration of a stored value name: a registered value, the gap of one, a member of a
    declared family, or a method's diagnostic (``<method>.<key>``); None if nothing declares it."""
    _ensure_loaded()
    if name in _VALUES:
        return _VALUES[name]
    if name.startswith("gap."):
        base = _VALUES.get(name[4:])
        if base is not None and base.gap:
            return gap_spec(base)
    for fam in _FAMILIES:
        if name.startswith(fam.prefix):
            return dataclasses.replace(fam.spec, name=name)
    from unlearnbench.methods import method_names

    method, _, key = name.partition(".")
    if key and method in method_names():
        return ValueSpec(name, "diagnostic", "none", "", f"reported by the method {method} ({key})",
                         gap=False, group=method)
    return None


def declared_values() -> list[ValueSpec]:
    """Every declared value (registered, derived) in name order."""
    _ensure_loaded()
    return [_VALUES[k] for k in sorted(_VALUES)]


def declared_families() -> list[Family]:
    _ensure_loaded()
    return list(_FAMILIES)


def derived_values() -> list[Derived]:
    _ensure_loaded()
    return list(_DERIVED.values())


def _ensure_loaded() -> None:
    from . import load_all

    load_all()


def metric_info(name: str) -> MetricInfo:
    _ensure_loaded()
    if name not in _METRICS:
        near = difflib.get_close_matches(name, list(_METRICS), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
        raise MetricError(f"unknown metric {name!r}.{hint} Registered metrics: {', '.join(sorted(_METRICS))}.")
    return _METRICS[name]


def list_metrics(selectable_only: bool = False) -> list[MetricInfo]:
    _ensure_loaded()
    return [_METRICS[k] for k in sorted(_METRICS) if _METRICS[k].selectable or not selectable_only]


def loss_per_example(logits: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.cross_entropy(logits, y, reduction="none").double().cpu().numpy()


def save_scores_dir(path: Path) -> None:  # pragma: no cover - helper for attacks writing side files
    path.mkdir(parents=True, exist_ok=True)
