"""The typed seam between attacks that need models of their own (LiRA's shadows, U-LiRA's unlearned
shadows, the backdoor metrics' original model) and the harness that owns models, caching and methods.

An attack sees :class:`CellHarness` as ``ctx.harness`` (``None`` when a context is built by hand, e.g.
in tests of attacks that need nothing beyond logits). The harness (``benchmarks/harness.py``)
implements it; attacks never reach into harness objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn as nn

from unlearnbench.datasets import TensorData
from unlearnbench.methods import Method, Recipe


@runtime_checkable
class ModelStore(Protocol):
    """The on-disk model cache: content-addressed checkpoints with a JSON info sidecar."""

    root: Path

    def key(self, kind: str, ingredients: dict[str, Any]) -> str: ...

    def has(self, key: str) -> bool: ...

    def load(self, key: str, model: nn.Module) -> dict[str, Any]: ...

    def save(self, key: str, model: nn.Module, info: dict[str, Any]) -> None: ...


@runtime_checkable
class CellHarness(Protocol):
    """What an attack may ask of the harness about the cell it scores."""

    @property
    def device(self) -> torch.device:
        """Where the cell's data and models live."""

    @property
    def recipe(self) -> Recipe:
        """The recipe that trained the original model (shadows train with it too)."""

    @property
    def cache(self) -> ModelStore:
        """The run's model cache (shadow models and per-shadow statistics are stored there)."""

    @property
    def model_ingredients(self) -> dict[str, Any]:
        """Everything that determines the cell's original model (data fingerprint, dataset, poisoning tag,
        architecture, recipe, seed, device type): the base of every derived cache key."""

    @property
    def max_epochs(self) -> float | None:
        """The suite's budget cap for methods."""

    @property
    def original(self) -> nn.Module:
        """The original model (before unlearning); never to be modified."""

    @property
    def method(self) -> Method:
        """The method whose output is being scored (``retrain`` for the reference role)."""

    @property
    def role(self) -> str:
        """``unlearned`` (the method's output) or ``reference`` (the retrain reference)."""

    def options(self, metric: str) -> dict[str, Any]:
        """The suite's ``[metric_options."<metric>"]`` table (empty if none)."""

    def fresh_model(self) -> nn.Module:
        """The architecture with the seeded initialisation the original model started from, on the device."""

    def unlearn(self, method: Method, model: nn.Module, *, forget: TensorData, retain: TensorData, seed: int,
                new_model) -> nn.Module:
        """Run ``method`` on ``model`` (mutated) for a request built like the cell's (held-out data for methods
        that need it, the cell's budget), with ``forget``/``retain`` replacing the cell's, the run seed
        ``seed`` (seeded like the harness seeds a cell) and ``new_model()`` as the fresh initialisation."""
