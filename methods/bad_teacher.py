"""Bad Teacher (Chundawat, Tarun, Mandal & Kankanhalli, "Can Bad Teaching Induce Forgetting? Unlearning in
Deep Networks Using an Incompetent Teacher", AAAI 2023).

Algorithm: a student initialised from the trained model is distilled, with KL divergence at temperature T,
from two teachers: the competent one (the frozen original model) on retain samples, and an incompetent one
(a randomly initialised network of the same architecture) on forget samples. The training set is the
forget set plus a random ``retain_fraction`` of the retain set, shuffled together.

Defaults are the released code's (``blindspot_unlearner``): KL with T 1, Adam lr 1e-4 without weight decay,
1 epoch, batch 256, 30% of the retain set.

Choices the paper does not make, and the option that selects each:
- the incompetent teacher is the harness's freshly initialised model of the architecture
  (``request.new_model()``: the seeded initialisation the original training started from).
- KL reduction: averaged over the batch (``batchmean``); the released code's ``F.kl_div`` default averages over
  batch x classes, a constant factor 1/C that Adam all but ignores. No T^2 factor (as released).
- the retain subset is drawn once from a seeded generator; both teachers run in eval mode.
- augmentation follows the original recipe; ``retain_fraction`` (0.3) is an option.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._baseline_utils import frozen_copy, mark, subsample
from .base import Method, MethodError, UnlearnRequest, categorical, linear_range, log_range, param, register
from .training import fit, forward


@register("bad_teacher",
          summary="Bad Teacher: distil from the original on retain and a random net on forget (AAAI 2023)",
          paper='Chundawat, Tarun, Mandal & Kankanhalli, "Can Bad Teaching Induce Forgetting? Unlearning in Deep '
                'Networks Using an Incompetent Teacher", AAAI 2023')
@dataclass(frozen=True)
class BadTeacher(Method):
    lr: float = param(1e-4, "Adam learning rate (released code: 1e-4)", search=log_range(1e-5, 1e-2))
    epochs: float = param(1.0, "epochs over forget + retain subset (released code: 1)",
                          search=log_range(0.5, 10.0))
    batch_size: int = param(256, "mini-batch size (released code: 256)", search=categorical(16, 32, 64, 128, 256))
    temperature: float = param(1.0, "KL temperature T (released code: 1)", search=log_range(0.5, 4.0))
    retain_fraction: float = param(0.3, "fraction of the retain set used (released code: 30%)",
                                   search=linear_range(0.1, 1.0))
    weight_decay: float = param(0.0, "Adam weight decay (released code: none)")

    def unlearn(self, request: UnlearnRequest) -> nn.Module:
        if not 0.0 < self.retain_fraction <= 1.0:
            raise MethodError(f"bad_teacher: retain_fraction must lie in (0, 1], got {self.retain_fraction}")
        if self.temperature <= 0:
            raise MethodError(f"bad_teacher: temperature must be > 0, got {self.temperature}")
        student = request.model
        good = frozen_copy(student)
        bad = frozen_copy(request.new_model())
        retain = subsample(request.retain, self.retain_fraction, request.generator(4))
        data = mark(request.forget).concat(retain)
        t = self.temperature

        def loss(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                forget_row = (y < 0).unsqueeze(1)
                p_t = torch.where(forget_row, F.softmax(forward(bad, x).float() / t, dim=1),
                                  F.softmax(forward(good, x).float() / t, dim=1))
            log_s = F.log_softmax(forward(m, x).float() / t, dim=1)
            return F.kl_div(log_s, p_t, reduction="batchmean")

        recipe = dataclasses.replace(request.recipe, epochs=float(self.epochs), lr=self.lr, batch_size=self.batch_size,
                                     optimizer="adam", weight_decay=self.weight_decay, label_smoothing=0.0,
                                     schedule="constant")
        fit(student, data, recipe, seed=request.seed, loss_fn=loss, budget=request.budget)
        return student
