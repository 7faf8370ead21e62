"""SalUn: saliency unlearning (Fan, Liu, Zhang, Wong, Wei & Liu, "SalUn: Empowering Machine Unlearning via
Gradient-based Weight Saliency in Both Image Classification and Generation", ICLR 2024).

Algorithm:
1. Weight saliency: g = |sum over forget batches of grad(-CE(f(x_f), y_f))| at the original weights.
2. Mask m: the ``mask_fraction`` (default 50%) of all weights with the largest g, one threshold over the
   whole network (the public ``generate_mask.py`` concatenates every parameter before ranking).
3. Random-label unlearning (as ``random_label``) that updates only the weights inside the mask.

Defaults: mask 50%; RL lr 0.013, 10 epochs (SalUn README), SGD momentum 0.9, weight decay 5e-4, batch 256.

A public-code bug that must not come back: the released code multiplied the gradients by the mask, but
SGD's weight decay and momentum still moved the weights outside it. Here the weights outside the mask are
put back to their original values after every optimiser step (``fit(post_step=...)``). SGD and Adam are
elementwise, so this equals masking the gradient, the decay and the momentum of those weights, and the
weights outside the mask end bit-identical to the original (tests/test_baselines.py checks it).
BatchNorm running statistics are buffers, not weights: they follow training as in the public code.

Choices the paper does not make, and the option that selects each:
- ``mask_select``: ``largest`` (default: the paper's "top" salient weights) or ``smallest``. The public
  ``generate_mask.py`` ranks |g| in ascending order and keeps ranks below the threshold index, which reads
  as the *least* salient fraction; ``smallest`` reproduces that reading.
- threshold ties: weights are ranked by a stable sort of |g| (parameter order breaks ties), and exactly
  ``floor(mask_fraction * n_weights)`` weights enter the mask.
- the saliency pass does not update the model (the public script also took SGD steps between forget
  batches while accumulating, so its saliency depended on batch order); eval mode; capped by the budget
  as a fraction of the forget set.
- ``order`` / ``exclude_true_label``: as in ``random_label`` (default ``mixed``, labels over all classes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from unlearnbench.datasets import TensorData

from ._baseline_utils import RL_ORDERS, SGDBaseline, budget_prefix, random_label_training
from .base import MethodError, UnlearnRequest, categorical, linear_range, log_range, param, register
from .training import Budget, forward

MASK_SELECT = ("largest", "smallest")


def saliency(model: nn.Module, forget: TensorData, batch_size: int) -> dict[str, torch.Tensor]:
    """|sum over forget batches of grad(-CE)| per parameter, at the current weights, in eval mode."""
    was = model.training
    model.eval()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    try:
        for xb, yb in forget.batches(batch_size):
            loss = -F.cross_entropy(forward(model, xb).float(), yb)
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for name, g in zip(params, grads):
                if g is not None:
                    acc[name] += g.float()
    finally:
        model.train(was)
    return {n: g.abs() for n, g in acc.items()}


def saliency_mask(model: nn.Module, forget: TensorData, *, fraction: float = 0.5, batch_size: int = 256,
                  select: str = "largest", budget: Budget = Budget(),
                  generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Boolean masks (per parameter name): the ``fraction`` of all weights with the largest (or smallest)
    saliency, ranked together over the whole network."""
    if select not in MASK_SELECT:
        raise MethodError(f"salun: mask_select must be one of {MASK_SELECT}, got {select!r}")
    if not 0.0 <= fraction <= 1.0:
        raise MethodError(f"salun: mask_fraction must lie in [0, 1], got {fraction}")
    if generator is not None:
        forget = budget_prefix(forget, budget, generator)
    sal = saliency(model, forget, batch_size)
    names = list(sal)
    flat = torch.cat([sal[n].flatten() for n in names])
    k = int(fraction * flat.numel())
    order = torch.argsort(flat, descending=(select == "largest"), stable=True)
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    chosen[order[:k]] = True
    out, start = {}, 0
    for n in names:
        size = sal[n].numel()
        out[n] = chosen[start:start + size].view_as(sal[n])
        start += size
    return out


@register("salun", summary="SalUn: random-label unlearning restricted to the 50% most salient weights (ICLR 2024)",
          paper='Fan, Liu, Zhang, Wong, Wei & Liu, "SalUn: Empowering Machine Unlearning via Gradient-based '
                'Weight Saliency in Both Image Classification and Generation", ICLR 2024')
@dataclass(frozen=True)
class SalUn(SGDBaseline):
    lr: float = param(0.013, "learning rate of the random-label stage (SalUn README: 0.013)",
                      search=log_range(1e-3, 0.3))
    epochs: float = param(10.0, "epochs of the random-label stage", search=log_range(1.0, 10.0))
    mask_fraction: float = param(0.5, "fraction of all weights inside the saliency mask (paper: 50%)",
                                 search=linear_range(0.1, 0.9))
    mask_select: str = param("largest", "largest: the most salient weights (paper); smallest: the public "
                             "generate_mask.py's ascending-rank reading", choices=MASK_SELECT)
    order: str = param("mixed", "random-label stage: mixed (forget+retain shuffled) or forget_first",
                       choices=RL_ORDERS)
    exclude_true_label: bool = param(False, "draw random labels among the other classes only (public code: any)",
                                     search=categorical(False, True))

    def unlearn(self, request: UnlearnRequest) -> nn.Module:
        model = request.model
        mask = saliency_mask(model, request.forget, fraction=self.mask_fraction, batch_size=self.batch_size,
                             select=self.mask_select, budget=request.budget, generator=request.generator(3))
        params = dict(model.named_parameters())
        frozen = [(params[n], params[n].detach().clone(), m) for n, m in mask.items() if not bool(m.all())]

        @torch.no_grad()
        def restore() -> None:
            for p, p0, m in frozen:
                p.copy_(torch.where(m, p, p0))

        random_label_training(model, request, self.sgd_recipe(request, lr=self.lr, epochs=self.epochs),
                              order=self.order, exclude_true=self.exclude_true_label, post_step=restore)
        total = sum(m.numel() for m in mask.values())
        request.info["mask_fraction"] = float(sum(int(m.sum()) for m in mask.values()) / max(1, total))
        return model
