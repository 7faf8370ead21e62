"""SCRUB (Kurmanji, Triantafillou, Hayes & Triantafillou, "Towards Unbounded Machine Unlearning",
NeurIPS 2023): a student initialised from the original model is pulled away from the frozen original
(the teacher) on the forget set and kept close to it on the retain set.

Algorithm, per epoch e = 1..E, with one SGD optimiser shared by both kinds of step:
- max-steps (only while e <= ``msteps``): one pass over the forget set minimising
  ``-KL_T(teacher || student)``;
- min-steps: one pass over the retain set minimising ``gamma * CE(student) + alpha * KL_T(teacher || student)``,
where ``KL_T`` is Hinton's distillation loss at temperature T, scaled by T^2 (the released ``DistillKL``).

Defaults are the released code's CIFAR settings: lr 5e-4, T 4, gamma 0.99, alpha 0.001, 3 epochs,
msteps 2, SGD momentum 0.9, weight decay 5e-4, retain batch 128, forget batch 32 (``sgda_batch_size``,
``del_batch_size``), constant lr (its decay epochs 3,5,9 never fire within 3 epochs).

Choices the paper does not make, and the option that selects each:
- the released code also keeps an SWA average of the student but returns the student itself; so do we
  (no option).
- the teacher runs in eval mode; the student in train mode; the KD term ``beta`` of the released code
  is 0 and omitted.
- ``grad_clip``: 0 (default, none, as the authors' release) or a max global gradient norm applied before
  every step (the SCRUB port in the SSD authors' code clips at 1). The ascent on the forget KL is unbounded:
  on a small CNN without BatchNorm, unclipped max-steps can diverge (NaN) at MNIST scale.
- augmentation follows the original recipe for both passes; the CE term has no label smoothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._baseline_utils import SGDBaseline, clip_gradients, frozen_copy, kl_to_teacher, run_epochs
from .base import MethodError, UnlearnRequest, categorical, int_range, log_range, param, register
from .training import forward, make_optimizer


@register("scrub", summary="SCRUB: max-steps away from the teacher on forget, min-steps on retain (NeurIPS 2023)",
          paper='Kurmanji, Triantafillou, Hayes & Triantafillou, "Towards Unbounded Machine Unlearning", NeurIPS '
                "2023")
@dataclass(frozen=True)
class Scrub(SGDBaseline):
    batch_size: int = param(128, "retain (min-step) batch size (released code: 128)",
                             search=categorical(16, 32, 64, 128, 256))
    forget_batch_size: int = param(32, "forget (max-step) batch size (released code: 32)",
                                    search=categorical(8, 16, 32, 64, 128))
    lr: float = param(5e-4, "learning rate (released code: 5e-4)", search=log_range(1e-4, 0.1))
    epochs: float = param(3.0, "epochs; each is a forget pass (while <= msteps) then a retain pass",
                          search=log_range(0.5, 10.0))
    msteps: int = param(2, "number of leading epochs that include the max-step forget pass",
                       search=int_range(1, 6))
    temperature: float = param(4.0, "distillation temperature T")
    gamma: float = param(0.99, "weight of the retain cross-entropy in the min-steps")
    alpha: float = param(0.001, "weight of the retain KL to the teacher in the min-steps",
                         search=log_range(1e-4, 1.0))
    grad_clip: float = param(0.0, "max global gradient norm before each step (0: none, as released; SSD port: 1)",
                             search=categorical(0.0, 1.0, 5.0))

    def unlearn(self, request: UnlearnRequest) -> nn.Module:
        if self.temperature <= 0:
            raise MethodError(f"scrub: temperature must be > 0, got {self.temperature}")
        student = request.model
        teacher = frozen_copy(student)
        t, gamma, alpha = self.temperature, self.gamma, self.alpha

        def max_loss(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                tl = forward(teacher, x)
            return -kl_to_teacher(forward(m, x), tl, t)

        def min_loss(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                tl = forward(teacher, x)
            s = forward(m, x)
            return gamma * F.cross_entropy(s, y) + alpha * kl_to_teacher(s, tl, t)

        retain_recipe = self.sgd_recipe(request, lr=self.lr, epochs=1.0)
        forget_recipe = self.sgd_recipe(request, lr=self.lr, epochs=1.0, batch_size=self.forget_batch_size)
        opt = make_optimizer(student.parameters(), retain_recipe)
        if self.grad_clip > 0:
            opt = clip_gradients(opt, self.grad_clip)

        def phases(e: int):
            out = [(request.forget, forget_recipe, max_loss)] if e < self.msteps else []
            return out + [(request.retain, retain_recipe, min_loss)]

        run_epochs(student, epochs=self.epochs, budget=request.budget, seed=request.seed, optimizer=opt,
                   phases=phases)
        return student
