"""SSD: Selective Synaptic Dampening (Foster, Schoepf & Brintrup, "Fast Machine Unlearning Without
Retraining Through Selective Synaptic Dampening", AAAI 2024). Retrain-free: no gradient training.

Algorithm: importances I_D = mean over mini-batches of the squared cross-entropy gradient, on the full
training data D (forget + retain, shuffled together) and on the forget set D_f. A parameter theta_i is
*selected* when I_Df,i > alpha * I_D,i, and a selected parameter is multiplied by
``beta_i = min((lambda * I_D,i / I_Df,i) ** exponent, 1)`` (the bound keeps weights from growing).

Defaults (paper and released code): alpha (selection weighting) 10, lambda (dampening constant) 1,
exponent 1, lower bound 1.

Choices the paper does not make, and the option that selects each:
- importance estimator: mean squared *mini-batch* gradient (the released ``calc_importance``), eval mode,
  true labels; both sets use the same ``batch_size`` (256) so that their scales compare (the squared
  batch-mean gradient shrinks with the batch size).
- D is the concatenation forget + retain, shuffled with a seeded generator (class-sorted batches would
  inflate the full-data importance).
- every parameter is eligible (the released code's min/max layer options are unused).
- budget: each importance pass covers ``budget.epochs(1)`` of its set (a seeded random subset when capped).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ._baseline_utils import batch_grad_importance, budget_prefix
from .base import Method, MethodError, UnlearnRequest, log_range, param, register


@register("ssd", summary="SSD: dampen weights far more important to the forget set than to all data (AAAI 2024)",
          paper='Foster, Schoepf & Brintrup, "Fast Machine Unlearning Without Retraining Through Selective '
                'Synaptic Dampening", AAAI 2024')
@dataclass(frozen=True)
class SSD(Method):
    alpha: float = param(10.0, "selection weighting: select where I_forget > alpha * I_full",
                         search=log_range(1.0, 1000.0))
    dampening: float = param(1.0, "dampening constant lambda: beta = (lambda * I_full / I_forget) ** exponent",
                             search=log_range(0.1, 10.0))
    exponent: float = param(1.0, "exponent of the dampening factor")
    lower_bound: float = param(1.0, "upper cap on beta (1: never enlarge a weight)")
    batch_size: int = param(256, "mini-batch size of both importance passes")

    def unlearn(self, request: UnlearnRequest) -> nn.Module:
        if self.alpha <= 0 or self.dampening <= 0:
            raise MethodError(f"ssd: alpha and dampening must be > 0 (got {self.alpha}, {self.dampening})")
        model = request.model
        full = budget_prefix(request.forget.concat(request.retain), request.budget, request.generator(10))
        forget = budget_prefix(request.forget, request.budget, request.generator(12))
        imp_full = batch_grad_importance(model, full, self.batch_size, generator=request.generator(11))
        imp_forget = batch_grad_importance(model, forget, self.batch_size, generator=request.generator(13))
        selected, total = 0, 0
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name not in imp_full:
                    continue
                o, f = imp_full[name], imp_forget[name]
                sel = f > self.alpha * o
                beta = (self.dampening * o / f.clamp_min(1e-30)).pow(self.exponent).clamp(max=self.lower_bound)
                p.mul_(torch.where(sel, beta, torch.ones_like(beta)).to(p.dtype))
                selected += int(sel.sum())
                total += sel.numel()
        request.info["dampened_fraction"] = selected / max(1, total)
        return model
