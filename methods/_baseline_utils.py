"""Pieces shared by the baseline zoo (``finetune`` ... ``ssd``); not a method module (the leading underscore
keeps it out of :func:`unlearnbench.methods.load_all`).

- :class:`SGDBaseline`: the optimiser fields every fine-tuning baseline shares, with the public CIFAR-10
  ResNet-18 code's values (SGD, momentum 0.9 without Nesterov, weight decay 5e-4, batch 256, a constant
  learning rate: the SalUn/Unlearn-Sparse ``MultiStepLR`` milestones 91,136 never fire within 10 epochs),
  and :meth:`SGDBaseline.sgd_recipe` that turns them into a :class:`Recipe`.
- :func:`run_epochs`: epochs made of several passes (e.g. SCRUB's forget pass then retain pass) sharing one
  optimiser and one shuffling stream, capped by the budget.
- Losses: plain/negated cross-entropy, temperature KL distillation, random relabelling of marked rows.
- Marking forget rows inside one :class:`TensorData`: label ``-1 - y`` (so the true label is recoverable).
- :func:`fisher_diagonal` (per-example squared gradients of ``log p``, via ``torch.func``),
  :func:`batch_grad_importance` (mean squared mini-batch gradient, as SSD's code), :func:`subsample`.
- :func:`last_linear`: the output layer (the last ``nn.Linear`` in module order).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from unlearnbench.datasets import TensorData

from .base import Bounds, Method, MethodError, UnlearnRequest, categorical, param
from .cost import add_passes
from .training import Budget, LossFn, Recipe, device_generator, fit, forward, make_optimizer


@dataclass(frozen=True)
class SGDBaseline(Method):
    """Optimiser fields shared by the fine-tuning baselines (public CIFAR-10 ResNet-18 code defaults)."""

    batch_size: int = param(256, "mini-batch size (public CIFAR-10 code: 256)",
                             search=categorical(16, 32, 64, 128, 256), bounds=Bounds(1))
    momentum: float = param(0.9, "SGD momentum, plain (not Nesterov) as in the public code",
                            bounds=Bounds(0, 1, high_open=True))
    weight_decay: float = param(5e-4, "SGD weight decay (public code: 5e-4)", bounds=Bounds(0))

    def sgd_recipe(self, request: UnlearnRequest, *, lr: float, epochs: float, batch_size: int | None = None
                   ) -> Recipe:
        """The method's own recipe: SGD, constant lr, no label smoothing, the original recipe's augmentation."""
        return dataclasses.replace(
            request.recipe, epochs=float(epochs), lr=float(lr),
            batch_size=int(batch_size if batch_size is not None else self.batch_size), momentum=self.momentum,
            nesterov=False, weight_decay=self.weight_decay, label_smoothing=0.0, optimizer="sgd",
            schedule="constant")


# ------------------------------------------------------------------------------------ loops

Phase = tuple[TensorData, Recipe, LossFn]


def run_epochs(model: nn.Module, *, epochs: float, budget: Budget, seed: int, optimizer: torch.optim.Optimizer,
               phases: Callable[[int], list[Phase]], post_step: Callable[[], None] | None = None) -> int:
    """Run ``epochs`` epochs (capped by ``budget``), epoch ``e`` being the passes ``phases(e)`` in order, all
    with one optimiser and one shuffling generator. A fractional last epoch runs that fraction of each pass.
    Returns the number of epochs started."""
    total = budget.epochs(epochs)
    done = 0
    gen: torch.Generator | None = None
    while total - done > 1e-9:
        frac = min(1.0, total - done)
        for data, recipe, loss_fn in phases(done):
            if len(data) == 0:
                continue
            if gen is None:
                gen = device_generator(data.device, seed)
            fit(model, data, recipe, seed=seed, epochs=frac, loss_fn=loss_fn, optimizer=optimizer, generator=gen,
                post_step=post_step, budget=budget)
        done += 1
    return done


def clip_gradients(optimizer: torch.optim.Optimizer, max_norm: float) -> torch.optim.Optimizer:
    """Make ``optimizer.step()`` clip the global gradient norm of its parameters to ``max_norm`` first
    (on the device, no host synchronisation), so that :func:`fit` can use it unchanged."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    step = optimizer.step

    def clipped_step(closure=None):
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return step(closure)

    optimizer.step = clipped_step  # type: ignore[method-assign]
    return optimizer


# ------------------------------------------------------------------------------------ losses


def ce_loss(sign: float = 1.0) -> LossFn:
    """``sign * CE(f(x), y)`` (``sign = -1``: gradient ascent on the cross-entropy)."""

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return sign * F.cross_entropy(forward(model, x), y)

    return loss


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
                  ) -> torch.Tensor:
    """``KL(softmax(t/T) || softmax(s/T)) * T^2`` averaged over the batch (Hinton's distillation loss,
    SCRUB's ``DistillKL``)."""
    t = temperature
    log_s = F.log_softmax(student_logits.float() / t, dim=1)
    p_t = F.softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_s, p_t, reduction="batchmean") * (t * t)


def frozen_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy whose parameters need no gradient (a teacher, or the original for an attack)."""
    out = copy.deepcopy(model)
    out.eval()
    for p in out.parameters():
        p.requires_grad_(False)
    return out


# ----------------------------------------------------------------------------- marked rows


def mark(data: TensorData) -> TensorData:
    """The same images with labels ``-1 - y``: negative labels mark these rows inside a concatenation."""
    return data.with_labels(-1 - data.y)


def random_relabel(num_classes: int, generator: torch.Generator, exclude_true: bool = False
                   ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Map marked labels (``-1 - y``) to fresh uniform random labels, each time a batch is seen; unmarked
    labels pass through. ``exclude_true``: draw among the other ``C - 1`` classes only."""

    def relabel(y: torch.Tensor) -> torch.Tensor:
        marked = y < 0
        true = torch.where(marked, -1 - y, y)
        if exclude_true:
            r = (true + 1 + torch.randint(num_classes - 1, y.shape, device=y.device, generator=generator)) % num_classes
        else:
            r = torch.randint(num_classes, y.shape, device=y.device, generator=generator)
        return torch.where(marked, r, y)

    return relabel


def random_label_loss(num_classes: int, generator: torch.Generator, exclude_true: bool = False) -> LossFn:
    """Cross-entropy where marked rows (forget samples) get uniform random labels (RL, SalUn)."""
    relabel = random_relabel(num_classes, generator, exclude_true)

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(forward(model, x), relabel(y))

    return loss


# ------------------------------------------------------------------------------ sampling


def subsample(data: TensorData, fraction: float, generator: torch.Generator) -> TensorData:
    """A uniformly random ``fraction`` of ``data`` (at least one row), in a seeded random order."""
    n = len(data)
    k = min(n, max(1, int(math.ceil(fraction * n))))
    if k >= n:
        return data
    perm = torch.randperm(n, device=data.device, generator=generator)
    return data.subset(perm[:k])


def per_class(data: TensorData, k: int, num_classes: int, generator: torch.Generator) -> TensorData:
    """At most ``k`` random rows of each class (``k <= 0``: all rows)."""
    if k <= 0:
        return data
    perm = torch.randperm(len(data), device=data.device, generator=generator)
    y = data.y[perm]
    keep = [perm[y == c][:k] for c in range(num_classes)]
    return data.subset(torch.sort(torch.cat(keep)).values)


# -------------------------------------------------------------------------- importances


def fisher_diagonal(model: nn.Module, data: TensorData, *, kind: str = "empirical", chunk: int = 64
                    ) -> dict[str, torch.Tensor]:
    """Diagonal Fisher information, averaged over the examples of ``data``, in eval mode, fp32.

    ``empirical``: ``E_x[(d log p_y(x) / d theta)^2]`` with the true label y (the per-example loop of the
    Unlearn-Sparse/SalUn ``fisher`` code, vectorised with ``torch.func.vmap``). ``true``:
    ``E_x[sum_k p_k(x) (d log p_k(x) / d theta)^2]``, the expectation under the model's own predictive
    distribution (Golatkar et al.'s ``hessian``; exact here, per example)."""
    from torch.func import functional_call, grad, jacrev, vmap

    if kind not in ("empirical", "true"):
        raise MethodError(f"fisher kind must be 'empirical' or 'true', got {kind!r}")
    was = model.training
    model.eval()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}

    def log_probs(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(functional_call(model, (p, buffers), (x.unsqueeze(0),)).float(), dim=1)[0]

    def logp_y(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return log_probs(p, x).gather(0, y.view(1))[0]

    if kind == "empirical":
        per_example = vmap(grad(logp_y), in_dims=(None, 0, 0))
    else:
        per_example = vmap(jacrev(log_probs), in_dims=(None, 0))
        chunk = max(1, chunk // 8)
    n = 0
    try:
        for xb, yb in data.batches(chunk):
            if kind == "empirical":
                g = per_example(params, xb, yb)
                add_passes(fwd=len(yb), bwd=len(yb))  # vmap is not counted by the network: one grad per example
                for name in names:
                    acc[name] += g[name].float().pow(2).sum(0)
            else:
                with torch.no_grad():
                    prob = F.softmax(functional_call(model, (params, buffers), (xb,)).float(), dim=1)  # [B, C]
                jac = per_example(params, xb)  # name -> [B, C, *shape]
                add_passes(fwd=len(yb), bwd=len(yb) * prob.shape[1])  # a Jacobian of C outputs: C backward passes
                for name in names:
                    j = jac[name].float().pow(2)
                    acc[name] += torch.einsum("bc,bc...->...", prob, j)
            n += int(yb.shape[0])
    finally:
        model.train(was)
    return {k: v / max(1, n) for k, v in acc.items()}


def batch_grad_importance(model: nn.Module, data: TensorData, batch_size: int,
                          generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Mean over mini-batches of the squared cross-entropy gradient (eval mode), as SSD's ``calc_importance``;
    batches are shuffled when a ``generator`` is given."""
    was = model.training
    model.eval()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    batches = 0
    try:
        for xb, yb in data.batches(batch_size, shuffle=generator is not None, generator=generator):
            loss = F.cross_entropy(forward(model, xb).float(), yb)
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for (name, _), g in zip(params.items(), grads):
                if g is not None:
                    acc[name] += g.float().pow(2)
            batches += 1
    finally:
        model.train(was)
    return {k: v / max(1, batches) for k, v in acc.items()}


def budget_prefix(data: TensorData, budget: Budget, generator: torch.Generator,
                  max_samples: int | None = None) -> TensorData:
    """The part of ``data`` a one-pass estimate may look at: ``budget.epochs(1)`` of it (and at most
    ``max_samples`` rows), a seeded random subset when capped."""
    frac = budget.epochs(1.0)
    n = len(data)
    k = n if frac >= 1.0 else max(1, int(math.ceil(frac * n)))
    if max_samples is not None and max_samples > 0:
        k = min(k, max_samples)
    if k >= n:
        return data
    perm = torch.randperm(n, device=data.device, generator=generator)
    return data.subset(perm[:k])


# ------------------------------------------------------------------------------- layers


def last_linear(model: nn.Module, num_classes: int) -> tuple[nn.Module, str, nn.Linear]:
    """(parent module, attribute name, layer) of the output layer: the last ``nn.Linear`` in module order,
    which must have ``num_classes`` outputs."""
    found: tuple[str, nn.Linear] | None = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            found = (name, m)
    if found is None:
        raise MethodError("the model has no nn.Linear output layer")
    name, layer = found
    if layer.out_features != num_classes:
        raise MethodError(f"the last nn.Linear ({name}) has {layer.out_features} outputs, expected the "
                          f"{num_classes} classes")
    parent = model
    parts = name.split(".")
    for part in parts[:-1]:
        parent = getattr(parent, part)
    return parent, parts[-1], layer


def set_module(parent: nn.Module, attr: str, module: nn.Module) -> None:
    if isinstance(parent, nn.Sequential) and attr.isdigit():
        parent[int(attr)] = module
    else:
        setattr(parent, attr, module)


# ------------------------------------------------------------------------- random labels

RL_ORDERS = ("mixed", "forget_first")


def random_label_training(model: nn.Module, request: UnlearnRequest, recipe: Recipe, *, order: str = "mixed",
                          exclude_true: bool = False, post_step: Callable[[], None] | None = None) -> None:
    """Train on the forget set with uniformly random labels (redrawn every time a sample is seen, as the
    public code redraws them every epoch) together with the retain set with true labels.

    ``mixed``: one shuffled pass over forget + retain per epoch (the public code's CIFAR-100 branch);
    ``forget_first``: a pass over the forget set, then a pass over the retain set (its CIFAR-10 branch)."""
    if order not in RL_ORDERS:
        raise MethodError(f"random-label order must be one of {RL_ORDERS}, got {order!r}")
    loss = random_label_loss(request.num_classes, request.generator(2), exclude_true)
    forget = mark(request.forget)
    if order == "mixed":
        fit(model, forget.concat(request.retain), recipe, seed=request.seed, loss_fn=loss, budget=request.budget,
            post_step=post_step)
        return
    opt = make_optimizer(model.parameters(), recipe)
    run_epochs(model, epochs=recipe.epochs, budget=request.budget, seed=request.seed, optimizer=opt,
               phases=lambda e: [(forget, recipe, loss), (request.retain, recipe, loss)], post_step=post_step)
