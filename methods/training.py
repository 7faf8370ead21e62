"""The one training loop, and evaluation.

``fit`` serves original training, retraining, every fine-tuning-style unlearning method and shadow
models: SGD with Nesterov momentum and a one-cycle schedule by default; on CUDA, bf16 autocast and
channels_last for convolutional nets; on the CPU, fp32. Data are device-resident
(:class:`~unlearnbench.datasets.TensorData`); shuffling and augmentation draw from a generator on the
device; nothing in the inner loop synchronises with the host (no ``.item()``), so the GPU never waits
on Python. Methods customise it through ``loss_fn`` (their objective), ``params`` (what is trained),
``post_step`` (e.g. re-imposing a mask) and ``on_epoch_end`` (a stop rule).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from unlearnbench.datasets import TensorData
from unlearnbench.errors import UserError

from .cost import add_passes

SCHEDULES = ("onecycle", "constant", "cosine", "linear")
OPTIMIZERS = ("sgd", "adam")


class RecipeError(UserError, ValueError):
    pass


@dataclass(frozen=True)
class Recipe:
    """How a model is trained: named data in a suite (``[recipes.<name>]``), per dataset and model."""

    epochs: float = 10.0
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    optimizer: str = "sgd"
    schedule: str = "onecycle"
    warmup_frac: float = 0.2
    augment: bool = True
    eval_batch_size: int = 1024

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise RecipeError(f"recipe schedule {self.schedule!r} unknown; choose one of {SCHEDULES}")
        if self.optimizer not in OPTIMIZERS:
            raise RecipeError(f"recipe optimizer {self.optimizer!r} unknown; choose one of {OPTIMIZERS}")
        if self.epochs <= 0 or self.batch_size < 1 or self.lr <= 0:
            raise RecipeError(f"recipe needs epochs > 0, batch_size >= 1 and lr > 0 (got {self})")

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "recipe") -> "Recipe":
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise RecipeError(f"{where}: unknown key(s) {unknown}; a recipe takes {sorted(names)}")
        kwargs = {}
        for k, v in d.items():
            want = type(getattr(cls(), k))
            if want is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if not isinstance(v, want) or (want is int and isinstance(v, bool)):
                raise RecipeError(f"{where}: {k} must be {want.__name__}, got {v!r}")
            kwargs[k] = v
        return cls(**kwargs)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Budget:
    """The harness's cap on a method's work: at most ``max_epochs`` passes over its data."""

    max_epochs: float | None = None

    def epochs(self, wanted: float) -> float:
        return wanted if self.max_epochs is None else min(float(wanted), self.max_epochs)


@dataclass
class FitStats:
    steps: int = 0
    epochs_run: float = 0.0
    stopped_early: bool = False


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (the harness does it before every method call)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def device_generator(device: torch.device | str, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed))


def autocast(device: torch.device | str, enabled: bool = True):
    """bf16 autocast on CUDA, nothing on the CPU (fp32 there keeps runs deterministic)."""
    if enabled and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare(model: nn.Module, device: torch.device | str) -> nn.Module:
    model = model.to(device)
    if torch.device(device).type == "cuda" and getattr(model, "is_conv", False):
        model = model.to(memory_format=torch.channels_last)
    return model


def _layout(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    if x.is_cuda and x.dim() == 4 and getattr(model, "is_conv", False):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def lr_factor(step: int, total: int, schedule: str, warmup_frac: float) -> float:
    """Multiplier of the peak lr at ``step`` of ``total``. ``onecycle``: linear warm-up from 0.1x to 1x
    over ``warmup_frac`` of the steps, then linear decay to 0 (airbench-style; momentum not cycled)."""
    if schedule == "constant" or total <= 1:
        return 1.0
    t = step / total
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "linear":
        return 1.0 - t
    warm = max(1, int(round(warmup_frac * total)))
    if step < warm:
        return 0.1 + 0.9 * step / warm
    return max(0.0, (total - step) / max(1, total - warm))


def make_optimizer(params: Iterable[torch.nn.Parameter], recipe: Recipe, lr: float | None = None):
    lr = recipe.lr if lr is None else lr
    params = [p for p in params if p.requires_grad]
    fused = bool(params) and all(p.is_cuda for p in params)  # one kernel per step on CUDA; CPU keeps foreach
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=recipe.weight_decay, fused=fused or None)
    return torch.optim.SGD(params, lr=lr, momentum=recipe.momentum, nesterov=recipe.nesterov and recipe.momentum > 0,
                           weight_decay=recipe.weight_decay, fused=fused or None)


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` with the memory layout the model runs fastest in (channels_last for conv nets on CUDA).
    Methods' loss functions call this rather than ``model(x)``."""
    return model(_layout(x, model))


def cross_entropy(label_smoothing: float = 0.0) -> LossFn:
    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(forward(model, x), y, label_smoothing=label_smoothing)

    return loss


def fit(model: nn.Module, data: TensorData, recipe: Recipe, *, seed: int, epochs: float | None = None,
        lr: float | None = None, loss_fn: LossFn | None = None, params: Iterable[nn.Parameter] | None = None,
        budget: Budget | None = None, post_step: Callable[[], None] | None = None,
        on_epoch_end: Callable[[int], bool] | None = None, generator: torch.Generator | None = None,
        optimizer: torch.optim.Optimizer | None = None, ragged: str = "fold") -> FitStats:
    """Train ``model`` in place over ``data``; ``epochs`` may be fractional (a partial last pass).

    ``loss_fn(model, x, y)`` defaults to cross-entropy with the recipe's label smoothing;
    ``on_epoch_end(epoch)`` returning True stops training (it may synchronise: once per epoch).
    ``ragged``: ``fold`` (default) puts the ragged rest of an epoch into its last batch, so an epoch is
    exactly ``len(data)`` examples; ``drop`` skips it (the batched shadow trainer's rule, which its loop
    twin follows).
    """
    if ragged not in ("fold", "drop"):
        raise ValueError(f"fit: ragged must be 'fold' or 'drop', got {ragged!r}")
    device = data.device
    epochs = recipe.epochs if epochs is None else float(epochs)
    if budget is not None:
        epochs = budget.epochs(epochs)
    loss_fn = loss_fn or cross_entropy(recipe.label_smoothing)
    gen = generator if generator is not None else device_generator(device, seed)
    # The ragged rest of an epoch is folded into its last batch: every example is used once per epoch (so an
    # epoch is exactly len(data) example passes), and on CUDA there are two batch shapes at most (each new
    # shape costs a cuDNN autotuning pass). A set smaller than one batch is one batch.
    fold = ragged == "fold"
    per_epoch = data.num_batches(recipe.batch_size, fold_last=fold, drop_last=not fold)
    total = max(1, int(math.ceil(epochs * per_epoch)))
    opt = optimizer or make_optimizer(model.parameters() if params is None else params, recipe, lr)
    base_lrs = [g["lr"] for g in opt.param_groups]
    stats = FitStats()
    model.train()
    epoch = 0
    while stats.steps < total:
        for xb, yb in data.batches(recipe.batch_size, shuffle=True, generator=gen, augment=recipe.augment,
                                   fold_last=fold, drop_last=not fold):
            f = lr_factor(stats.steps, total, recipe.schedule, recipe.warmup_frac)
            for g, base in zip(opt.param_groups, base_lrs):
                g["lr"] = base * f
            # autocast wraps the forward pass and loss of ONE step: it caches the low-precision copies of the
            # weights for as long as its region is open, so a region spanning several optimizer steps would
            # keep computing with the first step's weights.
            with autocast(device):
                loss = loss_fn(model, xb, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if post_step is not None:
                post_step()
            stats.steps += 1
            if stats.steps >= total:
                break
        epoch += 1
        stats.epochs_run = stats.steps / per_epoch
        if on_epoch_end is not None and stats.steps < total and on_epoch_end(epoch):
            stats.stopped_early = True
            break
    model.eval()
    return stats


def cycle(data: TensorData, batch_size: int, generator: torch.Generator, augment: bool = False
          ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """An endless stream of shuffled batches (for a second data set paired with the main one)."""
    while True:
        yield from data.batches(batch_size, shuffle=True, generator=generator, augment=augment)


# ------------------------------------------------------------------------------ evaluation


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def _batched_eval(fn, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``fn`` over ``x`` in eval batches. On CUDA a ragged last batch is zero-padded to the full batch size
    (eval mode: samples do not interact) so that every call has the same shape and cuDNN autotunes once."""
    n = x.shape[0]
    outs = []
    for start in range(0, n, batch_size):
        xb = x[start:start + batch_size]
        xb = xb.float().div_(255.0) if xb.dtype == torch.uint8 else xb
        rows = xb.shape[0]
        if x.is_cuda and rows < batch_size and n > batch_size:
            xb = torch.cat([xb, xb.new_zeros((batch_size - rows, *xb.shape[1:]))])
        outs.append(fn(xb)[:rows].float())
    return torch.cat(outs)


@torch.no_grad()
def predict(model: nn.Module, data: TensorData | torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Float32 logits ``[N, C]`` on the data's device, in eval mode (restored afterwards)."""
    x = data.x if isinstance(data, TensorData) else data
    if x.shape[0] == 0:
        return torch.empty(0, 0, device=x.device)
    with eval_mode(model), autocast(x.device):
        return _batched_eval(lambda xb: model(_layout(xb, model)), x, batch_size)


@torch.no_grad()
def predict_features(model: nn.Module, data: TensorData | torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Float32 penultimate features ``model.features(x)``."""
    x = data.x if isinstance(data, TensorData) else data
    add_passes(fwd=x.shape[0])  # a features pass counts as a forward pass (the head is a small MLP)
    with eval_mode(model), autocast(x.device):
        return _batched_eval(lambda xb: model.features(_layout(xb, model)), x, batch_size)


def accuracy(model: nn.Module, data: TensorData, batch_size: int = 1024) -> float:
    if len(data) == 0:
        return float("nan")
    logits = predict(model, data, batch_size)
    return float((logits.argmax(1) == data.y).float().mean())
