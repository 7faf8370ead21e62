"""GA / NegGrad: gradient ascent on the forget set's cross-entropy (Thudi et al., "Unrolling SGD:
Understanding Factors Influencing Machine Unlearning", EuroS&P 2022; the GA baseline of Jia et al.,
NeurIPS 2023, and SalUn, ICLR 2024).

Algorithm: minimise -CE(f(x_f), y_f) over the forget set for ``epochs`` epochs. The loss is unbounded, so
the result is very sensitive to ``lr`` and ``epochs``.

Defaults are the public CIFAR-10 ResNet-18 code's (Unlearn-Sparse ``--unlearn GA --unlearn_lr 0.0001
--unlearn_epochs 5``): SGD, momentum 0.9, weight decay 5e-4, batch 256, constant lr.

Choices the paper does not make, and the option that selects each:
- no retain term and no early stop (the public code has neither); ``neggrad_plus`` adds the retain term.
- augmentation follows the original recipe; no label smoothing.
- ``lr`` and ``epochs`` are options: on a digits class of ~145 images an epoch is one step, so 5 steps at
  1e-4 barely move the model; benchmarks/suites/baselines.toml overrides them per dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from ._baseline_utils import SGDBaseline, ce_loss
from .base import UnlearnRequest, log_range, param, register
from .training import fit


@register("gradient_ascent", summary="GA/NegGrad: gradient ascent on the forget set's cross-entropy",
          paper='Thudi et al., "Unrolling SGD: Understanding Factors Influencing Machine Unlearning", EuroS&P '
                "2022")
@dataclass(frozen=True)
class GradientAscent(SGDBaseline):
    lr: float = param(1e-4, "learning rate (public code: 1e-4; very sensitive)",
                      search=log_range(1e-5, 3e-2))
    epochs: float = param(5.0, "epochs over the forget set (public code: 5)", search=log_range(1.0, 20.0))

    def unlearn(self, request: UnlearnRequest) -> nn.Module:
        model = request.model
        fit(model, request.forget, self.sgd_recipe(request, lr=self.lr, epochs=self.epochs), seed=request.seed,
            loss_fn=ce_loss(-1.0), budget=request.budget)
        return model
