"""Device-independent cost: example passes counted where the work happens, and FLOPs derived from them.

A *forward example pass* is one example through the whole network (``Classifier.forward``); a
*backward example pass* is one example's gradient flowing back through it. Both are counted by the
network itself while a :func:`count_work` block is open (the harness opens one around every
``unlearn`` call and around the training of every original and retrain model), so every caller is
counted the same way: the one training loop, the evaluation helpers (``predict``) that stop rules
use, teachers, discriminator inputs, probes — whatever runs the network.

- Forward: ``x.shape[0]`` examples per call of ``Classifier.forward`` (no host synchronisation).
- Backward: a hook on the call's output adds the same count when a gradient reaches that output
  (so a forward whose output is never backpropagated — a frozen teacher, a detached target — adds
  no backward pass, and a second backward through the same graph adds another).
- Inside ``torch.func`` transforms (vmap, grad, jacrev) the network is not counted: code that uses
  them (per-example gradients, Jacobians) counts its own work with :func:`add_passes` in the same
  unit (one per-example gradient of a scalar = one forward and one backward example pass; a Jacobian
  of C outputs = one forward and C backward passes).
- Work that is not a pass through the network is counted with :func:`add_work` under a named unit
  (e.g. PRUNE's ``lp_solves``) and documented where it is counted.

FLOPs: :func:`per_example_flops` measures, once per architecture, the forward and backward FLOPs of
one example with ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and convolutions, as
that counter counts them; element-wise work such as ReLU, normalisation and pooling is not counted).
``flops = passes_fwd * fwd + passes_bwd * bwd``. Counts and FLOPs depend on the code and the data
sizes only: identical across runs, devices and machines.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn as nn

_ACTIVE: contextvars.ContextVar["WorkCount | None"] = contextvars.ContextVar("unlearnbench_work", default=None)


class WorkLimitExceeded(BaseException):
    """Raised inside a :func:`count_work` block with a ``limit`` when a forward pass takes the count of
    example passes beyond it (``unlearnbench tune``'s compute cap). A ``BaseException``, like
    ``KeyboardInterrupt``, so that a method's own ``except Exception`` cannot swallow it."""

    def __init__(self, passes: int, limit: int):
        super().__init__(f"{passes} example passes exceed the limit of {limit}")
        self.passes, self.limit = passes, limit


@dataclass
class WorkCount:
    """Example passes and other work counted inside one :func:`count_work` block."""

    fwd: int = 0
    bwd: int = 0
    other: dict[str, float] = field(default_factory=dict)
    limit: int | None = None  # stop (WorkLimitExceeded) at the first forward pass beyond this many passes
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, fwd: int = 0, bwd: int = 0) -> None:
        with self._lock:  # backward hooks may run on autograd's device threads
            self.fwd += int(fwd)
            self.bwd += int(bwd)
        # checked on forward counts only: those run on the caller's thread (an exception raised in a backward
        # hook would surface from inside autograd); the backward passes counted so far are included
        if fwd and self.limit is not None and self.fwd + self.bwd > self.limit:
            raise WorkLimitExceeded(self.fwd + self.bwd, self.limit)

    def add_work(self, unit: str, amount: float) -> None:
        with self._lock:
            self.other[unit] = self.other.get(unit, 0.0) + float(amount)

    @property
    def passes(self) -> int:
        return self.fwd + self.bwd

    def as_dict(self) -> dict[str, float]:
        return {"passes_fwd": float(self.fwd), "passes_bwd": float(self.bwd), **{f"work.{k}": v for k, v in
                                                                                  sorted(self.other.items())}}


@contextlib.contextmanager
def count_work(limit: int | None = None) -> Iterator[WorkCount]:
    """Count the passes of every network run inside the block (nested blocks count into their own
    counter *and* every enclosing one). ``limit``: raise :class:`WorkLimitExceeded` at the first forward
    pass that takes this block's count of example passes (forward + backward) beyond it."""
    parent = _ACTIVE.get()
    wc = WorkCount(limit=None if limit is None else int(limit))
    token = _ACTIVE.set(_Chain(wc, parent) if parent is not None else wc)
    try:
        yield wc
    finally:
        _ACTIVE.reset(token)


class _Chain:
    """A counter that also feeds the enclosing block's counter."""

    def __init__(self, own: "WorkCount | _Chain", parent: "WorkCount | _Chain"):
        self.own, self.parent = own, parent

    def add(self, fwd: int = 0, bwd: int = 0) -> None:
        try:
            self.own.add(fwd, bwd)
        finally:  # counted in the enclosing block even when this block's limit stops the work
            self.parent.add(fwd, bwd)

    def add_work(self, unit: str, amount: float) -> None:
        self.own.add_work(unit, amount)
        self.parent.add_work(unit, amount)


def _in_functorch_transform() -> bool:
    try:
        return bool(torch._C._are_functorch_transforms_active())
    except AttributeError:  # pragma: no cover - older torch
        return False


def record_forward(x: torch.Tensor, out: torch.Tensor) -> None:
    """Called by ``Classifier.forward``: count ``x.shape[0]`` forward passes now and as many backward
    passes when a gradient reaches ``out``."""
    wc = _ACTIVE.get()
    if wc is None or _in_functorch_transform():
        return
    n = int(x.shape[0])
    wc.add(fwd=n)
    if out.requires_grad:
        out.register_hook(lambda grad, wc=wc, n=n: wc.add(bwd=n))


def add_passes(fwd: int = 0, bwd: int = 0) -> None:
    """Count passes computed outside ``Classifier.forward``'s own counting (``torch.func`` code)."""
    wc = _ACTIVE.get()
    if wc is not None:
        wc.add(fwd, bwd)


def add_work(unit: str, amount: float) -> None:
    """Count work that is not a network pass, in a named unit (documented where it is counted)."""
    wc = _ACTIVE.get()
    if wc is not None:
        wc.add_work(unit, amount)


# ------------------------------------------------------------------------------------ FLOPs

_FLOPS: dict[tuple, tuple[float, float]] = {}


def per_example_flops(model: nn.Module, image_shape: tuple[int, ...]) -> tuple[float, float]:
    """(forward, backward) FLOPs of one example through ``model`` (train mode, fp32, on a CPU copy),
    measured once per (architecture, parameter shapes, image shape) with ``FlopCounterMode``."""
    key = (type(model).__name__, getattr(model, "arch", ""), tuple(image_shape),
           tuple((k, tuple(v.shape)) for k, v in model.state_dict().items()))
    if key not in _FLOPS:
        import copy

        from torch.utils.flop_counter import FlopCounterMode

        m = copy.deepcopy(model).to("cpu").float().train()
        x = torch.zeros((2, *image_shape))  # two examples: batch norm needs more than one in train mode
        token = _ACTIVE.set(None)  # measuring is not the method's work
        try:
            with FlopCounterMode(display=False) as fwd_mode:
                out = m(x)
            with FlopCounterMode(display=False) as bwd_mode:
                out.float().sum().backward()
        finally:
            _ACTIVE.reset(token)
        _FLOPS[key] = (fwd_mode.get_total_flops() / 2.0, bwd_mode.get_total_flops() / 2.0)
    return _FLOPS[key]


def flops_of(work: WorkCount | dict[str, float], per_example: tuple[float, float]) -> float:
    """FLOPs of the counted passes (network passes only; other work is not converted)."""
    if isinstance(work, WorkCount):
        fwd, bwd = work.fwd, work.bwd
    else:
        fwd, bwd = work.get("passes_fwd", 0.0), work.get("passes_bwd", 0.0)
    return float(fwd) * per_example[0] + float(bwd) * per_example[1]
