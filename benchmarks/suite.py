"""Suites: TOML files naming datasets, models, recipes, forget requests, methods, seeds and metrics.

A suite is declared data, not code (``benchmarks/suites/*.toml``). Its cells are the product
datasets x requests x methods x seeds. A malformed file raises :class:`SuiteError` naming the key
and its line. See ``benchmarks/suites/default.toml`` for a commented example of every key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from unlearnbench.attacks import MetricError, load_all, metric_info
from unlearnbench.datasets import DatasetError, DatasetSpec, request_label
from unlearnbench.datasets.requests import RequestParamError, check_request, list_requests
from unlearnbench.errors import UserError

from .validate import SEED_MAX, is_finite_number, is_int, is_number, seed_problem
from unlearnbench.methods import MethodError, Recipe, create_method, method_names
from unlearnbench.methods.models import MODELS
from unlearnbench.methods.training import RecipeError

SUITES_DIR = Path(__file__).parent / "suites"
TOP_KEYS = {"name", "description", "seeds", "methods", "metrics", "primary", "datasets", "requests", "recipes",
            "method_options", "metric_options", "tolerances", "budget"}
DATASET_KEYS = {"name", "model", "recipe", "heldout", "train_subset", "options", "label", "model_options",
                "requires", "overrides", "requests", "methods"}


class SuiteError(UserError, ValueError):
    """A suite file is malformed; the message names the file, the key and its line."""


@dataclass(frozen=True)
class DatasetEntry:
    spec: DatasetSpec
    model: str
    model_options: dict[str, Any]
    recipe_name: str
    recipe: Recipe
    requires: str | None  # "cuda": cells run only on a GPU (skipped with a stated reason elsewhere)
    overrides: dict[str, dict[str, Any]]  # method -> hyperparameters, for this dataset only
    requests: tuple[str, ...] | None  # request labels to run here (None: all)
    methods: tuple[str, ...] | None  # methods to run here (None: all of the suite's)


@dataclass(frozen=True)
class RequestEntry:
    kind: str
    params: dict[str, Any]

    @property
    def label(self) -> str:
        return request_label(self.kind, self.params)


@dataclass(frozen=True)
class CellSpec:
    """One cell: (dataset, model, request, method, seed) with everything that determines its result."""

    suite: str
    dataset: DatasetEntry
    request: RequestEntry
    method: str
    method_params: dict[str, Any]  # the full resolved hyperparameters (defaults included)
    seed: int
    metrics: tuple[str, ...]
    metric_options: dict[str, Any]
    max_epochs: float | None = None
    # where method_params came from: "default" (the method's declared defaults), "hand-set" (the suite's
    # method_options / dataset overrides) or "tuned" (an `unlearnbench tune` overlay, see apply_tuned)
    params_source: str = "default"
    tuning: dict[str, Any] | None = None  # tuned cells: the study's provenance (objective, trials, best value, ...)

    def config(self) -> dict[str, Any]:
        d = self.dataset
        cfg = {
            "dataset": d.spec.as_dict(), "model": d.model, "model_options": d.model_options,
            "recipe_name": d.recipe_name, "recipe": d.recipe.as_dict(),
            "request": {"kind": self.request.kind, "params": self.request.params, "label": self.request.label},
            "method": self.method, "method_params": self.method_params, "seed": self.seed,
            "metrics": list(self.metrics), "metric_options": self.metric_options, "max_epochs": self.max_epochs,
            "params_source": self.params_source,
        }
        if self.tuning is not None:
            cfg["tuning"] = self.tuning
        return cfg

    @classmethod
    def from_config(cls, config: dict[str, Any], suite: str) -> "CellSpec":
        """Rebuild a cell from a stored record's :meth:`config` (what ``unlearnbench reproduce`` re-runs).
        Its :meth:`key` equals the stored record's ``cell_key`` when the config round-trips."""
        d = config["dataset"]
        spec = DatasetSpec(name=d["name"], heldout=d.get("heldout"), train_subset=d.get("train_subset"),
                           options=tuple(sorted(d.get("options", {}).items())), label=d.get("label"))
        entry = DatasetEntry(spec=spec, model=config["model"], model_options=dict(config.get("model_options", {})),
                             recipe_name=config.get("recipe_name", ""), recipe=Recipe.from_dict(config["recipe"]),
                             requires=None, overrides={}, requests=None, methods=None)
        req = config["request"]
        return cls(suite, entry, RequestEntry(req["kind"], dict(req["params"])), config["method"],
                   dict(config["method_params"]), int(config["seed"]), tuple(config["metrics"]),
                   dict(config.get("metric_options", {})), config.get("max_epochs"),
                   str(config.get("params_source", "default")), config.get("tuning"))

    def key(self, device_type: str, cpu_threads: int | None = None) -> str:
        """Identity of the cell's result: changes when and only when an input that matters changes. On the
        CPU the torch thread count changes results (reductions split differently), so a count other than the
        default 1 enters the key; the determinism settings are fixed per device type (``setup_device``)."""
        cfg = self.config()
        cfg["dataset"].pop("label", None)
        cfg.pop("recipe_name")
        cfg.pop("params_source")  # provenance, not an input: a default and a hand-set cell with equal values are
        # one computation (and keys made before it was recorded stay valid); a tuned cell keeps its study in "tuning"
        cfg["request"].pop("label")
        cfg["request"]["params"] = {k: v for k, v in cfg["request"]["params"].items() if k != "label"}
        cfg["device_type"] = device_type
        if device_type == "cpu" and cpu_threads not in (None, 1):
            cfg["cpu_threads"] = int(cpu_threads)
        return stable_hash(cfg)

    @property
    def label(self) -> str:
        return f"{self.dataset.spec.display}/{self.dataset.model}/{self.request.label}/{self.method}/seed{self.seed}"


def stable_hash(obj: Any, n: int = 20) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_jsonable).encode()).hexdigest()[:n]


def _jsonable(o: Any):
    if isinstance(o, (tuple, set, frozenset)):
        return list(o)
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    return str(o)


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    path: str
    seeds: tuple[int, ...]
    datasets: tuple[DatasetEntry, ...]
    requests: tuple[RequestEntry, ...]
    methods: tuple[str, ...]
    method_options: dict[str, dict[str, Any]]
    metrics: tuple[str, ...]
    metric_options: dict[str, dict[str, Any]]
    primary: str = "avg_gap"
    tolerances: dict[str, float] = field(default_factory=dict)
    max_epochs: float | None = None

    def cells(self, methods: list[str] | None = None, seeds: list[int] | None = None,
              datasets: list[str] | None = None, requests: list[str] | None = None) -> list[CellSpec]:
        """All cells in run order: dataset, seed, request, method (so cached models are reused at once).

        The filters (``--methods``, ``--seeds``, ``--datasets``, ``--requests``) are validated: an empty
        filter, an unknown name (with the close matches) or a selection with no cell is a SuiteError."""
        for flag, given in (("--methods", methods), ("--seeds", seeds), ("--datasets", datasets),
                            ("--requests", requests)):
            if given is not None and len(given) == 0:
                raise SuiteError(f"{flag} is empty: name at least one, or leave {flag} out to run all of the suite's")
        chosen = list(methods) if methods is not None else list(self.methods)
        for m in chosen:
            method_names_check(m)
        if seeds is not None:
            for s in seeds:
                problem = seed_problem(s)
                if problem:
                    raise SuiteError(f"--seeds: {problem}")
        ds_names = {d.spec.display for d in self.datasets} | {d.spec.name for d in self.datasets}
        for name in datasets or ():
            if name not in ds_names:
                known = sorted({d.spec.display for d in self.datasets})
                raise SuiteError(f"--datasets: suite {self.name!r} has no dataset {name!r}.{_near(name, ds_names)} "
                                 f"It has: {', '.join(known)}")
        labels = [r.label for r in self.requests]
        for name in requests or ():
            if name not in labels:
                raise SuiteError(f"--requests: suite {self.name!r} has no request {name!r}.{_near(name, labels)} "
                                 f"It has: {', '.join(labels)}")
        # A name selects the dataset labelled so; only a name that is no dataset's label selects every
        # dataset of that name (``--datasets mnist`` is full MNIST, not also the ``mnist-sub1k`` subset).
        displays = {d.spec.display for d in self.datasets}
        wanted = set(datasets or ())
        out = []
        for d in self.datasets:
            if datasets and d.spec.display not in wanted and not (d.spec.name in wanted and d.spec.name not in displays):
                continue
            for seed in (seeds if seeds is not None else self.seeds):
                for r in self.requests:
                    if d.requests is not None and r.label not in d.requests:
                        continue
                    if requests and r.label not in requests:
                        continue
                    for m in chosen:
                        if d.methods is not None and m not in d.methods:
                            continue
                        overrides = {**self.method_options.get(m, {}), **d.overrides.get(m, {})}
                        method = create_method(m, overrides)
                        out.append(CellSpec(self.name, d, r, m, method.hyperparameters(), int(seed), self.metrics,
                                            self.metric_options, self.max_epochs,
                                            "hand-set" if overrides else "default"))
        if not out:
            given = ", ".join(f"{f} {','.join(map(str, v))}" for f, v in (
                ("--methods", methods), ("--seeds", seeds), ("--datasets", datasets), ("--requests", requests)) if v)
            raise SuiteError(f"suite {self.name!r} has no cell for {given or 'its own lists'} (a dataset's own "
                             "requests/methods lists may exclude them): nothing to run; widen the selection")
        seen: dict[str, CellSpec] = {}
        for c in out:  # two cells with one identity would run and be stored twice
            k = c.key("any")
            if k in seen:
                raise SuiteError(f"suite {self.name!r}: cells {seen[k].label} and {c.label} are the same cell "
                                 "(duplicated entries): remove one")
            seen[k] = c
        return out


def apply_tuned(cells: list[CellSpec], entries: dict[tuple[str, str, str, str], tuple[dict[str, Any], dict[str, Any]]]
                ) -> list[CellSpec]:
    """Apply a tuned overlay (``unlearnbench run --tuned FILE``; parsed by ``benchmarks/tune.py``): ``entries``
    maps (dataset, model, request label, method) to (tuned values, the study's provenance). A cell it names
    gets the method's declared defaults plus the tuned values -- the suite's hand-set overrides do not apply,
    as the study searched from the defaults -- ``params_source = "tuned"`` and the provenance in its config
    (so it is a cell of its own, stored beside the untuned one). Other cells are returned unchanged. A cell
    whose seed is one of the study's validation seeds is an error: it would be evaluated on a tuning cell."""
    out = []
    for c in cells:
        hit = entries.get((c.dataset.spec.display, c.dataset.model, c.request.label, c.method))
        if hit is None:
            out.append(c)
            continue
        values, provenance = hit
        if c.seed in set(provenance.get("validation_seeds", ())):
            raise SuiteError(f"{c.label}: seed {c.seed} is a validation seed of the tuning study "
                             f"{provenance.get('study')!r}: evaluate on other seeds")
        params = create_method(c.method, values).hyperparameters()
        out.append(dataclasses.replace(c, method_params=params, params_source="tuned", tuning=dict(provenance)))
    return out


def _near(name: str, choices) -> str:
    from unlearnbench.datasets.base import close_matches

    return close_matches(name, sorted(set(choices)))


def method_names_check(name: str) -> None:
    from unlearnbench.methods import method_class

    method_class(name)  # raises with close matches


# ------------------------------------------------------------------------------------ parsing


def _line_of(text: str, key: str, section: str | None = None, index: int = 0) -> int | None:
    """Best-effort line number (1-based) of ``key = ...`` in the ``index``-th ``[section]``/``[[section]]``
    table (searched up to the next table that is not a sub-table of it, then beyond), or a table header."""
    lines = text.splitlines()
    start, stop = 0, len(lines)
    if section:
        pat = re.compile(r"^\s*\[\[?\s*" + re.escape(section) + r"\s*\]\]?\s*(#.*)?$")
        hits = [i for i, line in enumerate(lines) if pat.match(line)]
        if hits:
            start = hits[min(index, len(hits) - 1)]
            other = re.compile(r"^\s*\[\[?\s*(?!" + re.escape(section) + r"\.)[^\]]+\]\]?\s*(#.*)?$")
            stop = next((j for j in range(start + 1, len(lines)) if other.match(lines[j])), len(lines))
    key_pat = re.compile(r"^\s*\"?" + re.escape(key) + r"\"?\s*=|[\[{,]\s*\"?" + re.escape(key) + r"\"?\s*=")
    header = re.compile(r"^\s*\[\[?\s*" + re.escape(key) + r"(\.|\s*\])")
    for rng in (range(start, stop), range(stop, len(lines))):
        for i in rng:
            if key_pat.search(lines[i]) or header.match(lines[i]):
                return i + 1
    if section and start < len(lines) and lines and re.match(r"^\s*\[", lines[start]):
        return start + 1  # the entry's header
    return None


class _Ctx:
    def __init__(self, path: str, text: str):
        self.path, self.text = path, text

    def fail(self, key: str, message: str, section: str | None = None, index: int = 0) -> SuiteError:
        line = _line_of(self.text, key.split(".")[-1], section, index)
        where = f"{self.path}, line {line}" if line else self.path
        return SuiteError(f"{where}: key {key!r}: {message}")


def resolve_suite_path(name_or_path: str) -> Path:
    if not name_or_path.strip():
        raise SuiteError("--suite is empty: name a built-in suite or a .toml file")
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if p.exists() and not p.is_file():
            raise SuiteError(f"suite file {p} is a folder, not a file: name a .toml file")
        if not p.is_file():
            raise SuiteError(f"suite file {p} does not exist: check the path (`unlearnbench list suites` shows the "
                             "built-in ones)")
        return p
    builtin = SUITES_DIR / f"{name_or_path}.toml"
    if builtin.is_file():
        return builtin
    known = sorted(q.stem for q in SUITES_DIR.glob("*.toml"))
    import difflib

    near = difflib.get_close_matches(name_or_path, known, n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
    raise SuiteError(f"unknown suite {name_or_path!r}.{hint} Built-in suites: {', '.join(known)}; or pass a .toml path.")


def list_suites() -> list[Path]:
    return sorted(SUITES_DIR.glob("*.toml"))


def load_suite(name_or_path: str) -> Suite:
    path = resolve_suite_path(name_or_path)
    shown = path.name if path.parent == SUITES_DIR else str(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SuiteError(f"{shown}: not a text (UTF-8) file ({exc.reason} at byte {exc.start}): name a .toml suite "
                         "file") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"{shown}: not valid TOML: {exc}") from exc
    return parse_suite(data, text=text, path=shown, default_name=path.stem)


# What a recipe value must satisfy beyond its type: (test, wording).
_RECIPE_RANGES: dict[str, tuple[Any, str]] = {
    "epochs": (lambda v: v > 0, "> 0"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "lr": (lambda v: v > 0, "> 0"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "warmup_frac": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "eval_batch_size": (lambda v: v >= 1, ">= 1"),
}


def _parse_recipe(ctx: _Ctx, rname: str, rdict: Any) -> Recipe:
    section = f"recipes.{rname}"
    if not isinstance(rdict, dict):
        raise ctx.fail(section, "must be a table [recipes.<name>] of training settings")
    defaults = Recipe()
    fields = [f.name for f in dataclasses.fields(Recipe)]
    for k, v in rdict.items():
        key = f"{section}.{k}"
        if k not in fields:
            raise ctx.fail(key, f"unknown recipe key.{_near(k, fields)} A recipe takes {', '.join(fields)}",
                           section=section)
        want = type(getattr(defaults, k))
        ok = {float: is_number(v), int: is_int(v), bool: isinstance(v, bool), str: isinstance(v, str)}[want]
        if not ok:
            raise ctx.fail(key, f"must be {want.__name__}, got {v!r}", section=section)
        if want is float and not math.isfinite(v):
            raise ctx.fail(key, f"must be a finite number, got {v!r}", section=section)
        if k in _RECIPE_RANGES and not _RECIPE_RANGES[k][0](v):
            raise ctx.fail(key, f"must be {_RECIPE_RANGES[k][1]}, got {v!r}", section=section)
    try:
        return Recipe.from_dict(rdict, where=f"recipe {rname!r}")
    except RecipeError as exc:  # a choice (schedule, optimizer): name the key the message is about
        bad = next((k for k in ("schedule", "optimizer") if k in rdict and repr(rdict[k]) in str(exc)), None)
        raise ctx.fail(f"{section}.{bad}" if bad else section, str(exc), section=section) from exc


def _non_finite(value: Any, where: tuple = ()) -> tuple[tuple, float] | None:
    """(path, value) of the first nan/inf anywhere in the suite outside [tolerances], else None."""
    if isinstance(value, float) and not math.isfinite(value) and not (where and where[0] == "tolerances"
                                                                      and value == math.inf):
        return where, value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        found = _non_finite(v, (*where, k))
        if found is not None:
            return found
    return None


def _names_list(ctx: _Ctx, key: str, value: Any, what: str, section: str | None = None, index: int = 0) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ctx.fail(key, f"must be a list of {what} (strings), got {value!r}", section=section, index=index)
    dup = sorted({v for v in value if value.count(v) > 1})
    if dup:
        raise ctx.fail(key, f"names {dup[0]!r} twice: remove one", section=section, index=index)
    return list(value)


def parse_suite(data: dict[str, Any], *, text: str = "", path: str = "<suite>", default_name: str = "suite") -> Suite:
    """Validate a suite's TOML data (never coercing a value) and build the :class:`Suite`; every problem is a
    :class:`SuiteError` naming the file, the key and its line, and how to fix it."""
    ctx = _Ctx(path, text)
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise ctx.fail(unknown[0], f"unknown top-level key.{_near(unknown[0], TOP_KEYS)} A suite takes "
                                   f"{', '.join(sorted(TOP_KEYS))}")
    bad = _non_finite(data)
    if bad is not None:  # nan/inf is never a setting (tolerances aside: inf there means "not compared")
        where, value = bad
        top = where[0]
        if top in ("datasets", "requests") and len(where) > 2:
            raise ctx.fail(".".join(map(str, where[2:])), f"must be a finite number, got {value!r}", section=top,
                           index=int(where[1]))
        section = ".".join(map(str, where[:2])) if top in ("recipes", "method_options", "metric_options") else top
        raise ctx.fail(".".join(map(str, where)), f"must be a finite number, got {value!r}",
                       section=section if len(where) > 1 else None)

    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds:
        raise ctx.fail("seeds", "must be a non-empty list of integers, e.g. seeds = [0, 1, 2]")
    for s in seeds:
        problem = seed_problem(s)
        if problem:
            raise ctx.fail("seeds", f"{problem}: seeds are integers in [0, {SEED_MAX}], e.g. seeds = [0, 1, 2]")
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise ctx.fail("seeds", f"lists seed {dup[0]} twice: remove one")

    raw_recipes = data.get("recipes", {})
    if not isinstance(raw_recipes, dict):
        raise ctx.fail("recipes", "must be a table of named recipes: [recipes.<name>]")
    recipes = {rname: _parse_recipe(ctx, rname, rdict) for rname, rdict in raw_recipes.items()}

    raw_ds = data.get("datasets")
    if not isinstance(raw_ds, list) or not raw_ds:
        raise ctx.fail("datasets", "needs at least one [[datasets]] entry with name, model and recipe")
    datasets = [_parse_dataset(ctx, i, d, recipes) for i, d in enumerate(raw_ds)]
    seen_ds: dict[tuple[str, str], int] = {}
    for i, d in enumerate(datasets):
        ident = (d.spec.display, d.model)
        if ident in seen_ds:
            raise ctx.fail("datasets", f"[[datasets]] entries {seen_ds[ident] + 1} and {i + 1} both are "
                                       f"{d.spec.display!r} with model {d.model!r}: remove one, or give one a "
                                       "label = \"...\"", section="datasets", index=i)
        seen_ds[ident] = i

    raw_req = data.get("requests")
    if not isinstance(raw_req, list) or not raw_req:
        raise ctx.fail("requests", "needs at least one [[requests]] entry, e.g. kind = \"random\", fraction = 0.1")
    load_all()  # attack modules register request kinds too (backdoor)
    kinds = {k.name: k for k in list_requests()}
    requests = []
    for i, r in enumerate(raw_req):
        if not isinstance(r, dict) or not isinstance(r.get("kind"), str):
            raise ctx.fail("kind" if isinstance(r, dict) and "kind" in r else "requests",
                           f"[[requests]] entry {i + 1} needs kind = \"random\" | \"class\" | \"points\" | ... "
                           f"(known: {', '.join(sorted(kinds))})", section="requests", index=i)
        kind = r["kind"]
        if kind not in kinds:
            raise ctx.fail("kind", f"unknown request kind {kind!r}.{_near(kind, kinds)} Known: "
                                   f"{', '.join(sorted(kinds))}", section="requests", index=i)
        params = {k: v for k, v in r.items() if k != "kind"}
        try:
            check_request(kind, params)
        except RequestParamError as exc:
            raise ctx.fail(exc.key, str(exc), section="requests", index=i) from exc
        except DatasetError as exc:
            raise ctx.fail("kind", str(exc), section="requests", index=i) from exc
        requests.append(RequestEntry(kind, params))
    labels = [r.label for r in requests]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ctx.fail("requests", f"two requests share the label {dup[0]!r} (the same request twice?): remove one "
                                   "or give one a label = \"...\"", section="requests", index=labels.index(dup[0]) + 1)
    for i, d in enumerate(datasets):
        for lab in d.requests or ():
            if lab not in labels:
                raise ctx.fail("requests", f"dataset {d.spec.display!r} names request {lab!r}, not among {labels}."
                                           f"{_near(lab, labels)}", section="datasets", index=i)

    all_methods = method_names()
    raw_methods = data.get("methods", ["*"])
    if not isinstance(raw_methods, list) or not all(isinstance(m, str) for m in raw_methods):
        raise ctx.fail("methods", "must be a list of method names, or [\"*\"] for every registered method")
    if not raw_methods:
        raise ctx.fail("methods", "is empty: name at least one method, or [\"*\"] for every registered method")
    dup = sorted({m for m in raw_methods if raw_methods.count(m) > 1})
    if dup:
        raise ctx.fail("methods", f"names {dup[0]!r} twice: remove one")
    methods: list[str] = []
    for m in raw_methods:
        if m == "*":
            methods += [x for x in all_methods if x not in methods]
        elif m not in all_methods:
            try:
                method_names_check(m)
            except MethodError as exc:
                raise ctx.fail("methods", str(exc)) from exc
        elif m not in methods:
            methods.append(m)
    for i, d in enumerate(datasets):
        for m in d.methods or ():
            if m not in methods:
                raise ctx.fail("methods", f"dataset {d.spec.display!r} names method {m!r}, not among the suite's "
                                          f"methods.{_near(m, methods)}", section="datasets", index=i)

    method_options = data.get("method_options", {})
    if not isinstance(method_options, dict) or not all(isinstance(v, dict) for v in method_options.values()):
        raise ctx.fail("method_options", "must be a table [method_options.<method>] of hyperparameters")
    for m, opts in method_options.items():
        try:
            create_method(m, opts)
        except MethodError as exc:
            raise ctx.fail(f"method_options.{m}", str(exc)) from exc
    for i, d in enumerate(datasets):
        for m, opts in d.overrides.items():
            try:
                create_method(m, {**method_options.get(m, {}), **opts})
            except MethodError as exc:
                raise ctx.fail("overrides", f"dataset {d.spec.display!r}: {exc}", section="datasets",
                               index=i) from exc

    metrics = data.get("metrics", ["accuracy", "mia.loss_auc", "mia.svc_efficacy"])
    metrics = _names_list(ctx, "metrics", metrics, "registered metric names")
    for m in metrics:
        try:
            metric_info(m)
        except MetricError as exc:
            raise ctx.fail("metrics", str(exc)) from exc
    if "accuracy" not in metrics:
        metrics = ["accuracy", *metrics]
    metric_options = data.get("metric_options", {})
    if not isinstance(metric_options, dict) or not all(isinstance(v, dict) for v in metric_options.values()):
        raise ctx.fail("metric_options", "must be a table [metric_options.\"<metric>\"] of option tables")
    for m in metric_options:
        try:
            metric_info(m)
        except MetricError as exc:
            raise ctx.fail("metric_options", str(exc)) from exc

    tolerances = data.get("tolerances", {})
    if not isinstance(tolerances, dict):
        raise ctx.fail("tolerances", "must be a table of metric name = absolute tolerance (a number >= 0)")
    for k, v in tolerances.items():
        if not is_number(v) or math.isnan(v) or v < 0:
            raise ctx.fail(f"tolerances.{k}", f"must be a number >= 0 (inf: not compared), got {v!r}",
                           section="tolerances")

    budget = data.get("budget", {})
    if not isinstance(budget, dict):
        raise ctx.fail("budget", "must be a table [budget] with max_epochs = <number > 0>")
    extra = sorted(set(budget) - {"max_epochs"})
    if extra:
        raise ctx.fail(f"budget.{extra[0]}", "unknown key: [budget] takes max_epochs only", section="budget")
    max_epochs = budget.get("max_epochs")
    if max_epochs is not None and not (is_finite_number(max_epochs) and max_epochs > 0):
        raise ctx.fail("budget.max_epochs", f"must be a finite number > 0 (epochs a method may run), got "
                                            f"{max_epochs!r}; leave it out for no cap", section="budget")

    name = data.get("name", default_name)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ctx.fail("name", "must be a string of letters, digits, '_', '-', '.'")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ctx.fail("description", f"must be a string, got {description!r}")
    primary = data.get("primary", "avg_gap")
    if not isinstance(primary, str) or not primary.strip():
        raise ctx.fail("primary", f"must be the name of a stored metric value (e.g. \"avg_gap\"), got {primary!r}")
    return Suite(name=name, description=description, path=path, seeds=tuple(seeds),
                 datasets=tuple(datasets), requests=tuple(requests), methods=tuple(methods),
                 method_options=method_options, metrics=tuple(metrics), metric_options=metric_options,
                 primary=primary, tolerances={k: float(v) for k, v in tolerances.items()},
                 max_epochs=float(max_epochs) if max_epochs is not None else None)


def _parse_dataset(ctx: _Ctx, i: int, d: Any, recipes: dict[str, Recipe]) -> DatasetEntry:
    def fail(key: str, message: str) -> SuiteError:
        return ctx.fail(key, f"[[datasets]] entry {i + 1}: {message}", section="datasets", index=i)

    if not isinstance(d, dict):
        raise ctx.fail("datasets", f"entry {i + 1} must be a table")
    unknown = sorted(set(d) - DATASET_KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown key.{_near(unknown[0], DATASET_KEYS)} It takes "
                               f"{', '.join(sorted(DATASET_KEYS))}")
    for key in ("name", "model", "recipe"):
        if not isinstance(d.get(key), str):
            raise fail(key if key in d else "datasets", f"needs {key} = \"...\" (a string)")
    for key in ("heldout", "train_subset"):
        if key in d and (not is_int(d[key]) or d[key] < 0):
            raise fail(key, f"must be an integer >= 0, got {d[key]!r}")
    for key in ("options", "model_options", "overrides"):
        if key in d and not isinstance(d[key], dict):
            raise fail(key, f"must be a table, got {d[key]!r}")
    for k, v in d.get("options", {}).items():
        if not isinstance(v, (str, int, float, bool)):
            raise fail(f"options.{k}", f"must be a string, number or boolean, got {v!r}")
    if "label" in d and (not isinstance(d["label"], str) or not d["label"].strip()):
        raise fail("label", f"must be a non-empty string, got {d['label']!r}")
    try:
        spec = DatasetSpec(name=d["name"], heldout=d.get("heldout"), train_subset=d.get("train_subset"),
                           options=tuple(sorted(d.get("options", {}).items())), label=d.get("label"))
    except DatasetError as exc:
        raise fail("options" if "option" in str(exc) and "options" in d else "name", str(exc)) from exc
    if d["model"] not in MODELS:
        raise fail("model", f"unknown model {d['model']!r}.{_near(d['model'], MODELS)} Known: {', '.join(sorted(MODELS))}")
    if d["recipe"] not in recipes:
        raise fail("recipe", f"no [recipes.{d['recipe']}] table.{_near(d['recipe'], recipes)} Defined recipes: "
                             f"{', '.join(sorted(recipes)) or 'none'}")
    requires = d.get("requires")
    if requires not in (None, "cuda"):
        raise fail("requires", "may only be \"cuda\" (cells that need a GPU)")
    overrides = d.get("overrides", {})
    if not all(isinstance(v, dict) for v in overrides.values()):
        raise fail("overrides", "must map method names to tables of hyperparameters")
    reqs = _names_list(ctx, "requests", d["requests"], "request labels", "datasets", i) if "requests" in d else None
    meths = _names_list(ctx, "methods", d["methods"], "method names", "datasets", i) if "methods" in d else None
    return DatasetEntry(spec=spec, model=d["model"], model_options=dict(d.get("model_options", {})),
                        recipe_name=d["recipe"], recipe=recipes[d["recipe"]], requires=requires, overrides=overrides,
                        requests=tuple(reqs) if reqs is not None else None,
                        methods=tuple(meths) if meths is not None else None)
