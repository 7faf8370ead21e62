"""Shadow models for LiRA and U-LiRA: K models of the target's architecture, each trained with the
suite's recipe on its own subset of a pool.

Public API::

    train_shadow_models(make_model, data, memberships, recipe, seeds, device, mode="auto")
        -> list of K state_dicts (tensors on ``device``)

``memberships[k, i]`` says whether pool example ``i`` is in shadow ``k``'s training set;
``balanced_memberships`` draws one in which every example is IN for exactly half of the shadows
(Carlini et al. 2022) and, beyond the reference code, every shadow has the same size (±1), so that
batched shadows stay in step.

Initialisation: shadow ``k`` is ``make_model()`` with every submodule's ``reset_parameters()``
called under ``torch.manual_seed(seeds[k])`` (on the CPU, then moved to the device): the
architecture of the target, a different draw of its initialisation.

Two trainers, chosen by ``mode``:

- ``loop``: for each shadow, :func:`unlearnbench.methods.training.fit` on ``data.subset(IN_k)`` with
  ``seed=seeds[k]`` -- exactly how the harness trains the original model.
- ``vmap``: all K at once with ``torch.func`` (``stack_module_state`` + ``functional_call`` +
  ``vmap(grad(...))``). The training procedure is ``fit``'s, re-implemented functionally: each shadow
  draws its epoch permutations from ``device_generator(device, seeds[k])`` as ``fit`` does (so with
  augmentation off its batches are the loop's batches, in the same order, the last batch of an epoch
  partial), the recipe's lr schedule over the shadow's own step count, and torch.optim's update rules
  (SGD with momentum, Nesterov and coupled weight decay; or Adam with L2 weight decay). Choices that
  differ from ``fit``: fp32 (TF32 where the harness enables it) instead of bf16 autocast -- vmap with
  bf16 autocast and BatchNorm fails in torch 2.11 -- and no channels_last; augmentation, when on, is
  drawn for all shadows at once from one generator (same distribution, not the same draws).
  BatchNorm: running statistics are stacked buffers passed to ``functional_call`` and updated in place
  under vmap in train mode, so a vmapped shadow evaluates exactly like a looped one (we do not use
  ``replace_all_batch_norm_modules_``, which would make eval mode use batch statistics). Steps at
  which shadows' batch sizes differ (a partial last batch) are vmapped per group of equal size, so
  every gradient is the mean over the real batch, with no padding.
- ``auto``: ``vmap`` on CUDA for models of at most 1 M parameters, ``loop`` otherwise, and ``loop`` on
  the CPU (the CPU is busy with one model already, and ``fit`` there is the bit-for-bit deterministic
  path). vmap pays off only while one model leaves the GPU idle (ANCHORS.md): the MNIST small CNN
  (0.43 M parameters, batch 256) trains 4.8x faster batched at K=16 and 1.7x at K=64, ResNet-18
  (11 M) gains nothing. Parameter count is a crude proxy for "leaves the GPU idle"; the threshold sits
  between the two measured models, and ``python -m unlearnbench.benchmarks.perf.shadow_cost``
  re-measures both sides on a given GPU.

Equivalence (``tests/test_lira.py``): on a tiny MLP on the CPU without augmentation, vmapped and
looped shadows agree to within 1e-4 in every parameter after several epochs (fp32 summation order is
the only difference).
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from unlearnbench.datasets import TensorData, apply_augment
from unlearnbench.methods.training import Recipe, device_generator, fit, lr_factor, prepare

MODES = ("auto", "vmap", "loop")
VMAP_MAX_PARAMS = 1_000_000


class ShadowError(ValueError):
    pass


# ------------------------------------------------------------------------------ memberships


def balanced_memberships(k: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """A bool ``[k, n]`` matrix: every column has exactly k/2 True (each example IN for half of the
    shadows, drawn at random as in Carlini et al.'s reference code), then rows are evened out to
    n/2 (±1 when n is odd) by random swaps inside columns, which keep the column sums."""
    if k < 2 or k % 2:
        raise ShadowError(f"the number of shadow models must be even and >= 2 (got {k}), so that every "
                          "example is IN for exactly half of them")
    if n < 2:
        raise ShadowError(f"a shadow pool needs at least 2 examples (got {n})")
    keep = np.argsort(rng.uniform(size=(k, n)), axis=0) < k // 2
    target = np.full(k, n // 2)
    target[rng.permutation(k)[: (n * k // 2) - k * (n // 2)]] += 1  # n odd: half of the rows get one more
    rows = keep.sum(1)
    while True:
        over = np.flatnonzero(rows > target)
        under = np.flatnonzero(rows < target)
        if len(over) == 0:
            break
        a, b = over[0], under[0]
        cand = np.flatnonzero(keep[a] & ~keep[b])
        m = min(rows[a] - target[a], target[b] - rows[b], len(cand))
        pick = rng.choice(cand, m, replace=False)
        keep[a, pick], keep[b, pick] = False, True
        rows[a] -= m
        rows[b] += m
    return keep


# ------------------------------------------------------------------------------ models


def init_shadow(make_model: Callable[[], nn.Module], seed: int, device: torch.device | str) -> nn.Module:
    """``make_model()`` re-initialised from ``seed``: every submodule's ``reset_parameters`` under
    ``torch.manual_seed(seed)`` on the CPU (device-independent), then moved to the device."""
    model = make_model().to("cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for m in model.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
    return prepare(model, device)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def resolve_mode(mode: str, model: nn.Module, device: torch.device | str) -> str:
    if mode not in MODES:
        raise ShadowError(f"shadow trainer mode {mode!r} unknown; choose one of {MODES}")
    if mode != "auto":
        return mode
    if torch.device(device).type == "cuda" and count_params(model) <= VMAP_MAX_PARAMS:
        return "vmap"
    return "loop"


# ------------------------------------------------------------------------------ training


def train_shadow_models(make_model: Callable[[], nn.Module], data: TensorData, memberships, recipe: Recipe,
                        seeds: Sequence[int], device: torch.device | str, mode: str = "auto",
                        epochs: float | None = None) -> list[dict[str, torch.Tensor]]:
    """Train K shadow models; shadow k sees ``data.subset(nonzero(memberships[k]))``.

    ``memberships``: bool ``[K, N]`` (numpy or torch) with ``N == len(data)``; ``seeds``: K ints (init
    and data order of each shadow); ``mode``: ``auto`` | ``vmap`` | ``loop`` (see the module doc).
    Returns K state_dicts with tensors on ``device``, in eval-ready form (as after ``fit``).
    """
    member = np.asarray(memberships.cpu() if isinstance(memberships, torch.Tensor) else memberships, dtype=bool)
    if member.ndim != 2 or member.shape[1] != len(data):
        raise ShadowError(f"memberships must be bool [K, N] with N = len(data) = {len(data)}, got {member.shape}")
    if len(seeds) != member.shape[0]:
        raise ShadowError(f"{member.shape[0]} membership rows but {len(seeds)} seeds; give one seed per shadow")
    empty = np.flatnonzero(member.sum(1) == 0)
    if len(empty):
        raise ShadowError(f"shadow(s) {empty[:5].tolist()} have no training example")
    device = torch.device(device)
    if data.device.type != device.type:
        raise ShadowError(f"the pool lives on {data.device} but the shadows are to train on {device}; move it "
                          "there first (TensorData.from_imageset(..., device))")
    probe = make_model()
    chosen = resolve_mode(mode, probe, device)
    del probe
    if chosen == "loop":
        return _train_loop(make_model, data, member, recipe, list(seeds), device, epochs)
    return _train_vmap(make_model, data, member, recipe, list(seeds), device, epochs)


def _train_loop(make_model, data: TensorData, member: np.ndarray, recipe: Recipe, seeds: list[int],
                device: torch.device, epochs: float | None) -> list[dict[str, torch.Tensor]]:
    states = []
    for k, seed in enumerate(seeds):
        model = init_shadow(make_model, seed, device)
        idx = torch.as_tensor(np.flatnonzero(member[k]), device=data.device)
        fit(model, data.subset(idx), recipe, seed=seed, epochs=epochs, ragged="drop")
        states.append({n: t.detach() for n, t in model.state_dict().items()})
    return states


def _schedule(n: np.ndarray, batch: int, epochs: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per shadow: batches per epoch, total steps (as ``fit`` counts them) and the batch size at every
    step (0 once the shadow has finished), shape ``[T_max, K]``."""
    # shadows drop the ragged last batch of an epoch (fit's ragged="drop"; a set smaller than one batch is one
    # batch), so that every step of every shadow has the same batch size
    per_epoch = np.where(n >= batch, n // batch, 1)
    total = np.maximum(1, np.ceil(epochs * per_epoch).astype(np.int64))
    t_max = int(total.max())
    steps = np.arange(t_max)[:, None]
    size = np.broadcast_to(np.minimum(batch, n)[None, :], (t_max, len(n)))
    size = np.where(steps < total[None, :], size, 0)
    return per_epoch, total, size


def _train_vmap(make_model, data: TensorData, member: np.ndarray, recipe: Recipe, seeds: list[int],
                device: torch.device, epochs: float | None) -> list[dict[str, torch.Tensor]]:
    from torch.func import functional_call, grad, stack_module_state, vmap

    K = len(seeds)
    epochs = recipe.epochs if epochs is None else float(epochs)
    B = recipe.batch_size
    models = [init_shadow(make_model, s, device) for s in seeds]
    for m in models:
        m.train()
    keys = list(models[0].state_dict().keys())
    params, buffers = stack_module_state(models)
    params = {n: p.detach().clone() for n, p in params.items()}
    buffers = {n: b.detach().clone() for n, b in buffers.items()}
    base = copy.deepcopy(models[0]).to("meta")
    base.train()
    del models

    n = member.sum(1).astype(np.int64)
    per_epoch, total, size = _schedule(n, B, epochs)
    t_max = size.shape[0]
    lrs = np.zeros((t_max, K))
    for k in range(K):
        for t in range(int(total[k])):
            lrs[t, k] = recipe.lr * lr_factor(t, int(total[k]), recipe.schedule, recipe.warmup_frac)
    lr_dev = torch.as_tensor(lrs, dtype=torch.float32, device=device)
    pos_dev = torch.as_tensor((np.arange(t_max)[:, None] % per_epoch[None, :]) * B, device=device)
    arange_b = torch.arange(B, device=device)
    pool_idx = [torch.as_tensor(np.flatnonzero(member[k]), device=device) for k in range(K)]
    order = torch.zeros(K, int(n.max()) + B, dtype=torch.long, device=device)
    gens = [device_generator(device, s) for s in seeds]
    augment = recipe.augment and data.augment != "none"
    aug_gen = device_generator(device, (sum(seeds) * 7919 + K) % (2**62)) if augment else None
    x_all, y_all = data.x.to(device), data.y.to(device)

    sgd = recipe.optimizer == "sgd"
    mom, wd, nesterov = recipe.momentum, recipe.weight_decay, recipe.nesterov and recipe.momentum > 0
    state: dict[str, dict[str, torch.Tensor]] = {}
    if sgd and mom > 0:
        state["buf"] = {k: torch.zeros_like(v) for k, v in params.items()}
    if not sgd:
        state["m"] = {k: torch.zeros_like(v) for k, v in params.items()}
        state["v"] = {k: torch.zeros_like(v) for k, v in params.items()}
    b1, b2, eps = 0.9, 0.999, 1e-8  # torch.optim.Adam defaults, as make_optimizer uses them
    ls = recipe.label_smoothing

    def loss_fn(p, b, x, y):
        return F.cross_entropy(functional_call(base, (p, b), (x,)), y, label_smoothing=ls)

    grad_fn = vmap(grad(loss_fn))

    for t in range(t_max):
        sizes = size[t]
        for k in np.flatnonzero((sizes > 0) & (t % per_epoch == 0)):  # a new epoch: fit's randperm
            order[k, : n[k]] = pool_idx[k][torch.randperm(int(n[k]), device=device, generator=gens[k])]
        for b in sorted(set(sizes[sizes > 0].tolist())):
            ks = np.flatnonzero(sizes == b)
            full = len(ks) == K
            sel = None if full else torch.as_tensor(ks, device=device)
            pos = pos_dev[t] if full else pos_dev[t, sel]
            rows = order if full else order[sel]
            idx = rows.gather(1, pos[:, None] + arange_b[:b])
            xb = x_all[idx].float().div_(255.0)
            if augment:
                xb = apply_augment(xb.flatten(0, 1), data.augment, aug_gen).view(xb.shape)
            yb = y_all[idx]
            p_g = params if full else {k_: v[sel] for k_, v in params.items()}
            b_g = buffers if full else {k_: v[sel] for k_, v in buffers.items()}
            grads = grad_fn(p_g, b_g, xb, yb)
            lr = lr_dev[t] if full else lr_dev[t, sel]
            t_adam = t + 1
            for name, p in p_g.items():
                g = grads[name]
                shape = (-1,) + (1,) * (p.dim() - 1)
                lr_b = lr.view(shape)
                if wd:
                    g = g.add(p, alpha=wd)
                if sgd:
                    if mom > 0:
                        buf = state["buf"][name] if full else state["buf"][name][sel]
                        buf = buf.mul(mom).add_(g)
                        step = g.add(buf, alpha=mom) if nesterov else buf
                        if full:
                            state["buf"][name] = buf
                        else:
                            state["buf"][name][sel] = buf
                    else:
                        step = g
                    new_p = p - lr_b * step
                else:
                    m_ = (state["m"][name] if full else state["m"][name][sel]).mul(b1).add_(g, alpha=1 - b1)
                    v_ = (state["v"][name] if full else state["v"][name][sel]).mul(b2).addcmul_(g, g, value=1 - b2)
                    bc1, bc2 = 1 - b1 ** t_adam, 1 - b2 ** t_adam
                    denom = v_.sqrt().div_(math.sqrt(bc2)).add_(eps)
                    new_p = p - (lr_b / bc1) * m_ / denom
                    if full:
                        state["m"][name], state["v"][name] = m_, v_
                    else:
                        state["m"][name][sel], state["v"][name][sel] = m_, v_
                if full:
                    params[name] = new_p
                else:
                    params[name][sel] = new_p
            if not full:  # BatchNorm statistics of the group were updated on a copy: write them back
                for name, v in b_g.items():
                    buffers[name][sel] = v

    states = []
    for k in range(K):
        states.append({name: (params[name][k] if name in params else buffers[name][k]).detach().clone()
                       for name in keys})
    return states


def load_shadow(make_model: Callable[[], nn.Module], state: dict[str, torch.Tensor], device) -> nn.Module:
    """A module holding a shadow's weights, in eval mode, laid out for the device."""
    model = make_model()
    model.load_state_dict(state)
    model = prepare(model, device)
    model.eval()
    return model
