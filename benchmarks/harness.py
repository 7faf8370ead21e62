"""The harness: one cell = (dataset, model, request, method, seed), from splits to a stored record.

build splits -> forget request -> original model (cached on disk by a hash of all that determines it)
-> retrain reference (cached the same way) -> copy of the original -> time the method's ``unlearn``
alone (synchronised on CUDA) with peak memory -> score the unlearned model and the reference with
the suite's metrics -> gaps to the reference -> a :class:`~unlearnbench.benchmarks.store.RunRecord`.

The harness owns copying (the original is never mutated), seeding, device and precision, eval mode,
budget, timing and memory accounting, scoring. Methods see an
:class:`~unlearnbench.methods.UnlearnRequest` only.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from unlearnbench.attacks import EvalContext, MetricError, metric_info
from unlearnbench.attacks.costs import TIMER_FLOOR_S
from unlearnbench.attacks.derived import gaps
from unlearnbench.datasets import ForgetSplit, Splits, TensorData, build_request, build_splits
from unlearnbench.methods import Budget, UnlearnRequest, create_method
from unlearnbench.methods.base import ReportData
from unlearnbench.methods.cost import WorkCount, count_work, flops_of, per_example_flops
from unlearnbench.methods.models import build_model, count_parameters, state_bytes
from unlearnbench.methods.training import fit, prepare, seed_everything

from . import validate
from .cache import CacheEntryError, ModelCache
from .env import environment, timing_env
from .store import RunRecord
from .suite import CellSpec, stable_hash
from .validate import InputError

def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``; an unknown or unavailable device is an InputError (exit 2)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise InputError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name} asked for, but torch sees no CUDA GPU here: use --device cpu or auto")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise InputError(f"--device {name}: torch sees {torch.cuda.device_count()} GPU(s) (cuda:0 .. "
                         f"cuda:{torch.cuda.device_count() - 1})")
    return torch.device(name)


def setup_device(device: torch.device, cpu_threads: int | None = None) -> int | None:
    """Precision and determinism policy: fast on CUDA (cudnn.benchmark, TF32), deterministic on the CPU with
    ``cpu_threads`` intra-op threads (default ``$UNLEARNBENCH_CPU_THREADS``, else 1), which it returns (None on
    CUDA). These settings are fixed per device type; the CPU thread count enters the cell key."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        # One intra-op thread: CPU results then do not depend on the machine's core count (float reductions
        # split across threads round differently), and small models gain nothing from more threads.
        threads = validate.cpu_threads() if cpu_threads is None else cpu_threads
        if not validate.is_int(threads) or threads < 1:
            raise InputError(f"cpu_threads must be a positive integer, got {threads!r}")
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True, warn_only=True)
        return threads
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory a region allocated on CUDA: ``max_memory_allocated`` after ``reset_peak_memory_stats``,
    minus what was allocated when the region started (data and models already resident are not the
    region's). On the CPU nothing is measured (NaN): there is no per-region allocation tracking, and the
    process's resident set would count everything else the process holds."""

    def __init__(self, device: torch.device):
        self.device = device
        self.mib = float("nan")
        self._start = 0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.mib = max(0, torch.cuda.max_memory_allocated(self.device) - self._start) / 2**20


CPU_MEMORY_NOTE = ("peak_mem_mib is not measured on the CPU (no per-method allocation tracking there; the process's "
                   "resident set would count everything else the process holds)")


class _Phases:
    """Wall time of a cell's phases (``cell.<phase>_s``), to measure the harness's own overhead."""

    def __init__(self, device: torch.device):
        self.device = device
        self.t0 = self.last = time.perf_counter()
        self.times: dict[str, float] = {}

    def mark(self, name: str, sync_device: bool = True) -> None:
        if sync_device:
            sync(self.device)
        now = time.perf_counter()
        self.times[name] = self.times.get(name, 0.0) + now - self.last
        self.last = now

    def resume(self) -> None:
        """Start counting again (scoring on a worker thread begins later than the device stage ended)."""
        self.last = time.perf_counter()

    def as_metrics(self) -> dict[str, float]:
        out = {f"cell.{k}_s": v for k, v in self.times.items()}
        out["cell.total_s"] = sum(self.times.values())
        return out


@dataclass
class RunContext:
    """Process-level state of a run: where things are, the device, and in-memory caches."""

    results_dir: Path
    data_root: str | None = None
    download: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    cache_dir: Path | None = None
    cpu_threads: int | None = None  # CPU runs: torch threads (None: $UNLEARNBENCH_CPU_THREADS, else 1); in the cell key
    cache_readonly: bool = False  # use the model cache without writing to it (a read-only folder)
    _data: dict = field(default_factory=dict, repr=False)
    _refs: dict = field(default_factory=dict, repr=False)
    _refs_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    resident_models: int = 4  # original/reference models kept on the device between cells
    retime_reference: bool = False  # re-time every retrain reference in this process (else: only incomparable ones)
    _models: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _timed: dict = field(default_factory=dict, repr=False)  # model key -> timing measured by this process

    def __post_init__(self) -> None:
        self.results_dir = Path(self.results_dir)
        self.cache = ModelCache(Path(self.cache_dir) if self.cache_dir else self.results_dir / "cache" / "models",
                                readonly=self.cache_readonly)
        self.cpu_threads = setup_device(self.device, self.cpu_threads)

    def splits(self, cell: CellSpec) -> Splits:
        return build_splits(cell.dataset.spec, self.data_root, self.download)

    def device_data(self, splits: Splits) -> dict[str, Any]:
        """Train pool, held-out and test on the device (moved once per process), with normalisation stats."""
        key = (splits.spec, splits.fingerprint, str(self.device))
        if key not in self._data:
            x = splits.train.x.double() / 255.0
            mean = x.mean(dim=(0, 2, 3)).tolist()
            std = x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
            self._data.clear()  # one dataset resident at a time keeps device memory bounded
            self._data[key] = {
                "train": TensorData.from_imageset(splits.train, self.device, splits.augment),
                "heldout": TensorData.from_imageset(splits.heldout, self.device, splits.augment),
                "test": TensorData.from_imageset(splits.test, self.device, splits.augment),
                "mean": mean, "std": std,
            }
        return self._data[key]


@dataclass
class CellData:
    """Everything a cell needs before the method runs (shared by attacks that train extra models)."""

    cell: CellSpec
    splits: Splits
    split: ForgetSplit
    train: TensorData
    forget: TensorData
    retain: TensorData
    test: TensorData
    heldout: TensorData
    mean: list[float]
    std: list[float]
    original_key: str
    reference_key: str
    device: torch.device
    ingredients: dict[str, Any] = field(default_factory=dict)  # what determines the original model (cache keys)

    def make_model(self) -> nn.Module:
        """The architecture with the seeded initialisation the original model started from."""
        return self.model_factory()()

    def model_factory(self) -> Callable[[], nn.Module]:
        """:meth:`make_model` as a callable that holds only what builds the model (``request.new_model``:
        a bound method would let a method reach this cell's test split through ``__self__``)."""
        d = self.cell.dataset
        return functools.partial(_fresh_model, d.model, tuple(self.splits.image_shape), self.splits.num_classes,
                                 tuple(self.mean), tuple(self.std), dict(d.model_options), self.cell.seed,
                                 self.device)

    def request(self, model: nn.Module, *, heldout: bool, budget: Budget | None = None,
                forget: TensorData | None = None, retain: TensorData | None = None) -> UnlearnRequest:
        held = held_c = None
        if heldout:
            held = self.heldout
            if self.split.forget_class is not None:  # third-party data must come from the other classes
                held = held.subset(torch.nonzero(held.y != self.split.forget_class).flatten())
                # unseen images of the forgotten class, for stop rules (request.heldout_forgotten)
                held_c = self.heldout.subset(torch.nonzero(self.heldout.y == self.split.forget_class).flatten())
        return UnlearnRequest(model=model, forget=forget if forget is not None else self.forget,
                              retain=retain if retain is not None else self.retain,
                              num_classes=self.splits.num_classes, kind=self.split.kind,
                              recipe=self.cell.dataset.recipe, new_model=self.model_factory(), seed=self.cell.seed,
                              budget=budget or Budget(self.cell.max_epochs), forget_class=self.split.forget_class,
                              heldout=held, heldout_forgotten=held_c)


def _fresh_model(arch: str, image_shape: tuple, num_classes: int, mean: tuple, std: tuple, options: dict,
                 seed: int, device: torch.device) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(arch, image_shape, num_classes, list(mean), list(std), **options)
    return prepare(model, device)


def prepare_cell(cell: CellSpec, ctx: RunContext) -> CellData:
    splits = ctx.splits(cell)
    split = build_request(splits, cell.request.kind, cell.request.params, cell.seed)
    data = ctx.device_data(splits)
    train = data["train"]
    if split.train_tag:  # the request changed the training data (e.g. poisoning)
        train = TensorData.from_imageset(split.train, ctx.device, splits.augment)
    forget_idx = split.forget_idx.to(ctx.device)
    retain_idx = split.retain_idx.to(ctx.device)
    d = cell.dataset
    ingredients = {"data": splits.fingerprint, "dataset": {"name": d.spec.name, "heldout": d.spec.heldout,
                                                            "train_subset": d.spec.train_subset,
                                                            "options": dict(d.spec.options)},
                   "model": d.model, "model_options": d.model_options, "recipe": d.recipe.as_dict(),
                   "seed": cell.seed, "train_tag": split.train_tag, "device_type": ctx.device.type}
    original_key = ModelCache.key("original", ingredients)
    reference_key = ModelCache.key("retrain", {**ingredients, "retain": split.hashes["retain"],
                                               "max_epochs": cell.max_epochs})
    return CellData(cell=cell, splits=splits, split=split, train=train, forget=train.subset(forget_idx),
                    retain=train.subset(retain_idx), test=data["test"], heldout=data["heldout"], mean=data["mean"],
                    std=data["std"], original_key=original_key, reference_key=reference_key, device=ctx.device,
                    ingredients=ingredients)


def _timed_build(device: torch.device, fn) -> tuple[nn.Module, dict[str, Any]]:
    """Build a model under the timer, the memory peak and the pass counter; the info stored beside it."""
    sync(device)
    with PeakMemory(device) as mem, count_work() as work:
        t0 = time.perf_counter()
        model = fn()
        sync(device)
        elapsed = time.perf_counter() - t0
    return model, {"train_time_s": elapsed, "peak_mem_mib": mem.mib, "passes_fwd": work.fwd,
                   "passes_bwd": work.bwd, "timing_env": timing_env(device)}


def original_model(cd: CellData, ctx: RunContext) -> tuple[nn.Module, dict[str, Any]]:
    def train() -> nn.Module:
        model = cd.make_model()
        fit(model, cd.train, cd.cell.dataset.recipe, seed=cd.cell.seed)
        return model

    return _cached(ctx, cd.original_key, cd, train)


def reference_model(cd: CellData, ctx: RunContext, original: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """The retrain reference, produced by the registered ``retrain`` method itself."""
    retrain = create_method("retrain")

    def train() -> nn.Module:
        seed_everything(cd.cell.seed)
        return retrain.unlearn(cd.request(copy.deepcopy(original), heldout=False))

    return _cached(ctx, cd.reference_key, cd, train)


def _cached(ctx: RunContext, key: str, cd: CellData, train) -> tuple[nn.Module, dict[str, Any]]:
    if key in ctx._models:  # resident from an earlier cell of this process
        ctx._models.move_to_end(key)
        return ctx._models[key]
    model, info = _load_or_build(ctx, key, cd, train)
    ctx._models[key] = (model, info)
    while len(ctx._models) > ctx.resident_models:
        ctx._models.popitem(last=False)
    return model, info


def _load_or_build(ctx: RunContext, key: str, cd: CellData, train) -> tuple[nn.Module, dict[str, Any]]:
    if ctx.cache.has(key):
        model = cd.make_model()
        try:
            info = ctx.cache.load(key, model)
        except CacheEntryError:  # reported and removed by the cache: build it anew
            pass
        else:
            model = prepare(model, cd.device)
            model.eval()
            return model, info
    model, info = _timed_build(cd.device, train)
    info["device_name"] = info["timing_env"]["device_name"]
    ctx.cache.save(key, model, info)
    ctx._timed[key] = {"time_s": info["train_time_s"], "peak_mem_mib": info["peak_mem_mib"]}
    model.eval()
    return model, info


def reference_timing(cd: CellData, ctx: RunContext, original: nn.Module, info: dict[str, Any]) -> dict[str, Any]:
    """The retrain reference's time, comparable with times measured now: measured by this process (built or
    re-timed here), or read from the cache when it was measured under the same timing environment (device
    name, library versions, CPU threads, precision); otherwise -- or when ``ctx.retime_reference`` -- the
    reference is trained again under the timer (its cached weights stay as they are)."""
    key = cd.reference_key
    if key in ctx._timed:
        return {**ctx._timed[key], "in_run": True}
    if not ctx.retime_reference and info.get("timing_env") == timing_env(cd.device):
        return {"time_s": info["train_time_s"], "peak_mem_mib": info.get("peak_mem_mib", float("nan")),
                "in_run": False}
    retrain = create_method("retrain")

    def train() -> nn.Module:
        seed_everything(cd.cell.seed)
        return retrain.unlearn(cd.request(copy.deepcopy(original), heldout=False))

    _, timed = _timed_build(cd.device, train)
    ctx._timed[key] = {"time_s": timed["train_time_s"], "peak_mem_mib": timed["peak_mem_mib"]}
    return {**ctx._timed[key], "in_run": True}


class CellHarness:
    """The harness side of ``attacks/seam.py``'s :class:`~unlearnbench.attacks.seam.CellHarness` protocol:
    what attacks that need models of their own may ask about the cell they score."""

    def __init__(self, cd: CellData, ctx: RunContext, method=None, role: str = "unlearned",
                 original: nn.Module | None = None):
        self._cd, self._ctx, self._method, self.role, self.original = cd, ctx, method, role, original

    @property
    def device(self) -> torch.device:
        return self._cd.device

    @property
    def recipe(self):
        return self._cd.cell.dataset.recipe

    @property
    def cache(self) -> ModelCache:
        return self._ctx.cache

    @property
    def model_ingredients(self) -> dict[str, Any]:
        return dict(self._cd.ingredients)

    @property
    def max_epochs(self) -> float | None:
        return self._cd.cell.max_epochs

    @property
    def method(self):
        if self.role == "reference":
            return create_method("retrain")
        if self._method is None:
            raise MetricError("this metric needs the evaluated method: score through the harness "
                              "(evaluate(..., method=...)) or run_cell")
        return self._method

    def options(self, metric: str) -> dict[str, Any]:
        return dict(self._cd.cell.metric_options.get(metric, {}) or {})

    def fresh_model(self) -> nn.Module:
        return self._cd.make_model()

    def unlearn(self, method, model: nn.Module, *, forget: TensorData, retain: TensorData, seed: int,
                new_model) -> nn.Module:
        req = self._cd.request(model, heldout="needs_heldout" in method.tags, forget=forget, retain=retain)
        req = dataclasses.replace(req, seed=seed, new_model=new_model)
        seed_everything(seed)
        return method.unlearn(req)


class Evaluation:
    """Scoring one model with a cell's metric groups, in two stages: ``device_stage`` (main thread:
    computes the logits every group reads and runs the device-bound groups, e.g. shadow-model attacks)
    and ``host_stage`` (host-only groups such as scikit-learn attacks on those logits; safe on a worker
    thread because it never runs a model). ``result`` runs whatever has not run yet. ``method``, ``role``
    (``unlearned`` | ``reference``) and ``original`` reach attacks through :class:`CellHarness`."""

    def __init__(self, model: nn.Module, cd: CellData, ctx: RunContext, metrics: tuple[str, ...], *,
                 method=None, role: str = "unlearned", original: nn.Module | None = None):
        self.ectx = EvalContext(model=model, train=cd.train, forget=cd.forget, retain=cd.retain, test=cd.test,
                                heldout=cd.heldout, split=cd.split, num_classes=cd.splits.num_classes,
                                seed=cd.cell.seed, batch_size=cd.cell.dataset.recipe.eval_batch_size,
                                harness=CellHarness(cd, ctx, method, role, original))
        infos = [metric_info(m) for m in metrics]
        self._device = [i for i in infos if i.device_bound]
        self._host = [i for i in infos if not i.device_bound]
        self.values: dict[str, float] = {}
        self.scores: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self._device_done = self._host_done = False

    def _run(self, infos) -> None:
        for info in infos:
            res = info.fn(self.ectx)
            self.values.update(res.values)
            self.scores.update(res.scores)

    def device_stage(self) -> "Evaluation":
        with self._lock:
            if not self._device_done:
                self.ectx.prefetch()
                bad = [p for p in ("forget", "retain", "test") if not bool(torch.isfinite(self.ectx.logits(p)).all())]
                if bad:
                    raise FloatingPointError(f"the model's outputs on {', '.join(bad)} are not finite (NaN/inf): "
                                             "the method diverged")
                self._run(self._device)
                self._device_done = True
        return self

    def host_stage(self) -> "Evaluation":
        with self._lock:
            if not self._host_done:
                self._run(self._host)
                self._host_done = True
        return self

    def result(self) -> "Evaluation":
        return self.device_stage().host_stage()


def evaluate(model: nn.Module, cd: CellData, ctx: RunContext, metrics: tuple[str, ...], *, method=None,
             role: str = "unlearned", original: nn.Module | None = None) -> Evaluation:
    """Score ``model`` with the metric groups ``metrics`` (both stages, on this thread)."""
    return Evaluation(model, cd, ctx, metrics, method=method, role=role, original=original).result()


def reference_evaluation(cd: CellData, ctx: RunContext, reference: nn.Module, original: nn.Module) -> Evaluation:
    """The retrain reference's scores, computed once per (reference, metrics) and shared by the cell's methods."""
    key = (cd.reference_key, cd.cell.metrics, stable_hash(cd.cell.metric_options), cd.cell.request.label)
    with ctx._refs_lock:
        if key not in ctx._refs:
            ctx._refs[key] = Evaluation(reference, cd, ctx, cd.cell.metrics, role="reference", original=original)
        return ctx._refs[key]


def _failed(record: RunRecord, exc: BaseException) -> tuple[RunRecord, dict[str, np.ndarray]]:
    record.status = "failed"
    record.reason = f"{type(exc).__name__}: {exc}\n" + "".join(traceback.format_exc(limit=6))[-2000:]
    record.metrics = {}
    return record, {}


@dataclass
class PendingCell:
    """A cell whose method has run; ``finish`` scores it (host work only) and builds the record."""

    record: RunRecord
    method: Any
    request: UnlearnRequest
    model: nn.Module
    original: nn.Module
    evaluation: Evaluation
    reference: Evaluation
    costs: dict[str, float]
    phase: _Phases

    def finish(self) -> tuple[RunRecord, dict[str, np.ndarray]]:
        record = self.record
        self.phase.resume()
        try:
            ectx = self.evaluation.ectx  # after timing, report() may see the original and the test split
            after = ReportData(original=self.original, heldout=ectx.heldout, test=ectx.test)
            extra = self.method.report(self.model, dataclasses.replace(self.request, evaluation=after))
            self.phase.mark("report", sync_device=False)
            result = self.evaluation.host_stage()
            ref = self.reference.host_stage()
            self.phase.mark("evaluate", sync_device=False)
        except Exception as exc:  # a failing method or metric is recorded, not fatal for the suite
            return _failed(record, exc)
        name = record.method
        values = dict(result.values)
        values.update(gaps(result.values, ref.values))
        values.update({k if k.startswith(name + ".") else f"{name}.{k}": float(v)
                       for k, v in {**self.request.info, **extra}.items()})
        values.update(self.costs)
        values.update(self.phase.as_metrics())
        record.metrics = values
        return record, dict(result.scores)


def start_cell(cell: CellSpec, ctx: RunContext) -> PendingCell | tuple[RunRecord, dict[str, np.ndarray]]:
    """Everything of a cell that uses the device: splits, original and reference models, the timed
    ``unlearn``, and the device stage of scoring. Returns a finished (record, scores) for cells that
    are not applicable or failed, else a :class:`PendingCell`."""
    device = ctx.device
    phase = _Phases(device)
    cell_key = cell.key(device.type, ctx.cpu_threads)
    method = create_method(cell.method, cell.method_params)
    env = environment(device, cell.seed)
    record = RunRecord(cell_key=cell_key, suite=cell.suite, dataset=cell.dataset.spec.display,
                       model=cell.dataset.model, request=cell.request.label, method=cell.method, seed=cell.seed,
                       status="ok", config=cell.config(), config_hash=cell_key, hashes={}, env=env)
    if device.type == "cpu":
        env["peak_mem_note"] = CPU_MEMORY_NOTE
    cd = prepare_cell(cell, ctx)
    phase.mark("prepare")
    record.hashes = {**cd.splits.hashes, **cd.split.hashes, "original_model": cd.original_key,
                     "reference_model": cd.reference_key}
    original, orig_info = original_model(cd, ctx)
    phase.mark("original")
    reason = method.not_applicable(cd.split.kind, original)
    if reason:
        record.status, record.reason = "not_applicable", reason
        return record, {}
    reference, ref_info = reference_model(cd, ctx, original)
    request = cd.request(copy.deepcopy(original), heldout="needs_heldout" in method.tags)
    try:
        ref_time = reference_timing(cd, ctx, original, ref_info)
        env["reference_timing"] = {**ref_info.get("timing_env", {}), "measured_in_run": ref_time["in_run"]}
        ref_eval = reference_evaluation(cd, ctx, reference, original).device_stage()
        phase.mark("reference")
        if cell.method == "retrain":  # the cached reference is this method's output; its cost was measured then
            model = reference
            time_s, peak = ref_time["time_s"], ref_time["peak_mem_mib"]
            work = WorkCount(fwd=int(ref_info["passes_fwd"]), bwd=int(ref_info["passes_bwd"]))
        else:
            seed_everything(cell.seed)
            sync(device)
            with PeakMemory(device) as mem, count_work() as work:
                t0 = time.perf_counter()
                model = method.unlearn(request)
                sync(device)
                time_s = time.perf_counter() - t0
            peak = mem.mib
        if not isinstance(model, nn.Module):
            raise TypeError(f"{cell.method}.unlearn returned {type(model).__name__}, not an nn.Module")
        model.eval()
        phase.mark("unlearn")
        evaluation = Evaluation(model, cd, ctx, cell.metrics, method=method, role="unlearned",
                                original=original).device_stage()
        phase.mark("evaluate")
    except Exception as exc:  # a failing method is recorded, not fatal for the suite
        return _failed(record, exc)
    costs = cost_values(cd, original, model, time_s, peak, work, ref_time, ref_info, orig_info)
    return PendingCell(record, method, request, model, original, evaluation, ref_eval, costs, phase)


def cost_values(cd: CellData, original: nn.Module, model: nn.Module, time_s: float, peak: float, work: WorkCount,
                ref_time: dict[str, Any], ref_info: dict[str, Any], orig_info: dict[str, Any]) -> dict[str, float]:
    """The declared cost values of a cell (``attacks/costs.py``)."""
    nan = float("nan")
    ref_passes = float(ref_info["passes_fwd"] + ref_info["passes_bwd"])
    did_work = work.passes > 0 or any(v > 0 for v in work.other.values())
    costs = {
        "time_s": float(time_s), "peak_mem_mib": float(peak),
        "speedup_vs_retrain": float(ref_time["time_s"] / time_s) if did_work and time_s >= TIMER_FLOOR_S else nan,
        "passes_vs_retrain": ref_passes / work.passes if work.passes > 0 else nan,
        "flops": flops_of(work, per_example_flops(original, cd.splits.image_shape)),
        "extra_params": float(count_parameters(model) - count_parameters(original)),
        "extra_bytes": float(state_bytes(model) - state_bytes(original)),
        "original_train_time_s": float(orig_info["train_time_s"]),
        "retrain_time_s": float(ref_time["time_s"]),
        "retrain_time_in_run": float(ref_time["in_run"]),
        "retrain_passes": ref_passes,
    }
    costs.update({k: float(v) for k, v in work.as_dict().items()})
    return costs


def run_cell(cell: CellSpec, ctx: RunContext) -> tuple[RunRecord, dict[str, np.ndarray]]:
    """Run one cell on this thread and return its record (ok / not_applicable / failed) and per-example scores."""
    started = start_cell(cell, ctx)
    return started if isinstance(started, tuple) else started.finish()
