"""FT: fine-tune the trained model on the retain set only, so that the forget set is "catastrophically
forgotten" (Warnecke et al., "Machine Unlearning of Features and Labels", NDSS 2023; the FT baseline of
Jia et al., "Model Sparsity Can Simplify Machine Unlearning", NeurIPS 2023, and of SalUn, ICLR 2024).

Algorithm: minimise CE(f(x_r), y_r) over the retain set for ``epochs`` epochs.

Defaults are the public CIFAR-10 ResNet-18 code's (OPTML-Group Unlearn-Sparse / Unlearn-Saliency,
``--unlearn FT --unlearn_lr 0.01 --unlearn_epochs 10``): SGD, momentum 0.9, weight decay 5e-4, batch 256.

Choices the paper does not make, and the option that selects each:
- learning-rate schedule: constant (the public code's MultiStepLR milestones 91,136 never fire within 10
  epochs); not an option.
- augmentation: the original model's recipe decides (crop+flip on CIFAR, none on digits/MNIST), as the
  public code reuses its training transforms; not an option.
- no label smoothing even if the original recipe used it (the public code's plain cross-entropy).
- ``lr``, ``epochs``, ``batch_size``, ``momentum``, ``weight_decay`` are options; on the 8x8 digits the
  CIFAR-scale 10 epochs are ~50 steps (see benchmarks/suites/baselines.toml for per-dataset overrides).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from ._baseline_utils import SGDBaseline
from .base import UnlearnRequest, log_range, param, register
from .training import fit


@register("finetune", summary="FT: fine-tune on the retain set only (Warnecke et al. 2023; public-code defaults)",
          paper='Warnecke et al., "Machine Unlearning of Features and Labels", NDSS 2023')
@dataclass(frozen=True)
class Finetune(SGDBaseline):
    lr: float = param(0.01, "learning rate (public code: 0.01)", search=log_range(1e-3, 0.5))
    epochs: float = param(10.0, "epochs over the retain set (public code: 10)",
                          search=log_range(1.0, 10.0))

    def unlearn(self, request: UnlearnRequest) -> nn.Module:
        model = request.model
        fit(model, request.retain, self.sgd_recipe(request, lr=self.lr, epochs=self.epochs), seed=request.seed,
            budget=request.budget)
        return model
