"""Suites: TOML files naming datasets, models, recipes, forget requests, methods, seeds and metrics.

A suite is declared data, not code (``benchmarks/suites/*.toml``). Its cells are the product
datasets x requests x methods x seeds. A malformed file raises :class:`SuiteError` naming the key
and its line. See ``benchmarks/suites/default.toml`` for a commented example of every key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
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
from unlearnbench.datasets.requests import list_requests
from unlearnbench.methods import MethodError, Recipe, create_method, method_names
from unlearnbench.methods.models import MODELS
from unlearnbench.methods.training import RecipeError

SUITES_DIR = Path(__file__).parent / "suites"
TOP_KEYS = {"name", "description", "seeds", "methods", "metrics", "primary", "datasets", "requests", "recipes",
            "method_options", "metric_options", "tolerances", "budget"}
DATASET_KEYS = {"name", "model", "recipe", "heldout", "train_subset", "options", "label", "model_options",
                "requires", "overrides", "requests", "methods"}


class SuiteError(ValueError):
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

    def config(self) -> dict[str, Any]:
        d = self.dataset
        return {
            "dataset": d.spec.as_dict(), "model": d.model, "model_options": d.model_options,
            "recipe_name": d.recipe_name, "recipe": d.recipe.as_dict(),
            "request": {"kind": self.request.kind, "params": self.request.params, "label": self.request.label},
            "method": self.method, "method_params": self.method_params, "seed": self.seed,
            "metrics": list(self.metrics), "metric_options": self.metric_options, "max_epochs": self.max_epochs,
        }

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
                   dict(config.get("metric_options", {})), config.get("max_epochs"))

    def key(self, device_type: str) -> str:
        """Identity of the cell's result: changes when and only when an input that matters changes."""
        cfg = self.config()
        cfg["dataset"].pop("label", None)
        cfg.pop("recipe_name")
        cfg["request"].pop("label")
        cfg["request"]["params"] = {k: v for k, v in cfg["request"]["params"].items() if k != "label"}
        cfg["device_type"] = device_type
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
        """All cells in run order: dataset, seed, request, method (so cached models are reused at once)."""
        chosen = list(methods) if methods else list(self.methods)
        for m in chosen:
            method_names_check(m)
        out = []
        for d in self.datasets:
            if datasets and d.spec.display not in datasets and d.spec.name not in datasets:
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
                                            self.metric_options, self.max_epochs))
        if datasets and not any(d.spec.display in datasets or d.spec.name in datasets for d in self.datasets):
            known = sorted({d.spec.display for d in self.datasets})
            raise SuiteError(f"suite {self.name!r} has no dataset {datasets}; it has {known}")
        if requests and not any(r.label in requests for r in self.requests):
            raise SuiteError(f"suite {self.name!r} has no request {requests}; it has {[r.label for r in self.requests]}")
        return out


def method_names_check(name: str) -> None:
    from unlearnbench.methods import method_class

    method_class(name)  # raises with close matches


# ------------------------------------------------------------------------------------ parsing


def _line_of(text: str, key: str, section: str | None = None) -> int | None:
    """Best-effort line number (1-based) of ``key = ...`` (after ``[section]`` if given) or a table header."""
    lines = text.splitlines()
    start = 0
    if section:
        pat = re.compile(r"^\s*\[\[?\s*" + re.escape(section) + r"\s*\]\]?\s*(#.*)?$")
        for i, line in enumerate(lines):
            if pat.match(line):
                start = i
                break
    key_pat = re.compile(r"^\s*\"?" + re.escape(key) + r"\"?\s*=|[\[{,]\s*\"?" + re.escape(key) + r"\"?\s*=")
    header = re.compile(r"^\s*\[\[?\s*" + re.escape(key) + r"(\.|\s*\])")
    for i in range(start, len(lines)):
        if key_pat.search(lines[i]) or header.match(lines[i]):
            return i + 1
    return None


class _Ctx:
    def __init__(self, path: str, text: str):
        self.path, self.text = path, text

    def fail(self, key: str, message: str, section: str | None = None) -> SuiteError:
        line = _line_of(self.text, key.split(".")[-1], section)
        where = f"{self.path}, line {line}" if line else self.path
        return SuiteError(f"{where}: key {key!r}: {message}")


def resolve_suite_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise SuiteError(f"suite file {p} does not exist")
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
    text = path.read_text()
    shown = path.name if path.parent == SUITES_DIR else str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"{shown}: not valid TOML: {exc}") from exc
    return parse_suite(data, text=text, path=shown, default_name=path.stem)


def parse_suite(data: dict[str, Any], *, text: str = "", path: str = "<suite>", default_name: str = "suite") -> Suite:
    ctx = _Ctx(path, text)
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise ctx.fail(unknown[0], f"unknown top-level key; a suite takes {sorted(TOP_KEYS)}")

    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ctx.fail("seeds", "must be a non-empty list of integers, e.g. seeds = [0, 1, 2]")

    recipes: dict[str, Recipe] = {}
    raw_recipes = data.get("recipes", {})
    if not isinstance(raw_recipes, dict):
        raise ctx.fail("recipes", "must be a table of named recipes: [recipes.<name>]")
    for rname, rdict in raw_recipes.items():
        if not isinstance(rdict, dict):
            raise ctx.fail(f"recipes.{rname}", "must be a table")
        try:
            recipes[rname] = Recipe.from_dict(rdict, where=f"recipe {rname!r}")
        except RecipeError as exc:
            bad = next((k for k in rdict if k in str(exc)), rname)
            raise ctx.fail(f"recipes.{rname}.{bad}", str(exc), section=f"recipes.{rname}") from exc

    raw_ds = data.get("datasets")
    if not isinstance(raw_ds, list) or not raw_ds:
        raise ctx.fail("datasets", "needs at least one [[datasets]] entry with name, model and recipe")
    datasets = [_parse_dataset(ctx, i, d, recipes) for i, d in enumerate(raw_ds)]

    raw_req = data.get("requests")
    if not isinstance(raw_req, list) or not raw_req:
        raise ctx.fail("requests", "needs at least one [[requests]] entry, e.g. kind = \"random\", fraction = 0.1")
    load_all()  # attack modules register request kinds too (backdoor)
    kinds = {k.name: k for k in list_requests()}
    requests = []
    for r in raw_req:
        if not isinstance(r, dict) or "kind" not in r:
            raise ctx.fail("requests", "each [[requests]] entry needs kind = \"random\" | \"class\" | \"points\" | ...")
        kind = r["kind"]
        if kind not in kinds:
            raise ctx.fail("kind", f"unknown request kind {kind!r}; known: {sorted(kinds)}", section="requests")
        params = {k: v for k, v in r.items() if k != "kind"}
        bad = sorted(set(params) - set(kinds[kind].params) - {"label"})
        if bad:
            raise ctx.fail(bad[0], f"request {kind!r} takes {list(kinds[kind].params)}", section="requests")
        requests.append(RequestEntry(kind, params))
    labels = [r.label for r in requests]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ctx.fail("requests", f"two requests share the label {dup[0]!r}; give one a label = \"...\"")
    for d in datasets:
        for lab in d.requests or ():
            if lab not in labels:
                raise ctx.fail("requests", f"dataset {d.spec.display!r} names request {lab!r}, not among {labels}",
                               section="datasets")

    all_methods = method_names()
    raw_methods = data.get("methods", ["*"])
    if not isinstance(raw_methods, list) or not all(isinstance(m, str) for m in raw_methods):
        raise ctx.fail("methods", "must be a list of method names, or [\"*\"] for every registered method")
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

    method_options = data.get("method_options", {})
    if not isinstance(method_options, dict):
        raise ctx.fail("method_options", "must be a table [method_options.<method>] of hyperparameters")
    for m, opts in method_options.items():
        try:
            create_method(m, opts)
        except MethodError as exc:
            raise ctx.fail(f"method_options.{m}", str(exc)) from exc
    for d in datasets:
        for m, opts in d.overrides.items():
            try:
                create_method(m, {**method_options.get(m, {}), **opts})
            except MethodError as exc:
                raise ctx.fail("overrides", f"dataset {d.spec.display!r}: {exc}", section="datasets") from exc

    metrics = data.get("metrics", ["accuracy", "mia.loss_auc", "mia.svc_efficacy"])
    if not isinstance(metrics, list):
        raise ctx.fail("metrics", "must be a list of registered metric names")
    for m in metrics:
        try:
            metric_info(m)
        except MetricError as exc:
            raise ctx.fail("metrics", str(exc)) from exc
    if "accuracy" not in metrics:
        metrics = ["accuracy", *metrics]
    metric_options = data.get("metric_options", {})
    if not isinstance(metric_options, dict):
        raise ctx.fail("metric_options", "must be a table [metric_options.\"<metric>\"]")

    tolerances = data.get("tolerances", {})
    if not isinstance(tolerances, dict) or not all(isinstance(v, (int, float)) for v in tolerances.values()):
        raise ctx.fail("tolerances", "must be a table of metric name = absolute tolerance (number)")

    budget = data.get("budget", {})
    max_epochs = budget.get("max_epochs") if isinstance(budget, dict) else None
    if not isinstance(budget, dict) or (max_epochs is not None and not isinstance(max_epochs, (int, float))):
        raise ctx.fail("budget", "must be a table with max_epochs = <number>")

    name = data.get("name", default_name)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ctx.fail("name", "must be a string of letters, digits, '_', '-', '.'")
    primary = data.get("primary", "avg_gap")
    return Suite(name=name, description=str(data.get("description", "")), path=path, seeds=tuple(seeds),
                 datasets=tuple(datasets), requests=tuple(requests), methods=tuple(methods),
                 method_options=method_options, metrics=tuple(metrics), metric_options=metric_options,
                 primary=primary, tolerances={k: float(v) for k, v in tolerances.items()},
                 max_epochs=float(max_epochs) if max_epochs is not None else None)


def _parse_dataset(ctx: _Ctx, i: int, d: Any, recipes: dict[str, Recipe]) -> DatasetEntry:
    if not isinstance(d, dict):
        raise ctx.fail("datasets", f"entry {i} must be a table")
    unknown = sorted(set(d) - DATASET_KEYS)
    if unknown:
        raise ctx.fail(unknown[0], f"unknown key in [[datasets]] entry {i}; it takes {sorted(DATASET_KEYS)}",
                       section="datasets")
    for key in ("name", "model", "recipe"):
        if not isinstance(d.get(key), str):
            raise ctx.fail(key if key in d else "datasets", f"[[datasets]] entry {i} needs {key} = \"...\"",
                           section="datasets")
    try:
        spec = DatasetSpec(name=d["name"], heldout=d.get("heldout"), train_subset=d.get("train_subset"),
                           options=tuple(sorted(d.get("options", {}).items())), label=d.get("label"))
    except DatasetError as exc:
        raise ctx.fail("name", str(exc), section="datasets") from exc
    if d["model"] not in MODELS:
        raise ctx.fail("model", f"unknown model {d['model']!r}; known: {sorted(MODELS)}", section="datasets")
    if d["recipe"] not in recipes:
        raise ctx.fail("recipe", f"no [recipes.{d['recipe']}] table; defined recipes: {sorted(recipes)}",
                       section="datasets")
    requires = d.get("requires")
    if requires not in (None, "cuda"):
        raise ctx.fail("requires", "may only be \"cuda\" (cells that need a GPU)", section="datasets")
    overrides = d.get("overrides", {})
    if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
        raise ctx.fail("overrides", "must map method names to tables of hyperparameters", section="datasets")
    reqs = d.get("requests")
    meths = d.get("methods")
    return DatasetEntry(spec=spec, model=d["model"], model_options=dict(d.get("model_options", {})),
                        recipe_name=d["recipe"], recipe=recipes[d["recipe"]], requires=requires, overrides=overrides,
                        requests=tuple(reqs) if reqs is not None else None,
                        methods=tuple(meths) if meths is not None else None)
