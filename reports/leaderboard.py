"""Leaderboards: a pure function of stored run rows (``RunRecord.row()`` dicts), rendered as Markdown,
self-contained HTML, CSV or LaTeX.

Per (suite, dataset, model, request, device) three tables share one row order:

- **Scores**: every evaluation metric, each cell the mean ± the half-width of a 95% confidence interval
  over seeds (Student t with n − 1 degrees of freedom) and n; the ``retrain (reference)`` row first,
  the methods ranked by the primary score (default ``avg_gap``, lower is better), and, where a paper
  reports a number for the cell (:mod:`.anchors`), a ``reported`` row under the method it describes.
- **Gaps to retrain**: ``gap.<metric> = |m(θ_u) − m(θ_r)|`` per seed, aggregated the same way.
- **Cost**: ``time_s``, ``speedup_vs_retrain``, ``peak_mem_mib``, ``extra_params``, ``extra_bytes``.

Methods that were not applicable or failed keep their row, marked as such, with the reason below the
table. Method-reported diagnostics (``<method>.<key>``) get their own table; the harness's per-phase
timings (``cell.*``) are in the CSV only. Column headers are the metrics' registered names, defined
in docs/METRICS.md and listed under "Definitions". Each section ends with the provenance of its runs
(commit and dirty flag, device, precision, library versions, dates).

Determinism: the output depends on the rows alone (sorted by identity, seeds in order, fixed number
formats), except the one line that says when the document was generated (``generated_at``).
"""

from __future__ import annotations

import csv
import html
import io
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from .anchors import ANCHORS, Anchor, find_anchors

IDENTITY = ("cell_key", "suite", "dataset", "model", "request", "method", "seed", "status", "config_hash", "reason",
            "run_id", "scores_file", "created_at", "config", "hashes", "env")
COST = ("time_s", "speedup_vs_retrain", "peak_mem_mib", "extra_params", "extra_bytes")
HARNESS = ("original_train_time_s", "retrain_time_s")  # and every "cell.*" phase timing
FORMATS = ("md", "html", "csv", "tex")
DATE_PREFIX = "Generated: "


@dataclass(frozen=True)
class MetricDef:
    """A registered metric group: its name, the value names it produces, and its one-line definition."""

    group: str
    produces: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class Stat:
    """Mean and 95% CI half-width over the finite values; ``n`` counts them, ``n_nan`` the NaN ones."""

    mean: float
    ci: float
    n: int
    n_nan: int = 0

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stat":
        vals = [float(v) for v in values]
        finite = [v for v in vals if not math.isnan(v)]
        n = len(finite)
        if n == 0:
            return cls(float("nan"), float("nan"), 0, len(vals))
        mean = math.fsum(finite) / n
        ci = float("nan")
        if n >= 2 and all(math.isfinite(v) for v in finite):
            from scipy.stats import t

            sd = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / (n - 1))
            ci = float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        return cls(mean, ci, n, len(vals) - n)


@dataclass
class MethodRow:
    method: str
    seeds_ok: tuple[int, ...]
    seeds_na: tuple[int, ...]
    seeds_failed: tuple[int, ...]
    reasons: tuple[str, ...]
    stats: dict[str, Stat]
    is_reference: bool = False
    run_ids: tuple[str, ...] = ()  # the ok runs, in seed order (for per-example scores)
    rank: str = "—"
    anchors: list[tuple[Anchor, str]] = field(default_factory=list)  # (anchor, dataset note)

    @property
    def n(self) -> int:
        return len(self.seeds_ok)

    @property
    def state(self) -> str:
        if self.seeds_ok:
            return "ok"
        return "failed" if self.seeds_failed else "not_applicable"

    def n_text(self) -> str:
        extra = [f"+{len(s)} {w}" for s, w in ((self.seeds_failed, "failed"), (self.seeds_na, "n/a")) if s]
        return str(self.n) + (f" ({', '.join(extra)})" if extra else "")


@dataclass
class Group:
    suite: str
    dataset: str
    model: str
    request: str
    device: str
    rows: list[MethodRow]
    score_cols: list[str]
    gap_cols: list[str]
    cost_cols: list[str]
    diag_cols: list[str]
    harness_cols: list[str]
    nan_cols: list[str]
    has_primary: bool
    has_reference: bool
    provenance: list[str]
    dataset_name: str = ""  # the dataset source (config), e.g. "cifar10-jpeg"
    request_kind: str = ""
    request_params: dict[str, Any] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return f"{self.dataset} / {self.model} / {self.request} ({self.device})"


@dataclass
class Leaderboard:
    title: str
    primary: str
    higher_is_better: bool
    reference: str
    groups: list[Group]
    definitions: list[MetricDef]
    anchors: list[tuple[Anchor, str]]  # footnote order
    undefined: list[str]  # shown columns that no registered metric group produces
    superseded: int
    generated_at: str


# ------------------------------------------------------------------------------------ building


def _device(row: dict[str, Any]) -> str:
    env = row.get("env") or {}
    return str(env.get("device_type") or "unknown")


def method_key(row: dict[str, Any]) -> str:
    """The row's method as tables group it: ``<method> (tuned)`` for rows whose hyperparameters an
    ``unlearnbench tune`` overlay set (``config.params_source == "tuned"``), else the method name."""
    cfg = row.get("config") or {}
    return f"{row['method']} (tuned)" if cfg.get("params_source") == "tuned" else str(row["method"])


def latest_rows(rows: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """The newest row per (suite, dataset, model, request, method, seed, device); rows come oldest first
    (as the store returns them) and are stably sorted by ``created_at``. Returns (rows, superseded count)."""
    rows = sorted(rows, key=lambda r: str(r.get("created_at", "")))
    newest: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        newest[(r["suite"], r["dataset"], r["model"], r["request"], method_key(r), int(r["seed"]), _device(r))] = r
    return list(newest.values()), len(rows) - len(newest)


def _metric_names(row: dict[str, Any]) -> list[str]:
    return [k for k in row if k not in IDENTITY]


def _is_gap(name: str) -> bool:
    return name.startswith("gap.") or name.endswith("_gap")


def _is_harness(name: str) -> bool:
    return name.startswith("cell.") or name in HARNESS


def build(rows: Iterable[dict[str, Any]], *, primary: str = "avg_gap", higher_is_better: bool = False,
          metric_defs: Sequence[MetricDef] = (), method_order: Sequence[str] | None = None,
          reference: str = "retrain", anchors: Sequence[Anchor] = ANCHORS, generated_at: str = "",
          title: str | None = None) -> Leaderboard:
    """Aggregate rows into a :class:`Leaderboard` (see the module docstring)."""
    rows, superseded = latest_rows(rows)
    order = {m: i for i, m in enumerate(method_order or ())}
    by_group: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        by_group.setdefault((r["suite"], r["dataset"], r["model"], r["request"], _device(r)), []).append(r)
    produced = {n: d for d in metric_defs for n in d.produces}
    used_defs: dict[str, MetricDef] = {}
    used_anchors: list[tuple[Anchor, str]] = []
    groups = []
    for key in sorted(by_group):
        g = _build_group(key, by_group[key], primary, higher_is_better, produced, order, reference, anchors)
        groups.append(g)
        for c in g.score_cols + [primary]:
            if c in produced:
                used_defs.setdefault(produced[c].group, produced[c])
        for mr in g.rows:
            for a in mr.anchors:
                if a not in used_anchors:
                    used_anchors.append(a)
    suites = sorted({k[0] for k in by_group})
    if title is None:
        title = "Leaderboard: " + (f"suite {', '.join(suites)}" if suites else "no results")
    defs = [d for d in metric_defs if d.group in used_defs]
    undefined = sorted({c for g in groups for c in g.score_cols if c not in produced})
    return Leaderboard(title=title, primary=primary, higher_is_better=higher_is_better, reference=reference,
                       groups=groups, definitions=defs, anchors=used_anchors, undefined=undefined,
                       superseded=superseded, generated_at=generated_at)


def _build_group(key: tuple, rows: list[dict[str, Any]], primary: str, higher: bool, produced: dict[str, MetricDef],
                 order: dict[str, int], reference: str, anchors: Sequence[Anchor]) -> Group:
    suite, dataset, model, request, device = key
    by_method: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_method.setdefault(method_key(r), []).append(r)
    methods = sorted(by_method, key=lambda m: (order.get(m, len(order)), m))
    names: list[str] = []
    for r in sorted(rows, key=lambda r: (method_key(r), int(r["seed"]))):
        if r["status"] == "ok":
            names += [n for n in _metric_names(r) if n not in names]
    # the metric groups in the order the suite lists them, then any value no registered group produces
    group_order: list[str] = []
    for r in rows:
        for gname in (r.get("config") or {}).get("metrics", []):
            if gname not in group_order:
                group_order.append(gname)
    method_prefixes = tuple(f"{m}." for m in by_method)
    score_cols: list[str] = []
    for gname in group_order:
        for d in {d.group: d for d in produced.values()}.get(gname, MetricDef(gname, (), "")).produces:
            if d in names and d != primary:
                score_cols.append(d)
    rest = [n for n in names if n not in score_cols and n != primary]
    diag_cols = sorted(n for n in rest if n.startswith(method_prefixes) and n not in produced)
    harness_cols = sorted(n for n in rest if _is_harness(n))
    cost_cols = [c for c in COST if c in rest]
    gaps = [n for n in rest if _is_gap(n)]
    gap_cols = [g for g in [f"gap.{c}" for c in score_cols] if g in gaps]
    gap_cols += sorted(g for g in gaps if g not in gap_cols)
    taken = set(diag_cols) | set(harness_cols) | set(cost_cols) | set(gap_cols)
    score_cols += sorted(n for n in rest if n not in taken and n not in score_cols)

    ds_cfg: dict[str, Any] = {}
    req_cfg: dict[str, Any] = {}
    for r in rows:
        cfg = r.get("config") or {}
        ds_cfg = ds_cfg or cfg.get("dataset", {})
        req_cfg = req_cfg or cfg.get("request", {})
    mrows: list[MethodRow] = []
    for m in methods:
        rs = sorted(by_method[m], key=lambda r: int(r["seed"]))
        ok = [r for r in rs if r["status"] == "ok"]
        reasons = []
        for r in rs:
            if r["status"] != "ok":
                first = (str(r.get("reason") or "").strip().splitlines() or ["(no reason recorded)"])[0]
                what = "not applicable" if r["status"] == "not_applicable" else "failed"
                reasons.append(f"{what}: {first}")
        uniq = tuple(dict.fromkeys(reasons))
        stats = {n: Stat.of([_num(r.get(n)) for r in ok if n in r]) for n in names}
        mr = MethodRow(method=m, seeds_ok=tuple(int(r["seed"]) for r in ok),
                       seeds_na=tuple(int(r["seed"]) for r in rs if r["status"] == "not_applicable"),
                       seeds_failed=tuple(int(r["seed"]) for r in rs if r["status"] == "failed"),
                       reasons=uniq, stats={k: v for k, v in stats.items() if v.n or v.n_nan},
                       is_reference=m == reference, run_ids=tuple(str(r.get("run_id", "")) for r in ok))
        mr.anchors = [(a.anchor, a.note) for a in find_anchors(
            tuple(anchors), str(ds_cfg.get("name", dataset)), ds_cfg.get("train_subset"), model,
            str(req_cfg.get("kind", "")), dict(req_cfg.get("params", {})), m)]
        mrows.append(mr)

    # columns NaN in every run of this group (e.g. backdoor metrics on a random request) are listed, not shown
    def defined(c: str) -> bool:
        return any(mr.stats.get(c) is not None and mr.stats[c].n for mr in mrows)

    nan_cols = [c for c in score_cols + gap_cols + cost_cols + diag_cols if not defined(c)]
    score_cols, gap_cols, cost_cols, diag_cols = ([c for c in cols if defined(c)]
                                                  for cols in (score_cols, gap_cols, cost_cols, diag_cols))

    # ranking: every method but the reference with a finite primary score; ties share a rank
    def pkey(mr: MethodRow) -> float:
        s = mr.stats.get(primary)
        return s.mean if s and s.n else float("nan")

    rankable = [mr for mr in mrows if not mr.is_reference and mr.n and not math.isnan(pkey(mr))]
    rankable.sort(key=lambda mr: ((-pkey(mr)) if higher else pkey(mr), order.get(mr.method, len(order)), mr.method))
    prev, prev_rank = None, 0
    for i, mr in enumerate(rankable, 1):
        if pkey(mr) != prev:
            prev, prev_rank = pkey(mr), i
        mr.rank = str(prev_rank)
    ref_rows = [mr for mr in mrows if mr.is_reference]
    for mr in ref_rows:
        mr.rank = "ref"
    ranked_ids = {id(mr) for mr in rankable} | {id(mr) for mr in ref_rows}
    rest_rows = [mr for mr in mrows if id(mr) not in ranked_ids]
    rest_rows.sort(key=lambda mr: ({"ok": 0, "not_applicable": 1, "failed": 2}[mr.state],
                                   order.get(mr.method, len(order)), mr.method))
    display = ref_rows + rankable + rest_rows
    return Group(suite=suite, dataset=dataset, model=model, request=request, device=device, rows=display,
                 score_cols=score_cols, gap_cols=gap_cols, cost_cols=cost_cols, diag_cols=diag_cols,
                 harness_cols=harness_cols, nan_cols=nan_cols, has_primary=defined(primary),
                 has_reference=bool(ref_rows and ref_rows[0].n), provenance=provenance(rows),
                 dataset_name=str(ds_cfg.get("name", dataset)), request_kind=str(req_cfg.get("kind", "")),
                 request_params=dict(req_cfg.get("params", {})))


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def provenance(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Deterministic provenance items of a set of runs (commit, device, precision, versions, dates)."""
    envs = [r.get("env") or {} for r in rows]

    def values(key: str) -> list[str]:
        return sorted({str(e.get(key)) for e in envs if e.get(key) is not None})

    commits = Counter()
    for e in envs:
        dirty = e.get("git_dirty")
        state = "dirty" if dirty else ("clean" if dirty is False else "dirty flag unknown")
        commits[f"{str(e.get('git_commit', 'unknown'))[:12]} ({state})"] += 1
    items = ["commit " + ", ".join(f"{c} ×{n}" if len(commits) > 1 else c for c, n in sorted(commits.items()))]
    dev = sorted({f"{e.get('device_type', '?')}: {e.get('device_name', '?')}" for e in envs})
    items.append("device " + ", ".join(dev))
    for key, label in (("precision", "precision"), ("deterministic_algorithms", "deterministic algorithms"),
                       ("cudnn_benchmark", "cudnn.benchmark"), ("cpu_threads", "CPU threads"),
                       ("torch", "torch"), ("torchvision", "torchvision"), ("cuda", "CUDA"), ("cudnn", "cuDNN"),
                       ("numpy", "numpy"), ("sklearn", "scikit-learn"), ("python", "python"),
                       ("unlearnbench", "unlearnbench"), ("platform", "platform")):
        v = [{"True": "on", "False": "off"}.get(x, x) for x in values(key)]
        if v:
            items.append(f"{label} {', '.join(v)}")
    dates = sorted(str(r.get("created_at", "")) for r in rows if r.get("created_at"))
    if dates:
        items.append(f"runs made {dates[0]}" + (f" to {dates[-1]}" if dates[-1] != dates[0] else ""))
    items += tuned_provenance(rows)
    return items


def tuned_provenance(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One item per tuned row (``<method> (tuned)``): the study that chose its values (``unlearnbench tune``)."""
    studies: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        cfg = r.get("config") or {}
        t = cfg.get("tuning")
        if cfg.get("params_source") == "tuned" and isinstance(t, dict):
            studies[(str(r["method"]), str(t.get("study", "")))] = t
    out = []
    for (m, name), t in sorted(studies.items()):
        best = t.get("best_value")
        best_text = f"{best:.4g}" if isinstance(best, (int, float)) else "?"
        out.append(f"{m} (tuned): values chosen by study {name} ({t.get('objective', '?')}, {t.get('trials', '?')} "
                   f"trials, best {best_text} on validation seeds {t.get('validation_seeds', '?')}, cap "
                   f"{t.get('cap', '?')} x retrain's passes; overlay {t.get('overlay', '?')}, commit "
                   f"{str(t.get('commit', '?'))[:12]})")
    return out


# ------------------------------------------------------------------------------------ formatting


def fmt_num(x: float, kind: str = "score") -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if kind == "score":
        return f"{x:.3f}"
    if x == int(x) and abs(x) < 1e15:
        return f"{int(x)}"
    if abs(x) >= 1000:
        return f"{x:.0f}"
    return f"{x:.3g}"


def fmt_stat(s: Stat | None, kind: str = "score", row_n: int | None = None) -> str:
    if s is None:
        return "—"
    if s.n == 0:
        return "nan"
    m = fmt_num(s.mean, kind)
    if s.n == 1:
        return f"{m} (n=1)"
    ci = fmt_num(s.ci, kind) if not math.isnan(s.ci) else "?"
    return f"{m} ± {ci}" + (f" (n={s.n})" if row_n is not None and s.n != row_n else "")


def _anchor_cell(a: Anchor, col: str) -> str:
    if col not in a.values:
        return ""
    v, pm = a.values[col]
    return f"{v:.3f}" + (f" ± {pm:.3f}" if pm is not None else "")


# The document model every text renderer shares: blocks of (kind, payload).


@dataclass
class Table:
    caption: str
    header: list[str]
    rows: list[tuple[str, list[str]]]  # (row kind: ref | ok | anchor | na | failed, cells)
    notes: list[str] = field(default_factory=list)


def _status_cells(mr: MethodRow, ncols: int) -> list[str]:
    word = "failed" if mr.state == "failed" else "not applicable"
    return [word] * ncols


def _row_kind(mr: MethodRow) -> str:
    if mr.is_reference and mr.n:
        return "ref"
    return {"ok": "ok", "failed": "failed", "not_applicable": "na"}[mr.state]


def _method_label(mr: MethodRow) -> str:
    return f"{mr.method} (reference)" if mr.is_reference else mr.method


def document(lb: Leaderboard) -> list[tuple[str, Any]]:
    arrow = "↑" if lb.higher_is_better else "↓"
    better = "higher" if lb.higher_is_better else "lower"
    blocks: list[tuple[str, Any]] = [("h1", lb.title), ("date", f"{DATE_PREFIX}{lb.generated_at}")]
    blocks.append(("p", f"Primary score: `{lb.primary}` ({better} is better); methods are ranked by its mean. "
                        "Each cell: mean ± half-width of the 95% confidence interval over seeds (Student t, n − 1 "
                        "degrees of freedom); n = seeds with a result. "
                        f"The `{lb.reference} (reference)` row is the retrain reference that every gap is measured "
                        "against. Column names are the registered metric names defined in docs/METRICS.md "
                        "(see Definitions)."))
    if lb.superseded:
        blocks.append(("p", f"{lb.superseded} older run(s) of the same cells were superseded by newer ones."))
    if not lb.groups:
        blocks.append(("p", "No results."))
    anchor_ref = {a: i for i, a in enumerate(lb.anchors, 1)}
    for g in lb.groups:
        blocks.append(("h2", f"{g.suite}: {g.title}"))
        blocks.append(("table", _scores_table(g, lb, anchor_ref, arrow)))
        if g.gap_cols:
            blocks.append(("table", _simple_table(g, g.gap_cols, "score", f"Gaps to {lb.reference}", skip_ref=True)))
        if g.cost_cols:
            blocks.append(("table", _simple_table(g, g.cost_cols, "cost", "Cost")))
        if g.diag_cols:
            blocks.append(("table", _diag_table(g)))
        notes = []
        if g.harness_cols:
            notes.append("Harness timings (" + ", ".join(f"`{c}`" for c in _compact(g.harness_cols)) +
                         ") are in the CSV output.")
        blocks.append(("p", " ".join(notes + ["Provenance: " + " · ".join(g.provenance) + "."])))
    if lb.groups:
        blocks.append(("h2", "Definitions"))
        items = [f"`{d.group}` → " + ", ".join(f"`{n}`" for n in d.produces) + f": {d.description}"
                 for d in lb.definitions]
        if lb.undefined:
            items.append(", ".join(f"`{n}`" for n in lb.undefined) + ": no registered metric group produces "
                         "this name here (a metric no longer registered, or definitions not supplied).")
        items += [f"`gap.<m>` = |m(unlearned) − m({lb.reference})| per seed; `avg_gap` = mean of the gaps of "
                  "forget_acc, retain_acc, test_acc and mia.svc_efficacy (SalUn's Avg. Gap).",
                  "`time_s`: wall time of the method's unlearn call alone; `speedup_vs_retrain`: retrain time_s / "
                  "time_s; `peak_mem_mib`: peak CUDA memory (GPU) or resident-set peak (CPU) during the call; "
                  "`extra_params`, `extra_bytes`: what the method adds to the deployed model."]
        blocks.append(("list", items))
    if lb.anchors:
        blocks.append(("h2", "Reported numbers"))
        blocks.append(("list", [f"[{i}] {a.source}; setting: {a.setting}; the paper's method: {a.paper_method}; "
                                f"{note}. Converted to our units (fractions; forget_acc = 1 − UA; "
                                "MIA-efficacy = mia.svc_efficacy)." for (a, note), i in anchor_ref.items()]))
    return blocks


def _compact(cols: list[str]) -> list[str]:
    out = [c for c in cols if not c.startswith("cell.")]
    return (["cell.*"] if any(c.startswith("cell.") for c in cols) else []) + out


def _scores_table(g: Group, lb: Leaderboard, anchor_ref: dict, arrow: str) -> Table:
    cols = ([lb.primary] if g.has_primary else []) + g.score_cols
    header = ["rank", "method", "n"] + [f"{c} {arrow}" if c == lb.primary else c for c in cols]
    t = Table(caption="Scores", header=header, rows=[])
    for mr in g.rows:
        if mr.state == "ok":
            cells = [fmt_stat(mr.stats.get(c), "score", mr.n) for c in cols]
        else:
            cells = _status_cells(mr, len(cols))
        t.rows.append((_row_kind(mr), [mr.rank, _method_label(mr), mr.n_text()] + cells))
        for a, note in mr.anchors:
            t.rows.append(("anchor", ["", f"↳ reported [{anchor_ref[(a, note)]}]", str(a.n) if a.n else "?"] +
                           [_anchor_cell(a, c) for c in cols]))
    if not g.has_primary:
        t.notes.append(f"No `{lb.primary}` values in this cell: methods are not ranked.")
    undefined = [c for c in g.nan_cols if not c.startswith("gap.")]
    if undefined:
        t.notes.append("Not defined for this request (NaN in every run; gaps likewise): " +
                       ", ".join(f"`{c}`" for c in undefined) + ".")
    if not g.has_reference:
        t.notes.append(f"No `{lb.reference}` results in this cell: no reference row, and no gaps.")
    for mr in g.rows:
        for reason in mr.reasons:
            t.notes.append(f"`{mr.method}` {reason}")
    return t


def _simple_table(g: Group, cols: list[str], kind: str, caption: str, skip_ref: bool = False) -> Table:
    t = Table(caption=caption, header=["rank", "method"] + cols, rows=[])
    for mr in g.rows:
        if skip_ref and mr.is_reference:
            continue
        cells = ([fmt_stat(mr.stats.get(c), kind, mr.n) for c in cols] if mr.state == "ok"
                 else _status_cells(mr, len(cols)))
        t.rows.append((_row_kind(mr), [mr.rank, _method_label(mr)] + cells))
    return t


def _diag_table(g: Group) -> Table:
    t = Table(caption="Method diagnostics", header=["method", "value name", "value", "n"], rows=[])
    for mr in g.rows:
        for c in g.diag_cols:
            s = mr.stats.get(c)
            if s is not None:
                t.rows.append(("ok", [mr.method, c, fmt_stat(s, "cost"), str(s.n)]))
    return t


# ------------------------------------------------------------------------------------ renderers


def render(lb: Leaderboard, fmt: str = "md") -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown leaderboard format {fmt!r}; choose one of {FORMATS}")
    if fmt == "csv":
        return to_csv(lb)
    return {"md": _markdown, "html": _html, "tex": _tex}[fmt](document(lb))


def _split_code(text: str) -> list[tuple[bool, str]]:
    parts = text.split("`")
    return [(i % 2 == 1, p) for i, p in enumerate(parts) if p]


def _md_cell(s: str) -> str:
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def _md_text(s: str) -> str:
    return "".join(f"`{p}`" if code else p.replace("<", "&lt;") for code, p in _split_code(s))


def _markdown(blocks: list[tuple[str, Any]]) -> str:
    out: list[str] = []
    for kind, payload in blocks:
        if kind == "h1":
            out += [f"# {_md_cell(payload)}", ""]
        elif kind == "h2":
            out += [f"## {_md_cell(payload)}", ""]
        elif kind in ("p", "date"):
            out += [_md_text(payload), ""]
        elif kind == "list":
            out += [f"- {_md_text(item)}" for item in payload] + [""]
        elif kind == "table":
            t: Table = payload
            out += [f"**{t.caption}**", ""]
            out.append("| " + " | ".join(_md_cell(h) for h in t.header) + " |")
            out.append("|" + "|".join(":---" if i < 2 else "---:" for i in range(len(t.header))) + "|")
            for rk, cells in t.rows:
                cells = [_md_cell(c) for c in cells]
                if rk == "ref":
                    cells[1] = f"**{cells[1]}**"
                elif rk == "anchor":
                    cells = [f"*{c}*" if c else c for c in cells]
                out.append("| " + " | ".join(cells) + " |")
            out.append("")
            out += [f"- {_md_text(n)}" for n in t.notes] + ([""] if t.notes else [])
    return "\n".join(out).rstrip("\n") + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:2em;color:#1a1a1a;
max-width:110em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0 1em 0;font-size:.85em}
caption{text-align:left;font-weight:bold;padding:.3em 0}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right;white-space:nowrap}
th{background:#f3f3f3}td:nth-child(2),th:nth-child(2),td:first-child,th:first-child{text-align:left}
tr.ref td{background:#eef5ff;font-weight:bold}tr.anchor td{color:#555;font-style:italic;background:#fafafa}
tr.na td{color:#777}tr.failed td{color:#a00}
code{background:#f3f3f3;padding:0 .2em}.tw{overflow-x:auto}.date{color:#555}ul.notes{font-size:.85em;color:#444}
""".strip()


def _html_text(s: str) -> str:
    return "".join(f"<code>{html.escape(p)}</code>" if code else html.escape(p) for code, p in _split_code(s))


def _html(blocks: list[tuple[str, Any]]) -> str:
    title = next((p for k, p in blocks if k == "h1"), "Leaderboard")
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>{html.escape(title)}</title>", f"<style>\n{_CSS}\n</style>", "</head>", "<body>"]
    for kind, payload in blocks:
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{html.escape(payload)}</{kind}>")
        elif kind == "date":
            out.append(f'<p class="date">{html.escape(payload)}</p>')
        elif kind == "p":
            out.append(f"<p>{_html_text(payload)}</p>")
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{_html_text(i)}</li>" for i in payload) + "</ul>")
        elif kind == "table":
            t: Table = payload
            out.append('<div class="tw"><table>')
            out.append(f"<caption>{html.escape(t.caption)}</caption>")
            out.append("<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in t.header) + "</tr></thead>")
            out.append("<tbody>")
            for rk, cells in t.rows:
                out.append(f'<tr class="{rk}">' + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
            out.append("</tbody></table></div>")
            if t.notes:
                out.append('<ul class="notes">' + "".join(f"<li>{_html_text(n)}</li>" for n in t.notes) + "</ul>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                "±": r"$\pm$", "↓": r"$\downarrow$", "↑": r"$\uparrow$", "—": "---", "–": "--",
                "↳": r"$\hookrightarrow$", "×": r"$\times$", "→": r"$\to$", "−": "--", "·": r"$\cdot$",
                "<": r"\textless{}", ">": r"\textgreater{}"}


def tex_escape(s: str) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in s)


def _tex_text(s: str) -> str:
    return "".join(f"\\texttt{{{tex_escape(p)}}}" if code else tex_escape(p) for code, p in _split_code(s))


def _tex(blocks: list[tuple[str, Any]]) -> str:
    out = [r"\documentclass[landscape]{article}", r"\usepackage[utf8]{inputenc}", r"\usepackage[T1]{fontenc}",
           r"\usepackage[margin=1.5cm]{geometry}", r"\usepackage{booktabs}", r"\begin{document}", ""]
    for kind, payload in blocks:
        if kind == "h1":
            out += [f"\\section*{{{tex_escape(payload)}}}", ""]
        elif kind == "h2":
            out += [f"\\subsection*{{{tex_escape(payload)}}}", ""]
        elif kind in ("p", "date"):
            out += [_tex_text(payload), ""]
        elif kind == "list":
            out += [r"\begin{itemize}"] + [f"\\item {_tex_text(i)}" for i in payload] + [r"\end{itemize}", ""]
        elif kind == "table":
            t: Table = payload
            spec = "ll" + "r" * (len(t.header) - 2)
            out += [r"\begin{center}\scriptsize", f"\\textbf{{{tex_escape(t.caption)}}}\\\\[2pt]",
                    f"\\begin{{tabular}}{{{spec}}}", r"\toprule",
                    " & ".join(tex_escape(h) for h in t.header) + r" \\", r"\midrule"]
            for rk, cells in t.rows:
                cells = [tex_escape(c) for c in cells]
                if rk == "ref":
                    cells = [f"\\textbf{{{c}}}" if c else c for c in cells]
                elif rk == "anchor":
                    cells = [f"\\textit{{{c}}}" if c else c for c in cells]
                out.append(" & ".join(cells) + r" \\")
            out += [r"\bottomrule", r"\end{tabular}", r"\end{center}"]
            if t.notes:
                out += [r"\begin{itemize}\footnotesize"] + [f"\\item {_tex_text(n)}" for n in t.notes] + \
                       [r"\end{itemize}"]
            out.append("")
    out.append(r"\end{document}")
    return "\n".join(out) + "\n"


def _csv_num(x: float) -> str:
    if math.isnan(x):
        return ""
    return repr(float(x))


def to_csv(lb: Leaderboard) -> str:
    """One row per (group, method), every metric as ``<m>``, ``<m>.ci95``, ``<m>.n`` (full precision),
    plus ``source = reported`` rows for paper numbers. No date: identical records give identical bytes."""
    metric_cols: list[str] = []
    for g in lb.groups:
        for c in [lb.primary] + g.score_cols + g.gap_cols + g.cost_cols + g.diag_cols + g.harness_cols:
            if c not in metric_cols and (c != lb.primary or g.has_primary):
                metric_cols.append(c)
    head = ["source", "suite", "dataset", "model", "request", "device", "method", "rank", "status", "n", "seeds",
            "seeds_failed", "seeds_not_applicable", "reason", "commit", "device_name"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head + [x for c in metric_cols for x in (c, f"{c}.ci95", f"{c}.n")])
    for g in lb.groups:
        prov = {p.split(" ", 1)[0]: p.split(" ", 1)[1] for p in g.provenance if " " in p}
        for mr in g.rows:
            base = ["measured", g.suite, g.dataset, g.model, g.request, g.device, mr.method, mr.rank, mr.state,
                    str(mr.n), " ".join(map(str, mr.seeds_ok)), " ".join(map(str, mr.seeds_failed)),
                    " ".join(map(str, mr.seeds_na)), " | ".join(mr.reasons), prov.get("commit", ""),
                    prov.get("device", "")]
            vals = []
            for c in metric_cols:
                s = mr.stats.get(c)
                vals += ["", "", ""] if s is None else [_csv_num(s.mean), _csv_num(s.ci), str(s.n)]
            w.writerow(base + vals)
            for a, note in mr.anchors:
                base = ["reported", g.suite, g.dataset, g.model, g.request, "", mr.method, "", "reported",
                        str(a.n or ""), "", "", "", f"{a.source}; {a.setting}; {a.paper_method}; {note}", "", ""]
                vals = []
                for c in metric_cols:
                    v = a.values.get(c)
                    vals += ["", "", ""] if v is None else [_csv_num(v[0]), _csv_num(v[1]) if v[1] is not None
                                                            else "", str(a.n or "")]
                w.writerow(base + vals)
    return buf.getvalue()


def strip_date(text: str) -> str:
    """The text without its generation-date line: what byte-for-byte comparisons of regenerated
    leaderboards compare."""
    return "\n".join(line for line in text.split("\n") if DATE_PREFIX not in line)


def sanitize(name: str) -> str:
    """A file-name-safe form of a label (``random-10%`` -> ``random-10pct``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name.replace("%", "pct")).strip("_") or "x"
