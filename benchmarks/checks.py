"""The method contract as small named checks, run on a tiny cell in seconds (scikit-learn's
``utils/estimator_checks`` is the model: one function per property, opted out of only by a declared tag
with its reason, never by name). ``unlearnbench check-method NAME`` and ``tests/test_contract.py`` both
run :data:`CHECKS` through this module, so the command a plug-in author runs and the tests the built-ins
pass are the same code.

The cells: the embedded ``synthetic`` dataset (240 training images of 4 classes, 8x8, 40 of them carved
out as held-out data; 120 test images), an MLP (hidden 32, ReLU head 16) trained for 8 epochs, and two
forget requests, ``random`` 10% and ``class`` 1 -- built with the harness's own code (``prepare_cell``,
``original_model``, ``reference_model``, ``CellData.request``), so the method receives exactly the
:class:`~unlearnbench.methods.UnlearnRequest` a suite would give it, under ``Budget(max_epochs=0.1)``,
seeded by ``seed_everything`` and counted by ``count_work`` as the harness does. Each applicable request
is run twice (the second run only for ``deterministic``).

What each check verifies (and what it cannot):

- ``declares_itself``: the module docstring (where the paper is cited and every choice stated) has
  substance (>= 80 characters), a one-line summary exists, the defaults construct. Whether the docstring
  cites the right paper is for a reader to judge.
- ``clone``: the hyperparameters round-trip: ``create_method(name, m.hyperparameters()) == m`` (what
  stored configurations and ``reproduce`` rely on), and the method is hashable (frozen).
- ``declares_applicability``: ``not_applicable`` answers ``None`` or a reason naming the method for every
  request kind, and at least one of the check's requests is applicable (else nothing could be checked).
- ``returns_model``: ``unlearn`` returns an ``nn.Module`` without raising.
- ``keeps_interface``: the returned model gives outputs of the original's shape, floating point, on the
  same device; where the original has ``features``/``head`` the returned model has them too, with
  features of the same width and ``forward(x) == head(features(x))`` (to 1e-5).
- ``no_nan``: its outputs on the forget, retain and test images are finite.
- ``reports_numbers``: ``request.info`` and ``report()`` hold numbers only (they are stored as metrics).
- ``original_untouched``: the original model's parameters, buffers, mode and outputs are bit-identical
  after the call. The harness hands the method a deep copy (which it may mutate freely), so this fails
  only for a method that reaches past its request to the original -- or a harness that stops copying.
- ``inputs_untouched``: the forget, retain and held-out tensors of the request are bit-identical after
  the call (they are the cell's own tensors, which the harness scores with afterwards; the held-out set
  is shared by every cell of a process).
- ``respects_budget``: under ``Budget(max_epochs=0.1)`` the method's backward example passes stay within
  4 passes over the data it was given (forget + retain + held-out) and its forward passes within 8 --
  counted by ``methods/cost.py`` (``count_work``), so work that runs the network outside
  ``Classifier.forward`` without ``add_passes`` is not seen. Calibration: over every built-in method the
  largest ratios measured on these cells are 3.0x forward and 3.0x backward (unsir; next: ssd 2.0x forward,
  distribution_ft 2.2x forward and 1.9x backward; measured at commit ``085837e``) --
  ``unlearnbench check-method --all --checks respects_budget`` prints them again after a
  method changes; ``tests/test_contract.py`` asserts the bounds hold for each. A method whose *unbudgeted*
  work already fits the bounds passes even if it ignores the budget: the check catches methods that run
  their full epoch count regardless, not every way of over-spending.
- ``deterministic`` (skipped when tagged ``nondeterministic``, showing the reason; skipped on CUDA): two
  runs with the same seed on the CPU give bit-identical outputs on every probe.
- ``no_test_or_reference_access``: (a) nothing reachable from the request -- attributes, containers,
  closures, bound methods, ``functools.partial`` arguments; not module globals, which reach everything --
  shares storage with the cell's test split, the retrain reference's parameters, or held-out rows the
  method is not given (all of them without ``needs_heldout``; the forgotten class's for class
  requests); (b) while ``unlearn`` runs, no torch operation takes one of those tensors as an argument
  (a ``TorchFunctionMode`` watches every call). Not checked: data read outside torch (files on disk, a
  dataset loader called by the method itself), or test tensors copied before the call started.
- ``no_global_side_effects``: torch's grad mode, inference mode, default dtype, thread count,
  deterministic-algorithms flag, anomaly mode and global module hooks are as they were before the call.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import shutil
import tempfile
import time
import types
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from unlearnbench.methods import Budget, create_method, method_class
from unlearnbench.methods.cost import WorkCount, count_work
from unlearnbench.methods.training import seed_everything

from .validate import InputError

BUDGET = Budget(max_epochs=0.1)
FWD_CAP = 8.0  # forward example passes per example of the method's data, under BUDGET
BWD_CAP = 4.0  # backward (training) example passes per example of the method's data, under BUDGET
REQUESTS = ({"kind": "random", "fraction": 0.1}, {"kind": "class", "class": 1})
RECIPE = {"epochs": 8, "batch_size": 32, "lr": 0.05, "augment": False}
MODEL_OPTIONS = {"mlp": {"hidden": [32], "head_hidden": [16]}}


class CheckFailed(AssertionError):
    """A check found a contract violation (the message says what, on which request)."""


class CheckSkipped(Exception):
    """A check does not apply (the message says why: a declared tag, the device, a failed run)."""


@dataclass(frozen=True)
class Check:
    name: str
    fn: Callable[["MethodRuns"], str]
    doc: str
    opt_out_tag: str | None = None  # a tag (with its declared reason) that skips this check


CHECKS: dict[str, Check] = {}


def _check(name: str, opt_out_tag: str | None = None):
    def deco(fn):
        CHECKS[name] = Check(name, fn, (fn.__doc__ or "").strip().splitlines()[0], opt_out_tag)
        return fn

    return deco


@dataclass(frozen=True)
class CheckResult:
    check: str
    status: str  # "pass" | "fail" | "skip"
    detail: str
    seconds: float

    def line(self) -> str:
        return f"{self.status.upper():4s}  {self.check:28s} {self.detail}"


# ------------------------------------------------------------------------------------ the cells


@dataclass
class Cell:
    """One request kind's tiny cell: harness data, the trained original and the retrain reference."""

    label: str
    ctx: Any
    cd: Any
    original: nn.Module
    reference: nn.Module


class ContractCells:
    """The check's cells (built once, shared by every method checked in this process). Use as a context
    manager, or call :meth:`close`, to remove the temporary model cache."""

    def __init__(self, model: str = "mlp", device: str = "cpu", seed: int = 0):
        from .harness import resolve_device

        self.model, self.seed = model, int(seed)
        self.device = resolve_device(device)
        self._tmp = Path(tempfile.mkdtemp(prefix="unlearnbench-check-"))
        self._cells: dict[str, Cell] = {}
        self._suite = None

    def __enter__(self) -> "ContractCells":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    def describe(self) -> str:
        return (f"synthetic 4-class 8x8 data, {self.model}, {self.device.type.upper()}, seed {self.seed}, requests "
                f"{', '.join(self.labels())}, Budget(max_epochs={BUDGET.max_epochs})")

    def suite(self):
        if self._suite is None:
            from .suite import parse_suite

            self._suite = parse_suite({
                "name": "contract-check", "seeds": [self.seed], "methods": ["original"], "metrics": ["accuracy"],
                "recipes": {"tiny": RECIPE}, "requests": [dict(r) for r in REQUESTS],
                "datasets": [{"name": "synthetic", "model": self.model, "recipe": "tiny",
                              "model_options": MODEL_OPTIONS.get(self.model, {})}]}, path="<contract check>")
        return self._suite

    def labels(self) -> list[str]:
        return [c.request.label for c in self.suite().cells()]

    def cell(self, label: str) -> Cell:
        if label not in self._cells:
            from .harness import RunContext, original_model, prepare_cell, reference_model

            spec = next(c for c in self.suite().cells() if c.request.label == label)
            ctx = RunContext(results_dir=self._tmp, device=self.device)
            cd = prepare_cell(spec, ctx)
            original, _ = original_model(cd, ctx)
            reference, _ = reference_model(cd, ctx, original)
            self._cells[label] = Cell(label, ctx, cd, original, reference)
        return self._cells[label]


# ------------------------------------------------------------------------------------ one method's runs


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _probes(cell: Cell) -> dict[str, torch.Tensor]:
    return {"forget": cell.cd.forget.floats(), "retain": cell.cd.retain.floats(), "test": cell.cd.test.floats()}


@torch.no_grad()
def _outputs(model: nn.Module, probes: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    was = model.training
    model.eval()
    try:
        return {k: model(x).detach().clone() for k, x in probes.items()}
    finally:
        model.train(was)


def _data_tensors(request) -> dict[str, torch.Tensor]:
    out = {}
    for part in ("forget", "retain", "heldout"):
        d = getattr(request, part)
        if d is not None:
            out[f"request.{part}.x"], out[f"request.{part}.y"] = d.x, d.y
    return out


def global_state() -> dict[str, Any]:
    """The torch-global settings a method must leave as it found them."""
    from torch.nn.modules import module as m

    hooks = {name: len(getattr(m, name)) for name in dir(m) if name.startswith("_global_") and "hook" in name
             and isinstance(getattr(m, name), dict)}
    return {"grad mode": torch.is_grad_enabled(), "inference mode": torch.is_inference_mode_enabled(),
            "default dtype": torch.get_default_dtype(), "threads": torch.get_num_threads(),
            "deterministic algorithms": torch.are_deterministic_algorithms_enabled(),
            "anomaly mode": torch.is_anomaly_enabled(), **{f"global hooks {k}": v for k, v in hooks.items()}}


def _storage(t: torch.Tensor) -> int:
    try:
        return int(t.untyped_storage().data_ptr())
    except Exception:  # functorch-wrapped or storage-less tensors
        return 0


def _forbidden(cell: Cell, request, tags: frozenset[str]) -> dict[int, str]:
    """Storage pointer -> label of every tensor the method must neither reach nor use."""
    out: dict[int, str] = {}

    def add(t: torch.Tensor, label: str) -> None:
        ptr = _storage(t)
        if ptr:
            out.setdefault(ptr, label)

    add(cell.cd.test.x, "the test images")
    add(cell.cd.test.y, "the test labels")
    for k, v in cell.reference.state_dict(keep_vars=True).items():
        add(v, f"the retrain reference ({k})")
    given = {_storage(t) for t in _data_tensors(request).values()}
    for t, what in ((cell.cd.heldout.x, "images"), (cell.cd.heldout.y, "labels")):
        if _storage(t) not in given:  # without needs_heldout, or the unfiltered set behind a class request's copy
            why = "the method is not tagged needs_heldout" if "needs_heldout" not in tags else \
                "it holds the forgotten class, which the request's held-out copy leaves out"
            add(t, f"held-out {what} ({why})")
    return out


_ATOMS = (str, bytes, bytearray, int, float, complex, bool, type(None), torch.device, torch.dtype, torch.Generator,
          types.ModuleType, type, types.BuiltinFunctionType, range)


def reachable_tensors(root: Any, root_name: str = "request", limit: int = 200_000
                      ) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor reachable from ``root`` with a path to it: attributes (``__dict__``, ``__slots__``),
    containers, function closures and defaults, bound methods' ``__self__``, ``functools.partial``
    arguments. Module globals and classes are not followed (they reach every loaded module)."""
    seen: set[int] = set()
    queue: deque[tuple[Any, str]] = deque([(root, root_name)])
    while queue and len(seen) < limit:
        obj, path = queue.popleft()
        if id(obj) in seen or isinstance(obj, _ATOMS):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            yield path, obj
            continue
        kids: list[tuple[Any, str]] = []
        if isinstance(obj, dict):
            kids = [(v, f"{path}[{k!r}]") for k, v in obj.items()]
        elif isinstance(obj, (list, tuple, set, frozenset, deque)):
            kids = [(v, f"{path}[{i}]") for i, v in enumerate(obj)]
        elif isinstance(obj, functools.partial):
            kids = [(obj.func, f"{path}.func"), (obj.args, f"{path}.args"), (obj.keywords, f"{path}.keywords")]
        elif isinstance(obj, types.MethodType):
            kids = [(obj.__self__, f"{path}.__self__"), (obj.__func__, f"{path}.__func__")]
        elif isinstance(obj, types.FunctionType):
            kids = [(c.cell_contents, f"{path}.<closure {n}>") for n, c in
                    zip(obj.__code__.co_freevars, obj.__closure__ or ()) if _filled(c)]
            kids += [(obj.__defaults__, f"{path}.__defaults__"), (obj.__kwdefaults__, f"{path}.__kwdefaults__")]
        else:
            d = getattr(obj, "__dict__", None)
            if isinstance(d, dict):
                kids = [(v, f"{path}.{k}") for k, v in d.items()]
            for cls in type(obj).__mro__:
                for s in getattr(cls, "__slots__", ()) or ():
                    if isinstance(s, str) and s not in ("__dict__", "__weakref__") and hasattr(obj, s):
                        kids.append((getattr(obj, s), f"{path}.{s}"))
        queue.extend(kids)


def _filled(c) -> bool:
    try:
        c.cell_contents
    except ValueError:
        return False
    return True


class _Watch(TorchFunctionMode):
    """Records the first torch call that takes a forbidden tensor as an argument."""

    def __init__(self, forbidden: dict[int, str]):
        super().__init__()
        self.forbidden = forbidden
        self.hit: str | None = None

    def __torch_function__(self, func, types_, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.hit is None and self.forbidden:
            for t in torch.utils._pytree.tree_leaves((args, kwargs)):
                if isinstance(t, torch.Tensor):
                    label = self.forbidden.get(_storage(t))
                    if label is not None:
                        self.hit = f"{getattr(func, '__name__', func)} was called on {label}"
                        break
        return func(*args, **kwargs)


@dataclass
class Run:
    """One ``unlearn`` call on one cell, with everything the checks compare."""

    label: str
    not_applicable: str | None = None
    request: Any = None
    model: nn.Module | None = None
    error: str | None = None
    work: WorkCount | None = None
    data_size: int = 0
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    original_outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    original_changed: list[str] = field(default_factory=list)
    inputs_changed: list[str] = field(default_factory=list)
    globals_changed: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    touched: str | None = None
    report: dict[str, Any] | None = None
    report_error: str | None = None


class MethodRuns:
    """A method's runs on the contract cells, computed on first use and shared by the checks."""

    def __init__(self, name: str, cells: ContractCells):
        self.name = name
        self.cls = method_class(name)
        self.cells = cells
        self._runs: dict[str, Run] = {}
        self._second: dict[str, dict[str, torch.Tensor]] = {}

    @property
    def tags(self) -> frozenset[str]:
        return self.cls.tags

    def method(self):
        return create_method(self.name)

    def runs(self) -> list[Run]:
        return [self.run(label) for label in self.cells.labels()]

    def applicable(self) -> list[Run]:
        return [r for r in self.runs() if r.not_applicable is None]

    def succeeded(self) -> list[Run]:
        done = [r for r in self.applicable() if r.model is not None]
        if not done:
            raise CheckSkipped("no run returned a model (see returns_model)")
        return done

    def _request(self, cell: Cell):
        return cell.cd.request(copy.deepcopy(cell.original), heldout="needs_heldout" in self.tags, budget=BUDGET)

    def run(self, label: str) -> Run:
        if label in self._runs:
            return self._runs[label]
        cell = self.cells.cell(label)
        method = self.method()
        run = Run(label)
        self._runs[label] = run
        reason = method.not_applicable(cell.cd.split.kind, cell.original)
        if reason is not None:
            run.not_applicable = reason
            return run
        probes = _probes(cell)
        orig_state, orig_mode = _state(cell.original), cell.original.training
        run.original_outputs = _outputs(cell.original, probes)
        request = run.request = self._request(cell)
        inputs = {k: v.clone() for k, v in _data_tensors(request).items()}
        run.data_size = sum(len(d) for d in (request.forget, request.retain, request.heldout) if d is not None)
        forbidden = _forbidden(cell, request, self.tags)
        order = {label: i for i, label in enumerate(dict.fromkeys(forbidden.values()))}  # test first, then reference
        hits = {(order[forbidden[_storage(t)]], path, forbidden[_storage(t)])
                for path, t in reachable_tensors(request) if _storage(t) in forbidden}
        run.leaks = [f"{path} shares storage with {label}" for _, path, label in sorted(hits)]
        watch = _Watch(forbidden)
        seed_everything(cell.cd.cell.seed)
        try:
            with _kept_globals(run.globals_changed), count_work() as work, watch:
                model = method.unlearn(request)
        except Exception as exc:
            run.error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            return run
        run.work, run.touched = work, watch.hit
        if not isinstance(model, nn.Module):
            run.error = f"unlearn returned {type(model).__name__}, not an nn.Module"
            return run
        run.model = model
        now = _state(cell.original)
        run.original_changed = [k for k in orig_state if k not in now or not torch.equal(orig_state[k], now[k])]
        if cell.original.training != orig_mode:
            run.original_changed.append(f"mode (training={cell.original.training})")
        if not run.original_changed:
            again = _outputs(cell.original, probes)
            run.original_changed = [f"outputs on {k}" for k in again
                                    if not torch.equal(again[k], run.original_outputs[k])]
        run.inputs_changed = [k for k, v in _data_tensors(request).items()
                              if k not in inputs or not torch.equal(inputs[k], v)]
        try:
            run.outputs = _outputs(model, probes)
        except Exception as exc:
            run.error = f"the returned model fails on the probe images: {type(exc).__name__}: {exc}"
            run.model = None
            return run
        try:
            run.report = dict(method.report(model, request) or {})
        except Exception as exc:
            run.report_error = f"{type(exc).__name__}: {exc}"
        return run

    def second_outputs(self, label: str) -> dict[str, torch.Tensor]:
        """Outputs of a second run with the same seed (no watch, no snapshots)."""
        if label not in self._second:
            cell = self.cells.cell(label)
            method = self.method()
            request = self._request(cell)
            seed_everything(cell.cd.cell.seed)
            with _kept_globals([]), count_work():
                model = method.unlearn(request)
            self._second[label] = _outputs(model, _probes(cell))
        return self._second[label]


@contextlib.contextmanager
def _kept_globals(changed: list[str]) -> Iterator[None]:
    """Note in ``changed`` what the block changed of :func:`global_state`, and put it back (so the checks
    and methods that run later run as usual)."""
    before = global_state()
    try:
        yield
    finally:
        after = global_state()
        for k, v in before.items():
            if after.get(k) != v:
                changed.append(f"{k}: {v!r} -> {after.get(k)!r}")
                _restore_global(k, v)


def _restore_global(key: str, value: Any) -> None:
    if key == "grad mode":
        torch.set_grad_enabled(value)
    elif key == "default dtype":
        torch.set_default_dtype(value)
    elif key == "threads":
        torch.set_num_threads(value)
    elif key == "deterministic algorithms":
        torch.use_deterministic_algorithms(value, warn_only=True)
    elif key == "anomaly mode":
        torch.autograd.set_detect_anomaly(value)


# ------------------------------------------------------------------------------------ the checks


@_check("declares_itself")
def declares_itself(r: MethodRuns) -> str:
    """Module docstring (paper, choices), summary, constructible defaults."""
    import sys

    doc = (sys.modules.get(r.cls.__module__).__doc__ if r.cls.__module__ in sys.modules else "") or ""
    if len(doc.strip()) < 80:
        raise CheckFailed(f"the module docstring of {r.cls.__module__} has {len(doc.strip())} characters: it must cite "
                          "the paper and state every choice the paper does not make")
    if not r.cls.summary:
        raise CheckFailed("no one-line summary (register(..., summary=...) or a class docstring)")
    m = r.method()
    tags = ", ".join(sorted(r.tags)) or "none"
    return f"docstring {len(doc.strip())} chars; {len(m.hyperparameters())} hyperparameters; tags: {tags}"


@_check("clone")
def clone(r: MethodRuns) -> str:
    """Hyperparameters round-trip through create_method; the method is hashable."""
    m = r.method()
    params = m.hyperparameters()
    try:
        again = create_method(r.name, params)
    except Exception as exc:
        raise CheckFailed(f"create_method({r.name!r}, m.hyperparameters()) raised {type(exc).__name__}: {exc}") from exc
    if again != m:
        raise CheckFailed(f"create_method({r.name!r}, m.hyperparameters()) != m ({again!r} vs {m!r})")
    try:
        hash(m)
    except TypeError as exc:
        raise CheckFailed(f"the method is not hashable ({exc}): keep it a frozen dataclass of plain values") from exc
    return f"{len(params)} hyperparameters round-trip"


@_check("declares_applicability")
def declares_applicability(r: MethodRuns) -> str:
    """not_applicable answers None or a reason naming the method; something is applicable."""
    m = r.method()
    for run in r.runs():
        reason = run.not_applicable
        if reason is not None and (not isinstance(reason, str) or r.name not in reason):
            raise CheckFailed(f"{run.label}: not_applicable returned {reason!r}: return None or a reason naming "
                              f"{r.name!r}")
    if "class_only" in r.tags:
        cell = r.cells.cell(r.cells.labels()[0])
        if m.not_applicable("random", cell.original) is None:
            raise CheckFailed("tagged class_only but applicable to a random request")
    if not r.applicable():
        raise CheckFailed("not applicable to any request of the check's cells ("
                          + "; ".join(f"{x.label}: {x.not_applicable}" for x in r.runs()) + "): nothing could be run")
    na = [f"{x.label} ({x.not_applicable})" for x in r.runs() if x.not_applicable]
    return ("applicable to " + ", ".join(x.label for x in r.applicable())
            + (f"; declared n/a: {'; '.join(na)}" if na else ""))


@_check("returns_model")
def returns_model(r: MethodRuns) -> str:
    """unlearn returns an nn.Module without raising."""
    runs = r.applicable()
    if not runs:
        raise CheckSkipped("not applicable to any request (see declares_applicability)")
    bad = [f"{x.label}: {x.error}" for x in runs if x.error]
    if bad:
        raise CheckFailed("; ".join(bad))
    return "on " + ", ".join(x.label for x in runs)


@_check("keeps_interface")
def keeps_interface(r: MethodRuns) -> str:
    """Same output shape, dtype, device; features/head kept where the original had them."""
    for run in r.succeeded():
        cell = r.cells.cell(run.label)
        out, orig = run.outputs["test"], run.original_outputs["test"]
        if out.shape != orig.shape:
            raise CheckFailed(f"{run.label}: outputs have shape {tuple(out.shape)}, the original's {tuple(orig.shape)}")
        if not out.is_floating_point() or out.device != orig.device:
            raise CheckFailed(f"{run.label}: outputs are {out.dtype} on {out.device}, the original's {orig.dtype} on "
                              f"{orig.device}")
        model = run.model
        for attr in ("features", "head"):
            if hasattr(cell.original, attr) and not hasattr(model, attr):
                raise CheckFailed(f"{run.label}: the returned model has no `{attr}` (the original has one; methods "
                                  "and attacks use it)")
        if hasattr(cell.original, "features") and hasattr(cell.original, "head"):
            x = _probes(cell)["test"]
            with torch.no_grad():
                model.eval()
                z, z0 = model.features(x), cell.original.features(x)
                if z.dim() != 2 or z.shape[1] != z0.shape[1]:
                    raise CheckFailed(f"{run.label}: features have shape {tuple(z.shape)}, the original's "
                                      f"{tuple(z0.shape)}")
                composed = model.head(z)
                if composed.shape != out.shape or not torch.allclose(composed, model(x), rtol=1e-4, atol=1e-5,
                                                                     equal_nan=True):
                    raise CheckFailed(f"{run.label}: forward(x) != head(features(x))")
    return f"outputs {tuple(r.succeeded()[0].outputs['test'].shape[1:])} per image; features/head kept"


@_check("no_nan")
def no_nan(r: MethodRuns) -> str:
    """Outputs on forget, retain and test images are finite."""
    for run in r.succeeded():
        bad = [k for k, v in run.outputs.items() if not bool(torch.isfinite(v).all())]
        if bad:
            raise CheckFailed(f"{run.label}: the returned model's outputs on {', '.join(bad)} contain NaN/inf")
    return "outputs finite on forget, retain and test images"


@_check("reports_numbers")
def reports_numbers(r: MethodRuns) -> str:
    """request.info and report() hold numbers only."""
    n = 0
    for run in r.succeeded():
        if run.report_error:
            raise CheckFailed(f"{run.label}: report() raised {run.report_error}")
        for where, d in (("request.info", run.request.info), ("report()", run.report or {})):
            for k, v in d.items():
                if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise CheckFailed(f"{run.label}: {where}[{k!r}] = {v!r}: values are stored as metrics and must "
                                      "be numbers")
                n += 1
    return f"{n} reported values, all numbers"


@_check("original_untouched")
def original_untouched(r: MethodRuns) -> str:
    """The original model's parameters, buffers, mode and outputs are unchanged."""
    for run in r.succeeded():
        if run.original_changed:
            shown = ", ".join(run.original_changed[:4]) + (" ..." if len(run.original_changed) > 4 else "")
            raise CheckFailed(f"{run.label}: the original model changed ({shown}): mutate only request.model, the "
                              "harness's copy")
    return "parameters, buffers, mode and outputs bit-identical"


@_check("inputs_untouched")
def inputs_untouched(r: MethodRuns) -> str:
    """The request's forget/retain/held-out tensors are unchanged."""
    for run in r.succeeded():
        if run.inputs_changed:
            raise CheckFailed(f"{run.label}: {', '.join(run.inputs_changed)} changed in place: the harness scores "
                              "with these tensors afterwards; copy before modifying (e.g. TensorData.with_labels)")
    return "forget, retain and held-out tensors bit-identical"


@_check("respects_budget")
def respects_budget(r: MethodRuns) -> str:
    """Under Budget(max_epochs=0.1): backward passes <= 4x and forward <= 8x its data."""
    worst = (0.0, 0.0)
    for run in r.succeeded():
        fwd, bwd = run.work.fwd / run.data_size, run.work.bwd / run.data_size
        if bwd > BWD_CAP or fwd > FWD_CAP:
            raise CheckFailed(f"{run.label}: {run.work.fwd} forward and {run.work.bwd} backward example passes on "
                              f"{run.data_size} examples ({fwd:.1f}x, {bwd:.1f}x; caps {FWD_CAP:g}x, {BWD_CAP:g}x) "
                              "under "
                              f"Budget(max_epochs={BUDGET.max_epochs}): cap every epoch loop with "
                              "request.budget.epochs(...) or pass budget=request.budget to fit")
        worst = (max(worst[0], fwd), max(worst[1], bwd))
    return (f"at most {worst[0]:.2f}x forward, {worst[1]:.2f}x backward passes over its data "
            f"(caps {FWD_CAP:g}x, {BWD_CAP:g}x)")


@_check("deterministic", opt_out_tag="nondeterministic")
def deterministic(r: MethodRuns) -> str:
    """Two runs with the same seed on the CPU give bit-identical outputs."""
    if r.cells.device.type != "cpu":
        raise CheckSkipped("determinism is checked on the CPU only (run with --device cpu)")
    for run in r.succeeded():
        again = r.second_outputs(run.label)
        for k, v in run.outputs.items():
            if not _same(v, again[k]):
                diff = (v - again[k]).abs().nan_to_num(nan=float("inf")).max().item()
                raise CheckFailed(f"{run.label}: a second run with the same seed differs on the {k} images (max "
                                  f"|diff| {diff:.3g}): draw randomness from request.generator(...) or the seeded "
                                  "global generators, or tag the method nondeterministic with a reason")
    return "two seeded CPU runs bit-identical"


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical, NaN equal to NaN (a NaN is no_nan's finding, not a difference between runs)."""
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


@_check("no_test_or_reference_access")
def no_test_or_reference_access(r: MethodRuns) -> str:
    """Nothing reachable from the request is test data or the reference; no torch op touches them."""
    for run in r.applicable():
        if run.leaks:
            raise CheckFailed(f"{run.label}: reachable from the request: {run.leaks[0]}"
                              + (f" (+{len(run.leaks) - 1} more)" if len(run.leaks) > 1 else ""))
        if run.touched:
            raise CheckFailed(f"{run.label}: during unlearn, {run.touched}")
    if not r.applicable():
        raise CheckSkipped("not applicable to any request")
    return "none reachable from the request; no torch call on them during unlearn"


@_check("no_global_side_effects")
def no_global_side_effects(r: MethodRuns) -> str:
    """torch's global settings and module hooks are as before the call."""
    for run in r.applicable():
        if run.globals_changed:
            raise CheckFailed(f"{run.label}: unlearn left torch's global state changed: "
                              f"{'; '.join(run.globals_changed)}")
    if not r.applicable():
        raise CheckSkipped("not applicable to any request")
    return "grad mode, dtype, threads, determinism, anomaly mode, global hooks unchanged"


# ------------------------------------------------------------------------------------ running them


def check_names(given: list[str] | None) -> list[str]:
    """Validate ``--checks`` names (all checks when None)."""
    if not given:
        return list(CHECKS)
    from .validate import close_matches

    bad = [g for g in given if g not in CHECKS]
    if bad:
        raise InputError(f"--checks: unknown check {bad[0]!r}.{close_matches(bad[0], CHECKS)} Checks: "
                         f"{', '.join(CHECKS)}")
    return list(dict.fromkeys(given))


def run_check(name: str, runs: MethodRuns) -> CheckResult:
    """Run one check; a declared opt-out tag skips it with the method's stated reason."""
    chk = CHECKS[name]
    t0 = time.perf_counter()
    if chk.opt_out_tag and chk.opt_out_tag in runs.tags:
        reason = runs.cls.tag_reasons.get(chk.opt_out_tag, "")
        return CheckResult(name, "skip", f"tagged {chk.opt_out_tag}: {reason}", 0.0)
    try:
        detail = chk.fn(runs)
        status = "pass"
    except CheckFailed as exc:
        status, detail = "fail", " ".join(str(exc).split())
    except CheckSkipped as exc:
        status, detail = "skip", str(exc)
    except Exception as exc:  # the method broke the check itself: a failure, named
        status, detail = "fail", f"raised {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    return CheckResult(name, status, detail, time.perf_counter() - t0)


def check_method(name: str, cells: ContractCells | None = None, checks: list[str] | None = None
                 ) -> Iterator[CheckResult]:
    """Run the contract checks on the registered method ``name`` (all, or ``checks``), yielding one
    :class:`CheckResult` per check as it finishes. Raises ``MethodError`` for an unknown method."""
    method_class(name)
    names = check_names(checks)
    own = cells is None
    cells = cells or ContractCells()
    try:
        runs = MethodRuns(name, cells)
        for n in names:
            yield run_check(n, runs)
    finally:
        if own:
            cells.close()


def failed(results: list[CheckResult]) -> list[str]:
    return [r.check for r in results if r.status == "fail"]


def summary(results: list[CheckResult], seconds: float) -> str:
    n = {s: sum(r.status == s for r in results) for s in ("pass", "skip", "fail")}
    line = f"{n['pass']} passed, {n['skip']} skipped, {n['fail']} failed in {seconds:.1f} s"
    bad = failed(results)
    return line + (f" -- FAILED: {', '.join(bad)}" if bad else "")

