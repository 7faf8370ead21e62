"""NegGrad+: descend on the retain set while ascending on the forget set (Kurmanji et al., "Towards
Unbounded Machine Unlearning", NeurIPS 2023, which introduced this stronger NegGrad baseline).

Algorithm: for each retain batch (x_r, y_r) paired with the next forget batch (x_f, y_f), minimise
``beta * CE(f(x_r), y_r) - (1 - beta) * CE(f(x_f), y_f)``; an epoch is one pass over the retain set.

Defaults (METHODS.md, public-code values): beta 0.95, lr 0.01, 10 epochs; SGD momentum 0.9, weight
decay 5e-4, batch 256, constant lr.

Choices the paper does not make, and the option that selects each:
- pairing: the forget set is cycled (reshuffled on every pass) alongside the retain pass, so an epoch
  counts retain batches; the forget batch has the same size as the retain batch (``batch_size``).
- the two batches go through the model in separate forward passes (BatchNorm statistics per batch).
- augmentation follows the original recipe for both batches; no label smoothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._baseline_utils import SGDBaseline
from .base import MethodError, UnlearnRequest, linear_range, log_range, param, register
from .training import cycle, fit, forward


@register("neggrad_plus", summary="NegGrad+: beta*CE(retain) - (1-beta)*CE(forget) on paired batches (Kurmanji 2023)",
          paper='Kurmanji, Triantafillou, Hayes & Triantafillou, "Towards Unbounded Machine Unlearning", NeurIPS '
                "2023")
@dataclass(frozen=True)
class NegGradPlus(SGDBaseline):
    beta: float = param(0.95, "weight of the retain cross-entropy; 1 - beta weighs the forget ascent",
                        search=linear_range(0.8, 0.999))
    lr: float = param(0.01, "learning rate", search=log_range(1e-4, 0.1))
    epochs: float = param(10.0, "epochs over the retain set", search=log_range(1.0, 10.0))

    def unlearn(self, request: UnlearnRequest) -> nn.Module:
        if not 0.0 <= self.beta <= 1.0:
            raise MethodError(f"neggrad_plus: beta must lie in [0, 1], got {self.beta}")
        model = request.model
        recipe = self.sgd_recipe(request, lr=self.lr, epochs=self.epochs)
        forget_batches = cycle(request.forget, recipe.batch_size, request.generator(1), augment=recipe.augment)
        beta = self.beta

        def loss(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            xf, yf = next(forget_batches)
            return beta * F.cross_entropy(forward(m, x), y) - (1.0 - beta) * F.cross_entropy(forward(m, xf), yf)

        fit(model, request.retain, recipe, seed=request.seed, loss_fn=loss, budget=request.budget)
        return model
