"""RL (random labels): relabel the forget samples uniformly at random and keep training on them together
with the retain set (Graves, Nagisetty & Ganesh, "Amnesiac Machine Learning", AAAI 2021; the RL baseline of
SalUn, Fan et al., ICLR 2024, whose released code this follows).

Algorithm: each epoch, train with cross-entropy on forget samples carrying random labels (redrawn every
epoch) and retain samples carrying their true labels.

Defaults: lr 0.013, 10 epochs (SalUn README ``--unlearn RL --unlearn_lr 0.013 --unlearn_epochs 10``),
SGD momentum 0.9, weight decay 5e-4, batch 256, constant lr.

Choices the paper does not make, and the option that selects each:
- ``order``: ``mixed`` (default; forget and retain shuffled together, the public code's CIFAR-100 branch and
  METHODS.md) or ``forget_first`` (a forget pass then a retain pass each epoch, its CIFAR-10 branch).
- ``exclude_true_label``: False (default; uniform over all classes, so a sample may get its own label back,
  as ``np.random.randint(0, num_classes)`` in the public code) or True (only the other classes).
- labels are redrawn each time a forget sample is visited (= once per epoch), from a seeded generator.
- augmentation follows the original recipe; no label smoothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from ._baseline_utils import RL_ORDERS, SGDBaseline, random_label_training
from .base import UnlearnRequest, categorical, log_range, param, register


@register("random_label", summary="RL: forget samples get random labels, trained with the retain set",
          paper='Graves, Nagisetty & Ganesh, "Amnesiac Machine Learning", AAAI 2021')
@dataclass(frozen=True)
class RandomLabel(SGDBaseline):
    lr: float = param(0.013, "learning rate (SalUn README: 0.013)", search=log_range(1e-3, 0.3))
    epochs: float = param(10.0, "epochs (one epoch = one pass over forget and retain)",
                          search=log_range(1.0, 10.0))
    order: str = param("mixed", "mixed: forget+retain shuffled together; forget_first: forget pass then retain pass",
                       choices=RL_ORDERS)
    exclude_true_label: bool = param(False, "draw random labels among the other classes only (public code: any)",
                                     search=categorical(False, True))

    def unlearn(self, request: UnlearnRequest) -> nn.Module:
        model = request.model
        random_label_training(model, request, self.sgd_recipe(request, lr=self.lr, epochs=self.epochs),
                              order=self.order, exclude_true=self.exclude_true_label)
        return model
