"""EU-k and CF-k: retrain or fine-tune only the last k layers on the retain set (Goel, Prabhu, Sanyal,
Lim, Torr & Kumaraguru, "Towards Adversarial Evaluations for Inexact Machine Unlearning",
arXiv 2201.06640, 2022).

Algorithm: keep every layer but the last ``k`` frozen at the trained weights. **EU-k** (exact unlearning
of the last k layers, ``reinit = true``, the default) re-initialises those k layers and trains them on
the retain set; **CF-k** (catastrophic forgetting of the last k layers, ``reinit = false``) fine-tunes
them from their trained values on the retain set. The frozen layers carry whatever the forget set left
in them: that residue is what the paper's evaluations probe.

This is unlearnbench's example plug-in: a package outside the repository that registers a method
through the ``unlearnbench.methods`` entry point (see its ``pyproject.toml``) and passes
``unlearnbench check-method eu_k``.

Choices the paper does not make for these architectures, and the option that selects each:
- "layers" are the Linear layers of the model's ReLU MLP ``head`` (counted from the output), so ``k``
  ranges over the head only (tag ``needs_relu_head``: other models are recorded as not applicable); a
  ``k`` above the head's depth is an error naming the depth.
- re-initialisation takes those layers from ``request.new_model()``: the seeded initialisation the
  original training started from, so EU-k with k = every layer of a head-only model would be retraining.
- optimiser: the original recipe's (SGD, momentum, weight decay, schedule, augmentation) with this
  method's ``lr`` and ``epochs``; ``epochs`` defaults to 10 and is capped by the harness's budget.
- frozen layers do not get gradients; batch-norm running statistics in them (ResNet) are still updated
  by the training passes, because the training loop puts the whole model in train mode.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from unlearnbench.methods import Method, MethodError, UnlearnRequest, fit, int_range, log_range, param, register
from unlearnbench.methods.models import head_linears


@register("eu_k", tags=("needs_relu_head",), paper="Goel et al., Towards Adversarial Evaluations for Inexact "
          "Machine Unlearning, arXiv 2201.06640 (2022)",
          summary="EU-k / CF-k: retrain (or fine-tune) only the last k head layers on the retain set (example plug-in)")
@dataclass(frozen=True)
class EUk(Method):
    k: int = param(1, "how many Linear layers of the head, counted from the output, are retrained",
                   search=int_range(1, 3))
    reinit: bool = param(True, "re-initialise those layers first (EU-k); false fine-tunes them (CF-k)")
    lr: float = param(0.05, "learning rate of the retrained layers", search=log_range(1e-3, 0.5))
    epochs: float = param(10.0, "epochs over the retain set (capped by the harness's budget)",
                          search=log_range(1.0, 30.0))

    def unlearn(self, request: UnlearnRequest) -> nn.Module:
        model = request.model
        layers = head_linears(model)
        if not 1 <= self.k <= len(layers):
            raise MethodError(f"method 'eu_k': k = {self.k}, but the head has {len(layers)} Linear layer(s): choose "
                              f"k in 1..{len(layers)}")
        chosen = layers[-self.k:]
        if self.reinit:
            fresh = head_linears(request.new_model())[-self.k:]
            with torch.no_grad():
                for layer, init in zip(chosen, fresh):
                    layer.weight.copy_(init.weight)
                    layer.bias.copy_(init.bias)
        trained = [p for layer in chosen for p in layer.parameters()]
        keep = {id(p) for p in trained}
        frozen = [p for p in model.parameters() if id(p) not in keep and p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            fit(model, request.retain, replace(request.recipe, lr=self.lr), seed=request.seed, epochs=self.epochs,
                params=trained, budget=request.budget)
        finally:
            for p in frozen:
                p.requires_grad_(True)
        return model
