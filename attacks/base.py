"""The metric/attack contract and its registry.

A metric group is a function ``fn(ctx: EvalContext) -> MetricResult`` registered under a name with
:func:`register_metric`; it returns one or more named values (the names of METRICS.md) plus
per-example scores, which the store keeps so curves, intervals and new attacks need no rerun.
Suites list the groups they want; the harness computes each group once for the unlearned model and
once for the retrain reference (same context, same seed), then the gaps.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from unlearnbench.datasets import ForgetSplit, TensorData
from unlearnbench.methods.training import predict


class MetricError(ValueError):
    pass


@dataclass
class MetricResult:
    values: dict[str, float]
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # per-example arrays, stored in the run's .npz
    no_gap: frozenset[str] = frozenset()  # values that describe another model (e.g. the original): no gap.* for them


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
    # handles for attacks that need more than one model (LiRA, U-LiRA); set by the harness
    extras: dict[str, Any] = field(default_factory=dict)
    _logits: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def device(self) -> torch.device:
        return self.forget.device

    def part(self, name: str) -> TensorData:
        return {"forget": self.forget, "retain": self.retain, "test": self.test, "heldout": self.heldout,
                "train": self.train}[name]

    def logits(self, name: str) -> torch.Tensor:
        if name not in self._logits:
            self._logits[name] = predict(self.model, self.part(name), self.batch_size)
        return self._logits[name]

    def prefetch(self, names=("forget", "retain", "test", "heldout")) -> None:
        """Compute the logits now (the harness does this on the main thread, so that metrics scored on
        a worker thread only index finished tensors and never run the model there)."""
        for name in names:
            self.logits(name)

    def rng(self, purpose: str) -> np.random.Generator:
        """Randomness of an attack: fixed by (seed, purpose) so the method and the retrain reference
        are scored on the same samples."""
        return np.random.default_rng([self.seed, abs(hash_str(purpose))])


def hash_str(s: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(s.encode()).digest()[:4], "little")


@dataclass(frozen=True)
class MetricInfo:
    name: str
    fn: Callable[[EvalContext], MetricResult]
    produces: tuple[str, ...]
    description: str
    reference: bool  # whether a retrain value (and so a gap) makes sense
    device_bound: bool  # runs models on the device (shadow models, triggered inputs): scored on the main thread


_METRICS: dict[str, MetricInfo] = {}


def register_metric(name: str, *, produces: tuple[str, ...], description: str, reference: bool = True,
                    device_bound: bool = False):
    """Register a metric group. ``device_bound=True`` for groups that run models themselves (anything beyond
    ``ctx.logits``); the others may be scored on a worker thread while the device runs the next cell."""

    def deco(fn):
        if name in _METRICS:
            raise MetricError(f"metric {name!r} is registered twice")
        _METRICS[name] = MetricInfo(name, fn, produces, description, reference, device_bound)
        return fn

    return deco


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


def list_metrics() -> list[MetricInfo]:
    _ensure_loaded()
    return [_METRICS[k] for k in sorted(_METRICS)]


def loss_per_example(logits: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.cross_entropy(logits, y, reduction="none").double().cpu().numpy()


def save_scores_dir(path: Path) -> None:  # pragma: no cover - helper for attacks writing side files
    path.mkdir(parents=True, exist_ok=True)
