"""``unlearnbench tune``: every method at its best, chosen without looking at the answer.

One Optuna study per (suite, dataset, model, request, method). A trial draws values inside the method's
declared search ranges (``param(..., search=...)``), runs the method on *validation cells* and scores it
there; the chosen values go to a suite overlay (TOML) that ``unlearnbench run --tuned FILE`` applies.
The protocol (docs/tuning.md states it for users):

Validation cells, never the evaluated ones
    A validation cell is a cell of the same dataset, model, recipe and request kind whose seed is
    ``VALIDATION_SEED_BASE + k`` (k = 0 .. n-1), far from any suite seed: its own original model, its own
    forget request and its own retrain reference. For a ``class`` request the forgotten class is set
    explicitly to a class that no evaluated cell forgets (the classes the suite's seeds draw, or its fixed
    class, are excluded). The forget sets' index hashes are recorded in the overlay.
Scored on the held-out split, never on the test split
    The held-out split (carved from the training set, never trained on) is cut into two fixed disjoint
    halves: the *scoring half* plays the test split's role in every metric of a trial (test accuracy,
    the matched non-members of the loss AUC, the SVC's non-members); the *method half* is what a method
    tagged ``needs_heldout`` receives as its unseen third-party data (without the forgotten class, as in
    the harness). The test split is never read.
Objectives
    ``retrain-gap`` (default): ``avg_gap`` of the trial's model against the validation cell's own retrain
    reference (cached in the model cache like every reference, built once, shared by every trial and
    method). ``retrain-free``: needs no retrained model, only the original:
    ``mean(|forget_acc - F*|, |retain_acc - retain_acc_orig|, |test_acc' - test_acc'_orig|, |loss_auc - 0.5|)``
    with ``F* = 0`` for class and backdoor requests (a retrained model cannot predict a class or a trigger it
    never saw) and ``F* = test_acc`` of the trial's own model otherwise (a retrained model classifies
    forgotten random samples as well as unseen ones); ``test_acc'`` is the scoring half's accuracy on the
    classes not forgotten; ``loss_auc`` is ``mia.loss_auc`` (forget set vs matched unseen images of the
    scoring half), 0.5 for a model that cannot tell them apart.
    A study's value is the mean over its validation cells; lower is better.
Compute cap
    A trial may use at most ``cap`` (default 0.5) times the example passes (forward + backward,
    ``methods/cost.py``) that retraining the validation cell took; the pass counter stops the method at the
    first forward pass beyond it and the trial is *pruned* (never chosen). Work that is not a network pass
    (e.g. LP solves) is capped by time instead: ``time_s <= cap x`` the reference's training time.
Sampler and pruner
    TPE (seeded; multivariate), the method's defaults enqueued as the first trial so that a tuned value
    is never worse than the default on the validation cells; a median pruner on the running mean after
    each validation cell. Diverged (non-finite outputs) or failing trials score ``PENALTY`` (1.0, the
    largest avg_gap), so TPE learns to avoid them.
Storage
    ``<results>/tune.sqlite`` (Optuna's RDB storage): every finished trial is committed at once; a study
    killed at any moment resumes where it stopped (the trial that was running is re-run with its values).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from unlearnbench.attacks.derived import gaps
from unlearnbench.datasets import TensorData, build_request
from unlearnbench.errors import UserError
from unlearnbench.methods import Search, create_method, method_class, search_space
from unlearnbench.methods.cost import WorkLimitExceeded, count_work

from .harness import (CellData, Evaluation, RunContext, original_model, prepare_cell, reference_model,
                      seed_everything, sync)
from .suite import CellSpec, DatasetEntry, RequestEntry, Suite, stable_hash

VALIDATION_SEED_BASE = 1_000_000  # validation cells' seeds: base + k; suite seeds must stay below it
HALF_SEED = 20251125  # fixes the cut of the held-out split into the scoring half and the method half
DEFAULT_CAP = 0.5
DEFAULT_TRIALS = 30
DEFAULT_VALIDATION_CELLS = 2
# class requests: a value must carry over to other classes. Measured on digits (baselines suite, class, 30 trials):
# chosen on 2 validation classes, scrub left the evaluated classes at 0.36 forget accuracy (avg_gap 0.171); on 4,
# at 0.008 (avg_gap 0.002)
DEFAULT_CLASS_VALIDATION_CELLS = 4
OBJECTIVES = ("retrain-gap", "retrain-free")
TUNE_METRICS = ("accuracy", "mia.loss_auc", "mia.svc_efficacy")
PENALTY = 1.0  # value of a diverged or failing trial: the largest possible avg_gap
STORAGE_NAME = "tune.sqlite"
OVERLAY_FORMAT = "unlearnbench-tuned/1"
TUNE_VERSION = 1  # bump when the protocol changes what a trial's value means (new studies then start)


class TuneError(UserError, ValueError):
    """A tuning run or an overlay file cannot be used as given; the message names the fix."""


# ------------------------------------------------------------------------------ validation cells


@dataclass
class ValidationCell:
    """A prepared validation cell: its data (test = the scoring half, heldout = the method half), models
    and the reference's scores, shared by every trial of every method on it."""

    cell: CellSpec
    cd: CellData
    original: torch.nn.Module
    reference: torch.nn.Module
    ref_info: dict[str, Any]
    ref_values: dict[str, float]
    orig_values: dict[str, float]

    @property
    def retrain_passes(self) -> int:
        return int(self.ref_info["passes_fwd"]) + int(self.ref_info["passes_bwd"])

    @property
    def forget_hash(self) -> str:
        return self.cd.split.hashes["forget"]


def heldout_halves(heldout: TensorData) -> tuple[torch.Tensor, torch.Tensor]:
    """(scoring-half indices, method-half indices) into the held-out split: a fixed random cut in two
    disjoint halves (the scoring half gets the extra image of an odd count)."""
    n = len(heldout)
    if n < 4:
        raise TuneError(f"the held-out split has {n} images; tuning needs at least 4 (two halves): raise the "
                        "dataset's heldout = ... in the suite")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(HALF_SEED)).to(heldout.device)
    k = (n + 1) // 2
    return torch.sort(perm[:k]).values, torch.sort(perm[k:]).values


def evaluated_classes(suite: Suite, dataset: DatasetEntry, request: RequestEntry, splits, seeds) -> set[int]:
    """The classes that the suite's cells of this class request forget (its fixed class, or the seeds' draws)."""
    out = set()
    for s in seeds:
        out.add(int(build_request(splits, request.kind, request.params, int(s)).forget_class))
    return out


def validation_cells(suite: Suite, dataset: DatasetEntry, request: RequestEntry, method: str, n: int,
                     ctx: RunContext, eval_seeds: tuple[int, ...] | None = None) -> list[CellSpec]:
    """The ``n`` validation cells of (dataset, request, method): seeds ``VALIDATION_SEED_BASE + k``; for a class
    request, classes no evaluated cell forgets (see the module docstring)."""
    eval_seeds = tuple(suite.seeds if eval_seeds is None else eval_seeds)
    if any(s >= VALIDATION_SEED_BASE for s in eval_seeds):
        raise TuneError(f"suite {suite.name!r} uses seeds >= {VALIDATION_SEED_BASE}, the validation cells' range: "
                        "use smaller seeds")
    seeds = [VALIDATION_SEED_BASE + k for k in range(n)]
    params_list = [dict(request.params) for _ in seeds]
    if request.kind == "class":
        probe = CellSpec(suite.name, dataset, request, method, {}, eval_seeds[0], (), {})
        splits = ctx.splits(probe)
        taken = evaluated_classes(suite, dataset, request, splits, eval_seeds)
        free = [c for c in range(splits.num_classes) if c not in taken]
        if not free:
            raise TuneError(f"{dataset.spec.display}: the suite's class cells forget every class "
                            f"({sorted(taken)}); no class is left for validation cells")
        order = torch.randperm(len(free), generator=torch.Generator().manual_seed(VALIDATION_SEED_BASE)).tolist()
        free = [free[i] for i in order]
        params_list = [{"class": free[k % len(free)]} for k in range(n)]
    metric_options = {k: v for k, v in suite.metric_options.items() if k in TUNE_METRICS}
    out = []
    for seed, params in zip(seeds, params_list):
        out.append(CellSpec(suite.name, dataset, RequestEntry(request.kind, params), method,
                            create_method(method).hyperparameters(), seed, TUNE_METRICS, metric_options,
                            suite.max_epochs))
    return out


def prepare_validation(cell: CellSpec, ctx: RunContext) -> ValidationCell:
    """Build (or load from the model cache) the validation cell's original and retrain reference, cut the
    held-out split, and score the reference and the original on it (once, shared by all trials)."""
    cd = prepare_cell(cell, ctx)
    score_idx, method_idx = heldout_halves(cd.heldout)
    cd = dataclasses.replace(cd, test=cd.heldout.subset(score_idx), heldout=cd.heldout.subset(method_idx))
    original, _ = original_model(cd, ctx)
    reference, ref_info = reference_model(cd, ctx, original)
    ref = Evaluation(reference, cd, ctx, cell.metrics, role="reference", original=original).result()
    orig = Evaluation(original, cd, ctx, cell.metrics, role="reference", original=original).result()
    return ValidationCell(cell, cd, original, reference, ref_info, dict(ref.values), dict(orig.values))


# ------------------------------------------------------------------------------------ scoring


def retrain_free_score(values: dict[str, float], orig: dict[str, float], kind: str) -> float:
    """The retrain-free objective (module docstring): needs the trial's and the original's values only."""
    target_forget = 0.0 if kind in ("class", "backdoor") else values["test_acc"]
    test_key = "test_acc_rest" if kind == "class" and "test_acc_rest" in values else "test_acc"
    terms = [abs(values["forget_acc"] - target_forget), abs(values["retain_acc"] - orig["retain_acc"]),
             abs(values[test_key] - orig[test_key]), abs(values["mia.loss_auc"] - 0.5)]
    return float(sum(terms) / len(terms))


def score(values: dict[str, float], vc: ValidationCell, objective: str) -> float:
    if objective == "retrain-gap":
        v = gaps(values, vc.ref_values)["avg_gap"]
    else:
        v = retrain_free_score(values, vc.orig_values, vc.cd.split.kind)
    return float(v) if math.isfinite(v) else PENALTY


@dataclass
class CellOutcome:
    status: str  # ok | capped | diverged | failed
    value: float
    info: dict[str, Any] = field(default_factory=dict)


def run_on_cell(method_name: str, params: dict[str, Any], vc: ValidationCell, ctx: RunContext, objective: str,
                cap: float) -> CellOutcome:
    """One trial on one validation cell: the method under the pass cap, then the objective."""
    method = create_method(method_name, params)
    limit = int(cap * vc.retrain_passes)
    request = vc.cd.request(copy.deepcopy(vc.original), heldout="needs_heldout" in method.tags)
    seed_everything(vc.cell.seed)
    sync(ctx.device)
    t0 = time.perf_counter()
    try:
        with count_work(limit=limit) as work:
            model = method.unlearn(request)
            sync(ctx.device)
    except WorkLimitExceeded as exc:
        return CellOutcome("capped", PENALTY, {"passes": exc.passes, "limit": limit,
                                               "time_s": time.perf_counter() - t0})
    except Exception as exc:  # noqa: BLE001 - a failing trial is a bad trial, not the end of the study
        return CellOutcome("failed", PENALTY, {"error": f"{type(exc).__name__}: {exc}"[:300]})
    time_s = time.perf_counter() - t0
    info: dict[str, Any] = {"passes": work.passes, "limit": limit, "time_s": time_s,
                            "passes_vs_retrain": work.passes / max(1, vc.retrain_passes)}
    if work.other and time_s > cap * float(vc.ref_info.get("train_time_s", math.inf)):
        return CellOutcome("capped", PENALTY, {**info, "time_cap": True})
    try:
        model.eval()
        ev = Evaluation(model, vc.cd, ctx, vc.cell.metrics, method=method, role="unlearned",
                        original=vc.original).result()
    except FloatingPointError as exc:
        return CellOutcome("diverged", PENALTY, {**info, "error": str(exc)[:300]})
    values = dict(ev.values)
    keep = ("forget_acc", "retain_acc", "test_acc", "test_acc_forgotten_class", "test_acc_rest", "mia.loss_auc",
            "mia.svc_efficacy")
    info.update({k: values[k] for k in keep if k in values and math.isfinite(values[k])})
    info["avg_gap"] = gaps(values, vc.ref_values)["avg_gap"]
    info["retrain_free"] = retrain_free_score(values, vc.orig_values, vc.cd.split.kind)
    return CellOutcome("ok", score(values, vc, objective), info)


# ------------------------------------------------------------------------------------- studies


@dataclass
class StudyResult:
    key: tuple[str, str, str, str]  # (dataset, model, request, method)
    name: str
    best_params: dict[str, Any]
    best_value: float
    best_trial: int
    default_value: float
    trials: dict[str, int]  # state -> count
    wall_s: float  # this invocation's wall time on the study
    total_s: float  # the study's trial time summed over every invocation (resumed ones included)
    provenance: dict[str, Any]
    best_info: list[dict[str, Any]]


def suggest(trial, name: str, s: Search) -> Any:
    if s.kind == "categorical":
        return trial.suggest_categorical(name, list(s.values))
    if s.kind == "int":
        return trial.suggest_int(name, int(s.low), int(s.high), log=s.log)
    return trial.suggest_float(name, float(s.low), float(s.high), log=s.log)


def recipe_anchor(defaults: dict[str, Any], space: dict[str, Search], recipe) -> dict[str, Any]:
    """The defaults with the optimiser settings of the recipe that trained the original model: ``lr`` and
    ``batch_size`` where the method searches them (clipped into the range; for a categorical, the nearest
    value). The public defaults are CIFAR-10 ResNet-18 values; the recipe is what is known to train *this*
    model on *this* data, so it is the natural second point to try -- chosen before any trial, from the
    suite, never from the evaluated cells."""
    out = dict(defaults)
    for name, want in (("lr", float(recipe.lr)), ("batch_size", int(recipe.batch_size))):
        s = space.get(name)
        if s is None:
            continue
        if s.kind == "categorical":
            nums = [v for v in s.values if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if nums:
                out[name] = min(nums, key=lambda v: (abs(math.log(v / want)) if v > 0 and want > 0 else abs(v - want)))
        else:
            v = min(max(want, s.low), s.high)
            out[name] = int(round(v)) if s.kind == "int" else float(v)
    return out


def study_name(suite: str, dataset: DatasetEntry, request: RequestEntry, method: str, objective: str, cap: float,
               cells: list[CellSpec], space: dict[str, Search]) -> str:
    """Readable prefix plus a hash of everything that gives a trial's value its meaning: a change (search
    space, cap, validation cells, recipe, budget, protocol version) starts a new study; the same inputs
    resume the stored one."""
    ident = {"v": TUNE_VERSION, "space": {k: dataclasses.asdict(v) for k, v in sorted(space.items())}, "cap": cap,
             "objective": objective, "cells": [c.key("any") for c in cells], "half": HALF_SEED}
    return (f"{suite}/{dataset.spec.display}/{dataset.model}/{request.label}/{method}/{objective}/"
            f"{stable_hash(ident, 10)}")


def storage_url(results_dir: Path) -> str:
    return "sqlite:///" + str((Path(results_dir) / STORAGE_NAME).resolve())


@contextlib.contextmanager
def tune_lock(results_dir: Path):
    """One tuning process per results folder (an exclusive ``flock``, released by the kernel when the process
    dies, SIGKILL included): a RUNNING trial found by the lock holder is a killed run's, safe to re-run."""
    import fcntl

    Path(results_dir).mkdir(parents=True, exist_ok=True)
    path = Path(results_dir) / "tune.lock"
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise TuneError(f"another `unlearnbench tune` is running on {results_dir} (it holds {path}): wait for it, "
                            "or give this one another --results") from exc
        yield
    finally:
        fh.close()


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def run_study(*, suite: Suite, dataset: DatasetEntry, request: RequestEntry, method: str, cells: list[ValidationCell],
              ctx: RunContext, objective: str = "retrain-gap", n_trials: int = DEFAULT_TRIALS, cap: float = DEFAULT_CAP,
              seed: int = 0, timeout: float | None = None, commit: str = "", dirty: bool | None = None,
              on_trial: Callable[[Any], None] | None = None) -> StudyResult:
    """Run (or resume) the study of one (dataset, model, request, method) until it holds ``n_trials`` finished
    trials (complete or pruned), and return its best values with their provenance."""
    import optuna
    from optuna.trial import TrialState

    _quiet_optuna()
    space = search_space(method_class(method))
    if not space:
        raise TuneError(f"method {method!r} declares no search range (param(..., search=...)): nothing to tune")
    name = study_name(suite.name, dataset, request, method, objective, cap, [vc.cell for vc in cells], space)
    storage = optuna.storages.RDBStorage(storage_url(ctx.results_dir))
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=0),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0))
    # a RUNNING trial can only be a killed run's (tune_lock): fail it and run its values again
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(dict(t.params), user_attrs={"rerun_of": t.number})
    if not study.trials:
        defaults = create_method(method).hyperparameters()
        first = {k: defaults[k] for k in space}
        study.enqueue_trial(first, user_attrs={"defaults": True})
        anchor = recipe_anchor(first, space, dataset.recipe)
        if anchor != first:
            study.enqueue_trial(anchor, user_attrs={"recipe_anchor": True})
    finished = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))]
    # the sampler is seeded per session by (seed, study, trials so far): a resumed study continues
    # deterministically from what it holds
    sampler_seed = int(hashlib.sha256(f"{seed}|{name}|{len(study.trials)}".encode()).hexdigest()[:8], 16)
    study.sampler = optuna.samplers.TPESampler(seed=sampler_seed, multivariate=True,
                                               n_startup_trials=min(10, max(3, n_trials // 3)))

    def objective_fn(trial) -> float:
        params = {k: suggest(trial, k, s) for k, s in space.items()}
        t0 = time.perf_counter()
        values, infos = [], []
        try:
            for k, vc in enumerate(cells):
                out = run_on_cell(method, params, vc, ctx, objective, cap)
                infos.append({"cell": k, "status": out.status, **out.info})
                trial.set_user_attr(f"cell{k}", infos[-1])
                if out.status == "capped":
                    trial.set_user_attr("pruned_by", "compute cap")
                    raise optuna.TrialPruned(f"cell {k}: over the compute cap")
                values.append(out.value)
                running = sum(values) / len(values)
                if k < len(cells) - 1:
                    trial.report(running, step=k)
                    if trial.should_prune():
                        trial.set_user_attr("pruned_by", "median pruner")
                        raise optuna.TrialPruned(f"cell {k}: worse than the median")
        finally:
            trial.set_user_attr("time_s", time.perf_counter() - t0)
        return sum(values) / len(values)

    remaining = n_trials - len(finished)
    t0 = time.perf_counter()
    if remaining > 0:
        callbacks = [lambda s, t: on_trial(t)] if on_trial else None
        study.optimize(objective_fn, n_trials=remaining, timeout=timeout, catch=(), callbacks=callbacks,
                       gc_after_trial=False, show_progress_bar=False)
    wall = time.perf_counter() - t0
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    key = (dataset.spec.display, dataset.model, request.label, method)
    if not complete:  # every trial went over the cap (or was pruned): nothing to choose, nothing written
        return StudyResult(key, name, {}, float("nan"), -1, float("nan"), counts, time.perf_counter() - t0,
                           sum(float(t.user_attrs.get("time_s", 0.0)) for t in trials), {}, [])
    best = min(complete, key=lambda t: (t.value, t.number))
    default_trials = [t for t in trials if t.user_attrs.get("defaults") and t.state.is_finished()]
    default_value = (default_trials[0].value if default_trials and default_trials[0].value is not None
                     else float("nan"))
    total = sum(float(t.user_attrs.get("time_s", 0.0)) for t in trials)
    prov = {
        "study": name, "storage": STORAGE_NAME, "objective": objective, "trials": len(complete) + counts.get("pruned", 0),
        "trials_complete": len(complete), "trials_pruned": counts.get("pruned", 0), "best_value": float(best.value),
        "best_trial": int(best.number), "default_value": float(default_value), "cap": float(cap),
        "validation_seeds": [vc.cell.seed for vc in cells],
        "validation_requests": [vc.cell.request.label for vc in cells],
        "validation_forget_hashes": [vc.forget_hash for vc in cells],
        "sampler": f"TPE(multivariate, seeded from seed={seed})", "pruner": "median (n_startup_trials=5)",
        "search_space": {k: s.describe() for k, s in space.items()}, "trial_time_s": round(total, 3),
        "commit": commit, "dirty": dirty, "protocol": TUNE_VERSION,
    }
    best_info = [best.user_attrs.get(f"cell{k}", {}) for k in range(len(cells))]
    return StudyResult(key, name, dict(best.params), float(best.value), int(best.number), float(default_value),
                       counts, wall, total, prov, best_info)


# ------------------------------------------------------------------------------------- overlays


_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(k: str) -> str:
    return k if _BARE.match(k) else json.dumps(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(str(k))} = {_toml_value(x)}" for k, x in v.items()) + " }" if v else "{}"
    if v is None:
        return '""'
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def write_overlay(path: Path, suite: str, results: list[StudyResult]) -> None:
    """Write (or update: entries of the same dataset/model/request/method are replaced, others kept) the
    overlay file. Atomic (written beside, then renamed)."""
    path = Path(path)
    entries: dict[tuple, dict[str, Any]] = {}
    if path.is_file():
        old = read_overlay_file(path)
        if old.get("suite") != suite:
            raise TuneError(f"{path} is the overlay of suite {old.get('suite')!r}, not {suite!r}: choose another --out")
        for e in old.get("tuned", []):
            entries[(e["dataset"], e["model"], e["request"], e["method"])] = e
    for r in results:
        entries[r.key] = {"dataset": r.key[0], "model": r.key[1], "request": r.key[2], "method": r.key[3],
                          "params": r.best_params, "study": r.provenance}
    lines = ["# Tuned hyperparameters written by `unlearnbench tune` (protocol: docs/tuning.md).",
             f"# Apply with: unlearnbench run --suite {suite} --tuned {path.name}",
             "# Each entry: the values chosen on validation cells (never the evaluated ones) and the study's provenance.",
             f"format = {_toml_value(OVERLAY_FORMAT)}", f"suite = {_toml_value(suite)}", ""]
    for key in sorted(entries):
        e = entries[key]
        lines += ["[[tuned]]"] + [f"{k} = {_toml_value(e[k])}" for k in ("dataset", "model", "request", "method")]
        lines.append(f"params = {_toml_value(dict(sorted(e['params'].items())))}")
        lines.append("[tuned.study]")
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in e["study"].items()]
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)


def read_overlay_file(path: Path) -> dict[str, Any]:
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    path = Path(path)
    if not path.is_file():
        raise TuneError(f"tuned overlay {path} does not exist: write one with `unlearnbench tune --out {path}`")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TuneError(f"{path} is not valid TOML ({exc}): pass the file `unlearnbench tune` wrote") from exc
    if data.get("format") != OVERLAY_FORMAT:
        raise TuneError(f"{path} is not an `unlearnbench tune` overlay (format {data.get('format')!r}, expected "
                        f"{OVERLAY_FORMAT!r})")
    return data


def load_overlay(path: str | Path, suite: Suite) -> dict[tuple[str, str, str, str], tuple[dict, dict]]:
    """Parse and check an overlay against ``suite``: the entries :func:`~.suite.apply_tuned` takes. Every entry
    must name a dataset, request and method of the suite, with values the method accepts."""
    from unlearnbench.methods import MethodError

    path = Path(path)
    data = read_overlay_file(path)
    if data.get("suite") != suite.name:
        raise TuneError(f"{path} was tuned for suite {data.get('suite')!r}, not {suite.name!r}: run --suite "
                        f"{data.get('suite')} --tuned {path}, or tune this suite")
    pairs = {(d.spec.display, d.model) for d in suite.datasets}
    labels = {r.label for r in suite.requests}
    out = {}
    for i, e in enumerate(data.get("tuned", [])):
        missing = [k for k in ("dataset", "model", "request", "method", "params", "study") if k not in e]
        if missing:
            raise TuneError(f"{path}: [[tuned]] entry {i} lacks {missing}")
        where = f"{path}: [[tuned]] entry {i} ({e['dataset']}/{e['model']}/{e['request']}/{e['method']})"
        if (e["dataset"], e["model"]) not in pairs:
            raise TuneError(f"{where}: suite {suite.name!r} has no dataset {e['dataset']!r} with model {e['model']!r}")
        if e["request"] not in labels:
            raise TuneError(f"{where}: suite {suite.name!r} has no request {e['request']!r} (it has {sorted(labels)})")
        if e["method"] not in suite.methods:
            raise TuneError(f"{where}: method {e['method']!r} is not in suite {suite.name!r}")
        try:
            create_method(e["method"], e["params"])
        except MethodError as exc:
            raise TuneError(f"{where}: {exc}") from exc
        prov = dict(e["study"])
        prov["overlay"] = path.name
        out[(e["dataset"], e["model"], e["request"], e["method"])] = (dict(e["params"]), prov)
    if not out:
        raise TuneError(f"{path} holds no [[tuned]] entry: nothing to apply")
    return out
