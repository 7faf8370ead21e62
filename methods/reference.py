"""The two reference rows every table shows: ``original`` (no unlearning: the starting point) and
``retrain`` (train from scratch on the retain set with exactly the recipe and initialisation of the
original model: the gold standard against which every other method's gaps are measured).

Retraining is exact unlearning by construction: the retrained model never saw the forget set.
The harness trains the retrain reference once per cell (caching it by a hash of everything that
determines it) and reuses that same model for the ``retrain`` row, so the row's cost is the
measured retraining time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from .base import Method, UnlearnRequest, register
from .training import fit


@register("original", tags=("reference",), summary="no unlearning: the trained model as it is (the starting point)")
@dataclass(frozen=True)
class Original(Method):
    def unlearn(self, request: UnlearnRequest) -> nn.Module:
        return request.model


@register("retrain", tags=("reference",), summary="retrain from scratch on the retain set (the reference)")
@dataclass(frozen=True)
class Retrain(Method):
    def unlearn(self, request: UnlearnRequest) -> nn.Module:
        model = request.new_model()
        fit(model, request.retain, request.recipe, seed=request.seed, budget=request.budget)
        return model
