"""Boundary Expanding (Chen, Gao, Liu, Peng & Zhou, "Boundary Unlearning: Rapid Forgetting of Deep Networks
via Shifting the Decision Space", CVPR 2023); class forgetting only.

Algorithm: widen the output layer by one "shadow" class, fine-tune the widened model on the forget samples
all labelled with the shadow class (so the forgotten class's region is absorbed by it), then prune the
shadow output: the returned model has the original number of outputs, and the forget samples fall to
whichever original class is now nearest.

Defaults (METHODS.md; the SalUn-repo port ``boundary_ex.py``): lr 1e-5, 10 epochs over the forget set, SGD
momentum 0.9, weight decay 5e-4, batch 256, constant lr; the whole widened network is trained. At CIFAR
scale that is ~200 steps; on the 8x8 digits it changes nothing: benchmarks/suites/baselines.toml overrides
lr/epochs per dataset.

Choices the paper does not make, and the option that selects each:
- the output layer is the model's last ``nn.Linear`` (our models' head output layer).
- the shadow row's initialisation: PyTorch's default ``nn.Linear`` law, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for
  weight and bias (the port builds a fresh layer and copies the old rows over it), drawn from the run's
  seeded generator; the other rows are exact copies.
- pruning keeps the trained original rows (rows 0..C-1) exactly; no option.
- augmentation follows the original recipe; no label smoothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ._baseline_utils import SGDBaseline, ce_loss, last_linear, set_module
from .base import UnlearnRequest, log_range, param, register
from .training import fit


def widen(layer: nn.Linear, generator: torch.Generator) -> nn.Linear:
    """A copy of ``layer`` with one extra output row, initialised like a fresh ``nn.Linear`` row."""
    w = layer.weight
    out = nn.Linear(layer.in_features, layer.out_features + 1, bias=layer.bias is not None, device=w.device,
                    dtype=w.dtype)
    bound = 1.0 / math.sqrt(layer.in_features)
    with torch.no_grad():
        out.weight[:-1] = w
        out.weight[-1] = (torch.rand(layer.in_features, device=w.device, generator=generator) * 2 - 1) * bound
        if layer.bias is not None:
            out.bias[:-1] = layer.bias
            out.bias[-1] = (torch.rand(1, device=w.device, generator=generator)[0] * 2 - 1) * bound
    return out


def prune(layer: nn.Linear, keep: int) -> nn.Linear:
    """A copy of ``layer`` with only its first ``keep`` output rows."""
    w = layer.weight
    out = nn.Linear(layer.in_features, keep, bias=layer.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        out.weight.copy_(w[:keep])
        if layer.bias is not None:
            out.bias.copy_(layer.bias[:keep])
    return out


@register("boundary_expand", tags=("class_only",),
          summary="Boundary Expanding: train forget samples into an extra shadow class, then prune it (CVPR 2023)",
          paper='Chen, Gao, Liu, Peng & Zhou, "Boundary Unlearning: Rapid Forgetting of Deep Networks via '
                'Shifting the Decision Space", CVPR 2023')
@dataclass(frozen=True)
class BoundaryExpand(SGDBaseline):
    lr: float = param(1e-5, "learning rate (public code: 1e-5)", search=log_range(1e-6, 3e-2))
    epochs: float = param(10.0, "epochs over the forget set (public code: 10)", search=log_range(1.0, 20.0))

    def unlearn(self, request: UnlearnRequest) -> nn.Module:
        model = request.model
        c = request.num_classes
        parent, attr, layer = last_linear(model, c)
        set_module(parent, attr, widen(layer, request.generator(5)))
        shadow = request.forget.with_labels(torch.full_like(request.forget.y, c))
        fit(model, shadow, self.sgd_recipe(request, lr=self.lr, epochs=self.epochs), seed=request.seed,
            loss_fn=ce_loss(), budget=request.budget)
        parent, attr, layer = last_linear(model, c + 1)
        set_module(parent, attr, prune(layer, c))
        return model
