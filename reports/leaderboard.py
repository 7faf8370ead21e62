"""Leaderboards: a pure function of stored run rows (``RunRecord.row()`` dicts) and the declarations of
their values, rendered as Markdown, self-contained HTML, CSV or LaTeX.

Every value is placed by its declaration (a mapping name -> :class:`unlearnbench.attacks.ValueSpec`
that the CLI passes in: ``kind``, ``direction``, ``unit``, ``definition``, ``table``), never by its
name. Per (suite, dataset, model, request, device) up to four tables share one row order:

- **Scores**: the primary score first, then every value of kind ``score``, each cell the mean ± the
  half-width of a 95% confidence interval over seeds (Student t with n − 1 degrees of freedom) and n;
  the reference rows first (``retrain``, the target every gap is measured against, then ``original``,
  the no-op), never ranked; the methods ranked by the primary score in its declared direction, each
  rank marked "≈ best" when the method cannot be told apart from the best (:mod:`.ranking`); and,
  where a paper reports a number for the cell (:mod:`.anchors`), a ``reported`` row under the method
  it describes. A value nothing declares is shown here too, with a note.
- **Gaps to retrain**: values of kind ``gap`` (``gap.<m> = |m(θ_u) − m(θ_r)|`` per seed, ``avg_gap``).
- **Cost**: values of kind ``cost`` (time, example passes and FLOPs, speed-ups, memory, storage, and
  any ``work.<unit>``).
- **Diagnostics**: values of kind ``diagnostic`` (what a method or the harness reports about the run).

Values declared ``table=False`` (the harness's per-phase timings ``cell.*``, the reference's own cost)
are in the CSV only. Methods that were not applicable or failed keep their row, marked as such, with
the reason below the table. After the cells, per suite, the mean rank of every ranked method across the
suite's cells with a Friedman test and a Nemenyi post-hoc. Column headers are the values' registered
names, defined in docs/metrics.md and under "Definitions" (from the declarations). Each section ends
with the provenance of its runs (commit and dirty flag, device, precision, library versions, dates).

Determinism: the output depends on the rows and declarations alone (sorted by identity, seeds in order,
fixed number formats), except the one line that says when the document was generated
(``generated_at``).
"""

from __future__ import annotations

import csv
import html
import io
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterable, Mapping, Sequence

from .anchors import ANCHORS, Anchor, find_anchors
from .ranking import (ALPHA, CD_TEST, MISSING_RULE, TIE_TEST, CellRanks, RankBy, Tie, block_label, cell_ranks,
                      device_of, latest_rows, method_key, num, rank_by, spec_lookup, ties_with_best)

IDENTITY = ("cell_key", "suite", "dataset", "model", "request", "method", "seed", "status", "config_hash", "reason",
            "run_id", "scores_file", "created_at", "config", "hashes", "env")
FORMATS = ("md", "html", "csv", "tex")
DATE_PREFIX = "Generated: "
DOCS = "docs/metrics.md"
ARROWS = {"higher": "↑", "lower": "↓", "closest": "≈"}
SCORE_UNITS = ("fraction", "AUC")  # shown with three decimals; other units with three significant digits

__all__ = ["ALPHA", "Group", "Leaderboard", "MethodRow", "Stat", "Table", "build", "document", "fmt_num", "fmt_stat",
           "latest_rows", "method_key", "provenance", "render", "sanitize", "strip_date", "to_csv"]


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
    is_reference: bool = False  # the retrain reference: the target every gap is measured against
    is_baseline: bool = False  # another reference row (the no-op original): shown, never ranked
    run_ids: tuple[str, ...] = ()  # the ok runs, in seed order (for per-example scores)
    rank: str = "—"  # "ref", a number, or "—" (not ranked)
    tie: Tie | None = None  # the comparison with the best of the cell (ranked methods after the first)
    anchors: list[tuple[Anchor, str]] = field(default_factory=list)  # (anchor, dataset note)

    @property
    def n(self) -> int:
        return len(self.seeds_ok)

    @property
    def state(self) -> str:
        if self.seeds_ok:
            return "ok"
        return "failed" if self.seeds_failed else "not_applicable"

    @property
    def is_ref_row(self) -> bool:
        return self.is_reference or self.is_baseline

    @property
    def rank_text(self) -> str:
        return f"{self.rank} (≈ best)" if self.tie is not None and self.tie.tied else self.rank

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
    csv_cols: list[str]  # declared table=False: in the CSV only
    nan_cols: list[str]
    has_primary: bool
    has_reference: bool
    provenance: list[str]
    dataset_name: str = ""  # the dataset source (config), e.g. "cifar10-jpeg"
    request_kind: str = ""
    request_params: dict[str, Any] = field(default_factory=dict)
    rank_column: str | None = None  # what ranks here (the primary, or its gap to retrain); None: not ranked
    rank_higher: bool = False  # whether higher values of rank_column rank first
    notes: list[str] = field(default_factory=list)  # about the ranking of this cell
    specs: Mapping[str, Any] = field(default_factory=dict, repr=False)  # declaration of every value shown

    @property
    def title(self) -> str:
        return f"{self.dataset} / {self.model} / {self.request} ({self.device})"

    @property
    def cost_axes(self) -> list[str]:
        """Every cost value of the cell (CSV-only ones included) whose declared direction is lower, with a
        value: what a cost figure draws."""
        return [c for c in self.cost_cols + self.csv_cols if c not in self.nan_cols
                and _is(self.specs.get(c), "cost") and self.specs[c].direction == "lower"]


@dataclass
class Leaderboard:
    title: str
    primary: str
    by: RankBy
    reference: str
    references: tuple[str, ...]
    groups: list[Group]
    definitions: list[str]  # one line per shown value (or family), from the declarations
    notes: list[str]  # shown once, under the introduction (e.g. why CPU memory is not measured)
    suites: list[CellRanks]  # mean ranks across the cells of each suite
    anchors: list[tuple[Anchor, str]]  # footnote order
    undeclared: list[str]  # shown values that nothing declares
    superseded: int
    generated_at: str
    alpha: float = ALPHA

    @property
    def higher_is_better(self) -> bool:
        return self.by.higher


# ------------------------------------------------------------------------------------ building


def _is(spec: Any, kind: str) -> bool:
    return spec is not None and spec.kind == kind


def _metric_names(row: dict[str, Any]) -> list[str]:
    return [k for k in row if k not in IDENTITY]


def build(rows: Iterable[dict[str, Any]], *, primary: str = "avg_gap", specs: Mapping[str, Any] | Callable | None = None,
          higher_is_better: bool | None = None, references: Collection[str] | None = None,
          method_order: Sequence[str] | None = None, reference: str = "retrain", anchors: Sequence[Anchor] = ANCHORS,
          generated_at: str = "", title: str | None = None, alpha: float = ALPHA) -> Leaderboard:
    """Aggregate rows into a :class:`Leaderboard` (see the module docstring).

    ``specs``: the declaration of every value name in the rows (a mapping, ordered as the values were
    declared, or a callable name -> spec or None); a value without one is shown as a score and listed as
    undeclared. ``higher_is_better``: overrides the primary score's declared direction. ``references``:
    the reference rows, never ranked (the methods tagged ``reference``; default: ``reference`` alone);
    ``reference``: the one every gap is measured against."""
    rows, superseded = latest_rows(rows)
    spec_of = spec_lookup(specs)
    pos = {n: i for i, n in enumerate(specs)} if isinstance(specs, Mapping) else {}
    refs = tuple(sorted(set(references or ()) | {reference}))
    names = {n for r in rows if r.get("status") == "ok" for n in _metric_names(r)}
    by = rank_by(primary, spec_of(primary), names, higher_is_better)
    order = {m: i for i, m in enumerate(method_order or ())}
    by_group: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        by_group.setdefault((r["suite"], r["dataset"], r["model"], r["request"], device_of(r)), []).append(r)
    used_anchors: list[tuple[Anchor, str]] = []
    groups = []
    for key in sorted(by_group):
        g = _build_group(key, by_group[key], primary, by, spec_of, pos, order, reference, refs, anchors, alpha)
        groups.append(g)
        for mr in g.rows:
            for a in mr.anchors:
                if a not in used_anchors:
                    used_anchors.append(a)
    suites = sorted({k[0] for k in by_group})
    if title is None:
        title = "Leaderboard: " + (f"suite {', '.join(suites)}" if suites else "no results")
    shown = [c for g in groups for c in ([primary] if g.has_primary else []) + g.score_cols + g.gap_cols +
             g.cost_cols + g.diag_cols]
    undeclared = sorted({c for c in shown if spec_of(c) is None})
    notes = sorted({str((r.get("env") or {}).get("peak_mem_note")) for r in rows
                    if (r.get("env") or {}).get("peak_mem_note")})
    ranks = [cell_ranks([r for r in rows if r["suite"] == s], by, refs, suite=s, alpha=alpha) for s in suites]
    return Leaderboard(title=title, primary=primary, by=by, reference=reference, references=refs, groups=groups,
                       definitions=definitions(list(dict.fromkeys(shown)), spec_of, {mr.method for g in groups
                                                                                     for mr in g.rows}),
                       notes=notes, suites=ranks, anchors=used_anchors, undeclared=undeclared,
                       superseded=superseded, generated_at=generated_at, alpha=alpha)


def _classify(names: list[str], primary: str, spec_of: Callable, pos: dict[str, int], group_order: list[str]):
    """(score, gap, cost, diagnostic, csv-only) columns of a cell, each in declaration order."""
    def spos(n: str) -> tuple:
        return (pos.get(n, len(pos)), n)

    cols: dict[str, list[str]] = {k: [] for k in ("score", "gap", "cost", "diagnostic", "csv")}
    for n in names:
        if n == primary:
            continue
        spec = spec_of(n)
        if spec is not None and not spec.table:
            cols["csv"].append(n)
        else:
            cols[spec.kind if spec is not None and spec.kind in cols else "score"].append(n)

    def score_key(n: str) -> tuple:
        spec = spec_of(n)
        grp = spec.group if spec is not None else ""
        return (spec is None, group_order.index(grp) if grp in group_order else len(group_order)) + spos(n)

    scores = sorted(cols["score"], key=score_key)
    # a gap beside the value it measures: in the order of the shown values, then any other gap
    gaps = [f"gap.{c}" for c in scores if f"gap.{c}" in cols["gap"]]
    gaps += sorted((g for g in cols["gap"] if g not in gaps), key=spos)
    return (scores, gaps, sorted(cols["cost"], key=spos), sorted(cols["diagnostic"], key=spos),
            sorted(cols["csv"], key=spos))


def _build_group(key: tuple, rows: list[dict[str, Any]], primary: str, by: RankBy, spec_of: Callable,
                 pos: dict[str, int], order: dict[str, int], reference: str, refs: tuple[str, ...],
                 anchors: Sequence[Anchor], alpha: float) -> Group:
    suite, dataset, model, request, device = key
    by_method: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_method.setdefault(method_key(r), []).append(r)
    methods = sorted(by_method, key=lambda m: (order.get(m, len(order)), m))
    names: list[str] = []
    for r in sorted(rows, key=lambda r: (method_key(r), int(r["seed"]))):
        if r["status"] == "ok":
            names += [n for n in _metric_names(r) if n not in names]
    # the metric groups in the order the suite lists them
    group_order: list[str] = []
    for r in rows:
        for gname in (r.get("config") or {}).get("metrics", []):
            if gname not in group_order:
                group_order.append(gname)
    score_cols, gap_cols, cost_cols, diag_cols, csv_cols = _classify(names, primary, spec_of, pos, group_order)

    ds_cfg: dict[str, Any] = {}
    req_cfg: dict[str, Any] = {}
    for r in rows:
        cfg = r.get("config") or {}
        ds_cfg = ds_cfg or cfg.get("dataset", {})
        req_cfg = req_cfg or cfg.get("request", {})
    mrows: list[MethodRow] = []
    per_seed: dict[str, dict[int, float]] = {}
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
        stats = {n: Stat.of([num(r.get(n)) for r in ok if n in r]) for n in names}
        mr = MethodRow(method=m, seeds_ok=tuple(int(r["seed"]) for r in ok),
                       seeds_na=tuple(int(r["seed"]) for r in rs if r["status"] == "not_applicable"),
                       seeds_failed=tuple(int(r["seed"]) for r in rs if r["status"] == "failed"),
                       reasons=uniq, stats={k: v for k, v in stats.items() if v.n or v.n_nan},
                       is_reference=m == reference, is_baseline=m != reference and m in refs,
                       run_ids=tuple(str(r.get("run_id", "")) for r in ok))
        if by.column is not None:
            per_seed[m] = {int(r["seed"]): num(r.get(by.column)) for r in ok if by.column in r}
        mr.anchors = [(a.anchor, a.note) for a in find_anchors(
            tuple(anchors), str(ds_cfg.get("name", dataset)), ds_cfg.get("train_subset"), model,
            str(req_cfg.get("kind", "")), dict(req_cfg.get("params", {})), m)]
        mrows.append(mr)

    # columns NaN in every run of this group (e.g. backdoor metrics on a random request) are listed, not shown
    def defined(c: str | None) -> bool:
        return c is not None and any(mr.stats.get(c) is not None and mr.stats[c].n for mr in mrows)

    nan_cols = [c for c in score_cols + gap_cols + cost_cols + diag_cols + csv_cols if not defined(c)]
    score_cols, gap_cols, cost_cols, diag_cols = ([c for c in cols if defined(c)]
                                                  for cols in (score_cols, gap_cols, cost_cols, diag_cols))

    # ranking: every method but the reference rows with a finite rank value; equal means share a rank
    notes: list[str] = []
    column = by.column if defined(by.column) else None

    def pkey(mr: MethodRow) -> float:
        s = mr.stats.get(column) if column else None
        return s.mean if s and s.n else float("nan")

    rankable = [mr for mr in mrows if not mr.is_ref_row and mr.n and not math.isnan(pkey(mr))]
    rankable.sort(key=lambda mr: ((-pkey(mr)) if by.higher else pkey(mr), order.get(mr.method, len(order)),
                                  mr.method))
    prev, prev_rank = None, 0
    for i, mr in enumerate(rankable, 1):
        if pkey(mr) != prev:
            prev, prev_rank = pkey(mr), i
        mr.rank = str(prev_rank)
    ties = ties_with_best(per_seed, [mr.method for mr in rankable], alpha) if column else {}
    for mr in rankable:
        mr.tie = ties.get(mr.method)
    if column is None:
        notes.append(by.reason or f"No `{by.column}` values in this cell: methods are not ranked.")
    elif len(rankable) > 1:
        untested = sorted({t.why for t in ties.values() if t.tied is None})
        if untested and all(t.tied is None for t in ties.values()):
            notes.append("One seed per method: ranked by the value alone; ties with the best are not tested."
                         if untested == ["one seed: not tested"] else
                         "Ties with the best are not tested here (" + "; ".join(untested) + ").")
        else:
            tied = [mr.method for mr in rankable if mr.tie is not None and mr.tie.tied]
            notes.append(f"Ranked by {by.text}. ≈ best: cannot be told apart from `{rankable[0].method}` (the best "
                         "mean) by a " + TIE_TEST.format(alpha=alpha) + ": " +
                         (", ".join(f"`{m}`" for m in tied) if tied else "none") + "." +
                         (" Not tested: " + ", ".join(f"`{mr.method}` ({mr.tie.why})" for mr in rankable
                                                      if mr.tie is not None and mr.tie.tied is None) + "."
                          if untested else ""))
    ref_rows = sorted((mr for mr in mrows if mr.is_ref_row), key=lambda mr: (not mr.is_reference,
                                                                             order.get(mr.method, len(order)),
                                                                             mr.method))
    for mr in ref_rows:
        mr.rank = "ref"
    ranked_ids = {id(mr) for mr in rankable} | {id(mr) for mr in ref_rows}
    rest_rows = [mr for mr in mrows if id(mr) not in ranked_ids]
    rest_rows.sort(key=lambda mr: ({"ok": 0, "not_applicable": 1, "failed": 2}[mr.state],
                                   order.get(mr.method, len(order)), mr.method))
    display = ref_rows + rankable + rest_rows
    shown = [primary] + score_cols + gap_cols + cost_cols + diag_cols + csv_cols + nan_cols
    return Group(suite=suite, dataset=dataset, model=model, request=request, device=device, rows=display,
                 score_cols=score_cols, gap_cols=gap_cols, cost_cols=cost_cols, diag_cols=diag_cols,
                 csv_cols=csv_cols, nan_cols=nan_cols, has_primary=defined(primary),
                 has_reference=any(mr.is_reference and mr.n for mr in ref_rows), provenance=provenance(rows),
                 dataset_name=str(ds_cfg.get("name", dataset)), request_kind=str(req_cfg.get("kind", "")),
                 request_params=dict(req_cfg.get("params", {})), rank_column=column, rank_higher=by.higher,
                 notes=notes,
                 specs={c: spec_of(c) for c in shown if spec_of(c) is not None})


# ------------------------------------------------------------------------------------ definitions


def direction_text(spec: Any) -> str:
    return {"higher": "higher is better", "lower": "lower is better",
            "closest": "closest to retrain's value is better", "none": "no direction"}.get(spec.direction,
                                                                                            spec.direction)


def _spec_line(name: str, spec: Any) -> str:
    unit = f"; unit {spec.unit}" if spec.unit else ""
    sample = f" Sample: {spec.sample}." if spec.sample else ""
    return f"`{name}` ({spec.kind}, {direction_text(spec)}{unit}): {spec.definition}.{sample}"


def definitions(shown: Sequence[str], spec_of: Callable, methods: Collection[str] = ()) -> list[str]:
    """One line per shown value, from its declaration: kind, direction, unit, definition, sample. The gaps
    ``gap.<m>`` of shown values share one line; the diagnostics of one declaring group (a method's own
    values) share one line; undeclared values are listed as such."""
    items: list[str] = []
    gap_of = [c for c in shown if f"gap.{c}" in shown and _is(spec_of(f"gap.{c}"), "gap")]
    gap_names = {f"gap.{c}" for c in gap_of}
    diag_groups: dict[str, list[str]] = {}
    for c in shown:
        spec = spec_of(c)
        if spec is None:
            continue
        if c in gap_names:
            if c == f"gap.{gap_of[0]}":  # the gaps of the shown values: one line, where the first one is
                items.append(f"`gap.<m>` ({spec.kind}, {direction_text(spec)}; the unit of m), for m in " +
                             ", ".join(f"`{m}`" for m in gap_of) + ": " + spec.definition.replace(gap_of[0], "m") +
                             ".")
            continue
        if spec.kind == "diagnostic" and spec.group in methods:
            diag_groups.setdefault(spec.group, []).append(c)
            continue
        items.append(_spec_line(c, spec))
    for g, cs in diag_groups.items():
        items.append(", ".join(f"`{c}`" for c in cs) + f" (diagnostic, never ranked): reported by the method `{g}` "
                     "about its own run (its documentation says what each is).")
    undeclared = [c for c in shown if spec_of(c) is None]
    if undeclared:
        items.append(", ".join(f"`{n}`" for n in undeclared) + ": nothing declares this value (shown as a score, "
                     "without a direction; a metric no longer registered, or declarations not supplied).")
    return items


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
    if mr.is_ref_row and mr.n:
        return "ref"
    return {"ok": "ok", "failed": "failed", "not_applicable": "na"}[mr.state]


def _method_label(mr: MethodRow) -> str:
    return f"{mr.method} (reference)" if mr.is_ref_row else mr.method


def _fmt_kind(g: Group, col: str) -> str:
    """Three decimals for fractions and AUCs (and undeclared values), three significant digits otherwise."""
    spec = g.specs.get(col)
    return "score" if spec is None or spec.unit in SCORE_UNITS else "cost"


def _header(g: Group, col: str) -> str:
    spec = g.specs.get(col)
    arrow = ARROWS.get(spec.direction, "") if spec is not None else ""
    return f"{col} {arrow}" if arrow else col


def document(lb: Leaderboard) -> list[tuple[str, Any]]:
    blocks: list[tuple[str, Any]] = [("h1", lb.title), ("date", f"{DATE_PREFIX}{lb.generated_at}")]
    others = [r for r in lb.references if r != lb.reference]
    ranked = (f"Methods are ranked by {lb.by.text}, by the mean over seeds; a rank marked **≈ best** means the method "
              "cannot be told apart from the best-mean method of its cell (" + TIE_TEST.format(alpha=lb.alpha) +
              "; with one seed, not tested). " if lb.by.column else f"Methods are not ranked: {lb.by.reason}. ")
    blocks.append(("p", f"Primary score: `{lb.primary}`. " + ranked +
                        "Each cell: mean ± half-width of the 95% confidence interval over seeds (Student t, n − 1 "
                        "degrees of freedom); n = seeds with a result. "
                        f"Reference rows are shown first and never ranked: `{lb.reference}` is the target every gap is "
                        "measured against" + (", " + ", ".join(f"`{r}`" for r in others) + " the model before "
                                              "unlearning" if others else "") + ". "
                        "Column arrows come from each value's declaration: ↑ higher is better, ↓ lower is better, "
                        f"≈ closest to {lb.reference}'s value is better. Column names are the registered value names "
                        f"defined in {DOCS} (see Definitions)."))
    for note in lb.notes:
        blocks.append(("p", f"Note: {note}."))
    if lb.superseded:
        blocks.append(("p", f"{lb.superseded} older run(s) of the same cells were superseded by newer ones."))
    if not lb.groups:
        blocks.append(("p", "No results."))
    anchor_ref = {a: i for i, a in enumerate(lb.anchors, 1)}
    for g in lb.groups:
        blocks.append(("h2", f"{g.suite}: {g.title}"))
        blocks.append(("table", _scores_table(g, lb, anchor_ref)))
        if g.gap_cols:
            blocks.append(("table", _simple_table(g, g.gap_cols, f"Gaps to {lb.reference}", skip_ref=True)))
        if g.cost_cols:
            t = _simple_table(g, g.cost_cols, "Cost")
            unmeasured = [c for c in g.nan_cols if _is(g.specs.get(c), "cost") and g.specs[c].table]
            if unmeasured:
                t.notes.append("Not measured in this cell (empty in every run): " +
                               ", ".join(f"`{c}`" for c in unmeasured) + ".")
            blocks.append(("table", t))
        if g.diag_cols:
            blocks.append(("table", _diag_table(g)))
        notes = []
        if g.csv_cols:
            notes.append("In the CSV output only (declared so): " + ", ".join(f"`{c}`" for c in g.csv_cols) + ".")
        blocks.append(("p", " ".join(notes + ["Provenance: " + " · ".join(g.provenance) + "."])))
    for cr in lb.suites:
        blocks += _ranks_blocks(cr, lb)
    if lb.groups:
        blocks.append(("h2", "Definitions"))
        blocks.append(("list", list(lb.definitions)))
    if lb.anchors:
        blocks.append(("h2", "Reported numbers"))
        blocks.append(("list", [f"[{i}] {a.source}; setting: {a.setting}; the paper's method: {a.paper_method}; "
                                f"{note}. Converted to our units (fractions; forget_acc = 1 − UA; "
                                "MIA-efficacy = mia.svc_efficacy)." for (a, note), i in anchor_ref.items()]))
    return blocks


def _p(p: float) -> str:
    return "nan" if math.isnan(p) else (f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}")


def _ranks_blocks(cr: CellRanks, lb: Leaderboard) -> list[tuple[str, Any]]:
    """The mean rank of every ranked method across the cells of a suite, the Friedman test, the post-hoc."""
    out: list[tuple[str, Any]] = [("h2", f"{cr.suite}: mean rank across cells")]
    if not cr.methods:
        out.append(("p", f"No mean ranks: {cr.reason}."))
        return out
    t = Table(caption="Mean rank across cells", header=["rank", "method", "mean rank", "≈ best"], rows=[])
    best = cr.methods[0]
    for i, m in enumerate(cr.methods, 1):
        same = "—" if m == best else ("yes" if cr.tied_with_best(m) else "no")
        t.rows.append(("ok", [str(i), m, f"{cr.mean_rank[m]:.2f}", same]))
    by = f"`{cr.by.column}`" + (f" ({'higher' if cr.by.higher else 'lower'} is better)")
    t.notes.append(f"Blocks: {len(cr.blocks)} of {cr.total_blocks} (dataset, model, request, device, seed) cells; "
                   f"within each, the {len(cr.methods)} methods are ranked by {by}, 1 = best (ties share the "
                   "average rank); reference rows are not ranked. Missing values: " + MISSING_RULE + ".")
    if cr.tested:
        verdict = ("the methods' ranks differ" if cr.significant else
                   "no difference between the methods is detected, so every method is ≈ best")
        t.notes.append(f"Friedman χ² = {cr.statistic:.3g}, p = {_p(cr.p)} ({verdict}); Nemenyi critical difference "
                       f"CD = {cr.cd:.3g} at α = {cr.alpha:g}. ≈ best: the Nemenyi test does not tell the method "
                       f"apart from `{best}` (the best mean rank). Test: " + CD_TEST.format(alpha=cr.alpha) + ".")
    else:
        t.notes.append(f"Not tested: {cr.reason}.")
    if cr.dropped_methods:
        t.notes.append("Dropped (a value in too few blocks): " + ", ".join(
            f"`{m}` ({n} of {total})" for m, n, total in cr.dropped_methods) + ".")
    if cr.dropped_blocks:
        t.notes.append("Dropped blocks (a kept method has no value): " + ", ".join(
            f"{block_label(b)} (no {', '.join(missing)})" for b, missing in cr.dropped_blocks) + ".")
    out.append(("table", t))
    return out


def _scores_table(g: Group, lb: Leaderboard, anchor_ref: dict) -> Table:
    cols = ([lb.primary] if g.has_primary else []) + g.score_cols
    header = ["rank", "method", "n"] + [_header(g, c) for c in cols]
    t = Table(caption="Scores", header=header, rows=[])
    for mr in g.rows:
        if mr.state == "ok":
            cells = [fmt_stat(mr.stats.get(c), _fmt_kind(g, c), mr.n) for c in cols]
        else:
            cells = _status_cells(mr, len(cols))
        t.rows.append((_row_kind(mr), [mr.rank_text, _method_label(mr), mr.n_text()] + cells))
        for a, note in mr.anchors:
            t.rows.append(("anchor", ["", f"↳ reported [{anchor_ref[(a, note)]}]", str(a.n) if a.n else "?"] +
                           [_anchor_cell(a, c) for c in cols]))
    if not g.has_primary:
        t.notes.append(f"No `{lb.primary}` values in this cell.")
    t.notes += g.notes
    undefined = [c for c in g.nan_cols if not _is(g.specs.get(c), "gap") and not _is(g.specs.get(c), "cost")
                 and (g.specs.get(c) is None or g.specs[c].table)]
    if undefined:
        t.notes.append("Not defined for this request (NaN in every run; gaps likewise): " +
                       ", ".join(f"`{c}`" for c in undefined) + ".")
    undeclared = [c for c in cols if c not in g.specs]
    if undeclared:
        t.notes.append("Nothing declares " + ", ".join(f"`{c}`" for c in undeclared) +
                       ": shown as a score, without a direction.")
    if not g.has_reference:
        t.notes.append(f"No `{lb.reference}` results in this cell: no reference row, and no gaps.")
    for mr in g.rows:
        for reason in mr.reasons:
            t.notes.append(f"`{mr.method}` {reason}")
    return t


def _simple_table(g: Group, cols: list[str], caption: str, skip_ref: bool = False) -> Table:
    t = Table(caption=caption, header=["rank", "method"] + [_header(g, c) for c in cols], rows=[])
    for mr in g.rows:
        if skip_ref and mr.is_reference:
            continue
        cells = ([_cell_text(g, mr, c) for c in cols] if mr.state == "ok" else _status_cells(mr, len(cols)))
        t.rows.append((_row_kind(mr), [mr.rank_text, _method_label(mr)] + cells))
    if any(cells[2:].count("—") and kind != "failed" for kind, cells in t.rows):
        t.notes.append("— : no value (e.g. no speed-up for a method that does no counted work or runs under the "
                       "timer's resolution; no pass ratio for a method that does no pass).")
    return t


def _cell_text(g: Group, mr: MethodRow, col: str) -> str:
    s = mr.stats.get(col)
    if s is not None and s.n == 0 and _is(g.specs.get(col), "cost"):
        return "—"  # a cost left empty on purpose (declared so), not a failed measurement
    return fmt_stat(s, _fmt_kind(g, col), mr.n)


def _diag_table(g: Group) -> Table:
    t = Table(caption="Diagnostics (never ranked)", header=["method", "value name", "value", "n"], rows=[])
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
    # a code span shows "&lt;" literally, so a name with "<" in it is written as escaped plain text instead
    return "".join(f"`{p}`" if code and "<" not in p else p.replace("<", "&lt;") for code, p in _split_code(s))


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
                "<": r"\textless{}", ">": r"\textgreater{}", "≈": r"$\approx$", "χ": r"$\chi$", "²": r"$^2$",
                "α": r"$\alpha$", "θ": r"$\theta$", "√": r"$\surd$"}


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
        for c in [lb.primary] + g.score_cols + g.gap_cols + g.cost_cols + g.diag_cols + g.csv_cols:
            if c not in metric_cols and (c != lb.primary or g.has_primary):
                metric_cols.append(c)
    head = ["source", "suite", "dataset", "model", "request", "device", "method", "rank", "tied_with_best",
            "p_vs_best_holm", "status", "n", "seeds", "seeds_failed", "seeds_not_applicable", "reason", "commit",
            "device_name"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head + [x for c in metric_cols for x in (c, f"{c}.ci95", f"{c}.n")])
    for g in lb.groups:
        prov = {p.split(" ", 1)[0]: p.split(" ", 1)[1] for p in g.provenance if " " in p}
        for mr in g.rows:
            tie = mr.tie
            tied = "" if tie is None or tie.tied is None else ("yes" if tie.tied else "no")
            base = ["measured", g.suite, g.dataset, g.model, g.request, g.device, mr.method, mr.rank, tied,
                    "" if tie is None else _csv_num(tie.p_holm), mr.state, str(mr.n), " ".join(map(str, mr.seeds_ok)), " ".join(map(str, mr.seeds_failed)),
                    " ".join(map(str, mr.seeds_na)), " | ".join(mr.reasons), prov.get("commit", ""),
                    prov.get("device", "")]
            vals = []
            for c in metric_cols:
                s = mr.stats.get(c)
                vals += ["", "", ""] if s is None else [_csv_num(s.mean), _csv_num(s.ci), str(s.n)]
            w.writerow(base + vals)
            for a, note in mr.anchors:
                base = ["reported", g.suite, g.dataset, g.model, g.request, "", mr.method, "", "", "", "reported",
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
