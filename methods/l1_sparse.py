"""l1-sparse unlearning: fine-tune on the retain set with an l1 penalty whose weight decays linearly to 0
(Jia, Liu, Ram, Yao, Liu, Liu, Sharma & Liu, "Model Sparsity Can Simplify Machine Unlearning", NeurIPS 2023).

Algorithm: minimise ``CE(f(x_r), y_r) + gamma_t * ||theta||_1`` over the retain set, where
``||theta||_1`` sums |w| over every parameter and ``gamma_t = gamma * (1 - t / epochs)`` for epoch t = 0..E-1
(the released ``FT_l1``: constant within an epoch, 0 only after the last epoch).

Defaults: gamma 1e-4 (METHODS.md; the paper tunes it around 5e-5 to 5e-4), lr 0.01, 10 epochs, SGD momentum
0.9, weight decay 5e-4, batch 256, constant lr (the FT settings it extends).

Choices the paper does not make, and the option that selects each:
- ``decay``: ``epoch`` (default; stepwise per epoch as the released code) or ``step`` (linear per step,
  ``gamma * (1 - step / total_steps)``, which does reach 0 at the end).
- the penalty covers all parameters, BatchNorm affine parameters and biases included (as the released code).
- under a budget the schedule keeps its nominal length (the run stops early; gamma does not rescale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._baseline_utils import SGDBaseline
from .base import MethodError, UnlearnRequest, log_range, param, register
from .training import fit, forward

DECAYS = ("epoch", "step")


@register("l1_sparse",
          summary="l1-sparse: fine-tune on retain + linearly decaying l1 penalty (Jia et al., NeurIPS 2023)",
          paper='Jia, Liu, Ram, Yao, Liu, Liu, Sharma & Liu, "Model Sparsity Can Simplify Machine Unlearning", '
                "NeurIPS 2023")
@dataclass(frozen=True)
class L1Sparse(SGDBaseline):
    gamma: float = param(1e-4, "initial weight of the l1 penalty (decays linearly to 0)",
                         search=log_range(1e-6, 1e-3))
    lr: float = param(0.01, "learning rate", search=log_range(1e-3, 0.5))
    epochs: float = param(10.0, "epochs over the retain set", search=log_range(1.0, 10.0))
    decay: str = param("epoch", "epoch: gamma constant within an epoch (released code); step: linear per step",
                       choices=DECAYS)

    def unlearn(self, request: UnlearnRequest) -> nn.Module:
        if self.gamma < 0:
            raise MethodError(f"l1_sparse: gamma must be >= 0, got {self.gamma}")
        model = request.model
        recipe = self.sgd_recipe(request, lr=self.lr, epochs=self.epochs)
        per_epoch = request.retain.num_batches(recipe.batch_size)
        total = max(1, int(math.ceil(self.epochs * per_epoch)))
        params = [p for p in model.parameters() if p.requires_grad]
        state = {"step": 0}
        gamma, epochs, decay = self.gamma, self.epochs, self.decay

        def loss(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            step = state["step"]
            state["step"] = step + 1
            if decay == "epoch":
                g = gamma * max(0.0, 1.0 - (step // per_epoch) / epochs)
            else:
                g = gamma * max(0.0, 1.0 - step / total)
            ce = F.cross_entropy(forward(m, x), y)
            if g == 0.0:
                return ce
            return ce + g * torch.stack([p.abs().sum() for p in params]).sum()

        fit(model, request.retain, recipe, seed=request.seed, loss_fn=loss, budget=request.budget)
        return model
