"""Ranks with their uncertainty: which methods cannot be told apart from the best in one cell, and mean
ranks across the cells of a suite with a Friedman test and a Nemenyi post-hoc (Demšar 2006).

Pure functions of run rows (``RunRecord.row()`` dicts) and the declarations of their values (a mapping
name -> :class:`unlearnbench.attacks.ValueSpec`, or any object with ``kind`` and ``direction``), handed in
by the CLI. The statistics are scipy's, statsmodels' and scikit-posthocs', not written here.

**Which value ranks, in which direction** (:func:`rank_by`): the primary score's declared direction;
``higher`` / ``lower`` rank by the value itself; ``closest`` (closest to the retrain reference) ranks
by its gap to retrain (``gap.<primary>``, lower is better) when the rows have it; ``none`` is not
ranked. An explicit override (``--higher-is-better``) wins; an undeclared primary ranks lower-first
and says so.

**Ties with the best, in one cell** (:func:`ties_with_best`): the method with the best mean is the
best; every other ranked method is compared with it on the seeds both have a value for (paired by
seed): a paired t-test on the per-seed differences (``scipy.stats.ttest_rel``), the p-values of one
cell's comparisons Holm-corrected together (``statsmodels`` ``multipletests(method="holm")``); a
method whose corrected p is at least :data:`ALPHA` cannot be told apart from the best ("≈ best").
Identical values on every common seed count as a tie (p = 1); fewer than two common seeds: not
tested.

**Across the cells of a suite** (:func:`cell_ranks`): a block is one (dataset, model, request, device,
seed) cell; within a block the ranked methods are ranked by the rank value (1 = best, ties share the
average rank). Methods missing from some blocks (class-only methods, not-applicable or failed cells):
a method is kept when it has a value in more than half of the blocks; then only the blocks where every
kept method has a value are used; what was dropped is listed. Friedman test
(``scipy.stats.friedmanchisquare``) over the kept blocks; Nemenyi post-hoc
(``scikit_posthocs.posthoc_nemenyi_friedman``) and the critical difference
``CD = q_α √(k(k+1)/(6N))`` (``q_α`` from ``scipy.stats.studentized_range`` with infinite degrees of
freedom, divided by √2). Reference rows (``original``, ``retrain``) are never ranked.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterable, Mapping, Sequence

ALPHA = 0.05

TIE_TEST = ("paired t-test over seeds (paired by seed; scipy.stats.ttest_rel) between each method and the best-mean "
            "method, Holm correction over the cell's comparisons (statsmodels multipletests), α = {alpha:g}")
CD_TEST = ("Friedman test over blocks = (dataset, model, request, device, seed) cells (scipy.stats.friedmanchisquare), "
           "Nemenyi post-hoc (scikit-posthocs posthoc_nemenyi_friedman), α = {alpha:g} (Demšar 2006)")
MISSING_RULE = ("a method is kept when it has a value in more than half of the blocks; then only blocks where every "
                "kept method has a value are used")


# ------------------------------------------------------------------------------------ rows


def method_key(row: Mapping[str, Any]) -> str:
    """The row's method as tables group it: one row per key. (Today the method name; every grouping of
    rows into methods goes through here, so that variants of one method -- e.g. tuned and default
    hyperparameters -- can become rows of their own in one place.) Rows whose hyperparameters an
    ``unlearnbench tune`` overlay set (``config.params_source == "tuned"``) are ``<method> (tuned)``: a row of
    their own beside the method's default or hand-set row."""
    cfg = row.get("config") or {}
    return f"{row['method']} (tuned)" if cfg.get("params_source") == "tuned" else str(row["method"])


def device_of(row: Mapping[str, Any]) -> str:
    env = row.get("env") or {}
    return str(env.get("device_type") or "unknown")


def num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def latest_rows(rows: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """The newest row per (suite, dataset, model, request, method key, seed, device); rows come oldest
    first (as the store returns them) and are stably sorted by ``created_at``. Returns (rows, superseded
    count)."""
    rows = sorted(rows, key=lambda r: str(r.get("created_at", "")))
    newest: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        newest[(r["suite"], r["dataset"], r["model"], r["request"], method_key(r), int(r["seed"]), device_of(r))] = r
    return list(newest.values()), len(rows) - len(newest)


def spec_lookup(specs: Mapping[str, Any] | Callable[[str], Any] | None) -> Callable[[str], Any]:
    """A name -> declaration (or None) function from a mapping, a callable, or nothing."""
    if specs is None:
        return lambda name: None
    if isinstance(specs, Mapping):
        return specs.get
    return specs


# ------------------------------------------------------------------------------------ direction


@dataclass(frozen=True)
class RankBy:
    """What ranks: ``column`` (the primary, or its gap to retrain) and whether higher is better; or
    ``column is None`` with the reason nothing is ranked."""

    primary: str
    column: str | None
    higher: bool
    text: str  # how it is ranked, for the notes
    reason: str = ""  # why not ranked

    @property
    def arrow(self) -> str:
        return "↑" if self.higher else "↓"


def rank_by(primary: str, spec: Any, names: Collection[str], higher_override: bool | None = None) -> RankBy:
    """How ``primary`` ranks, from its declaration (see the module docstring); ``names``: the value names
    the rows have."""
    if higher_override is not None:
        better = "higher" if higher_override else "lower"
        return RankBy(primary, primary, higher_override, f"`{primary}`, {better} is better (set explicitly)")
    if spec is None:
        return RankBy(primary, primary, False, f"`{primary}`, lower is better (nothing declares `{primary}`: lower "
                                               "assumed; --higher-is-better reverses it)")
    if spec.direction in ("higher", "lower"):
        return RankBy(primary, primary, spec.direction == "higher",
                      f"`{primary}`, {spec.direction} is better (its declaration)")
    gap = f"gap.{primary}"
    if spec.direction == "closest":
        if gap in names:
            return RankBy(primary, gap, False, f"`{gap}`, the distance of `{primary}` to retrain's value (lower is "
                                               f"better: `{primary}` is declared closest-to-retrain-is-better)")
        return RankBy(primary, None, False, "", f"`{primary}` is declared closest-to-retrain-is-better and the rows "
                                                f"have no `{gap}`: not ranked")
    return RankBy(primary, None, False, "", f"`{primary}` declares no direction: not ranked")


def _ordered(values: Sequence[float], higher: bool) -> list[float]:
    return [-v for v in values] if higher else list(values)


# ------------------------------------------------------------------------------------ ties in one cell


@dataclass(frozen=True)
class Tie:
    """One method compared with the best of its cell: common seeds, raw and Holm-corrected p, and the
    verdict (True: cannot be told apart from the best; False: worse; None: not tested, see ``why``)."""

    n_pairs: int
    p: float
    p_holm: float
    tied: bool | None
    why: str = ""


def _paired_p(a: Sequence[float], b: Sequence[float]) -> float:
    from scipy.stats import ttest_rel

    diffs = [x - y for x, y in zip(a, b)]
    if all(d == 0 for d in diffs):
        return 1.0  # identical on every seed: no difference to detect
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant non-zero differences: t = ±inf, p = 0
        p = float(ttest_rel(a, b).pvalue)
    return 0.0 if math.isnan(p) else p


def ties_with_best(values: Mapping[str, Mapping[int, float]], order: Sequence[str], alpha: float = ALPHA
                   ) -> dict[str, Tie]:
    """``values``: method -> {seed: rank value}; ``order``: the ranked methods, best first. Returns a
    :class:`Tie` for every method after the first (see the module docstring)."""
    if len(order) < 2:
        return {}
    best = values[order[0]]
    raw: dict[str, tuple[int, float]] = {}
    out: dict[str, Tie] = {}
    for m in order[1:]:
        seeds = sorted(s for s in values[m] if s in best and math.isfinite(values[m][s]) and math.isfinite(best[s]))
        if len(seeds) < 2:
            out[m] = Tie(len(seeds), float("nan"), float("nan"), None,
                         "one seed: not tested" if len(seeds) == 1 else "no common seed with the best")
            continue
        raw[m] = (len(seeds), _paired_p([values[m][s] for s in seeds], [best[s] for s in seeds]))
    if raw:
        from statsmodels.stats.multitest import multipletests

        names = list(raw)
        _, adj, _, _ = multipletests([raw[m][1] for m in names], alpha=alpha, method="holm")
        for m, p_adj in zip(names, adj):
            out[m] = Tie(raw[m][0], raw[m][1], float(p_adj), bool(p_adj >= alpha))
    return out


# ------------------------------------------------------------------------------------ across cells


@dataclass
class CellRanks:
    """Mean ranks of the ranked methods over the blocks of a suite (see the module docstring)."""

    suite: str
    by: RankBy
    alpha: float
    methods: list[str] = field(default_factory=list)  # kept, best mean rank first
    blocks: list[tuple] = field(default_factory=list)  # kept blocks: (dataset, model, request, device, seed)
    ranks: list[list[float]] = field(default_factory=list)  # blocks x methods (1 = best)
    mean_rank: dict[str, float] = field(default_factory=dict)
    statistic: float = float("nan")
    p: float = float("nan")
    cd: float = float("nan")
    pairwise_p: dict[tuple[str, str], float] = field(default_factory=dict)  # Nemenyi, both orders
    dropped_methods: list[tuple[str, int, int]] = field(default_factory=list)  # (method, blocks with a value, all)
    dropped_blocks: list[tuple[tuple, list[str]]] = field(default_factory=list)  # (block, kept methods missing)
    total_blocks: int = 0
    reason: str = ""  # why no test (too few methods or blocks); empty when tested

    @property
    def tested(self) -> bool:
        return not self.reason

    @property
    def significant(self) -> bool:
        return self.tested and self.p < self.alpha

    def differs(self, a: str, b: str) -> bool:
        """Whether the post-hoc tells ``a`` and ``b`` apart (False when the Friedman test does not reject)."""
        return self.significant and self.pairwise_p.get((a, b), 1.0) < self.alpha

    def tied_with_best(self, m: str) -> bool:
        return bool(self.methods) and not self.differs(m, self.methods[0])


def block_label(block: tuple) -> str:
    dataset, model, request, device, seed = block
    return f"{dataset}/{model}/{request}/{device}/seed{seed}"


def cell_ranks(rows: Iterable[dict[str, Any]], by: RankBy, references: Collection[str], suite: str = "",
               alpha: float = ALPHA) -> CellRanks:
    """Ranks of the ranked methods within every block of ``rows`` (one suite), their means, the Friedman
    test, the Nemenyi p-values and the critical difference."""
    out = CellRanks(suite=suite, by=by, alpha=alpha)
    if by.column is None:
        out.reason = by.reason
        return out
    rows, _ = latest_rows(rows)
    vals: dict[tuple, dict[str, float]] = {}
    for r in rows:
        block = (r["dataset"], r["model"], r["request"], device_of(r), int(r["seed"]))
        vals.setdefault(block, {})
        m = method_key(r)
        if r.get("status") != "ok" or m in references:
            continue
        v = num(r.get(by.column))
        if math.isfinite(v):
            vals[block][m] = v
    blocks = sorted(vals, key=lambda b: tuple(str(x) for x in b[:4]) + (b[4],))
    out.total_blocks = len(blocks)
    present: dict[str, int] = {}
    for b in blocks:
        for m in vals[b]:
            present[m] = present.get(m, 0) + 1
    kept = sorted(m for m, n in present.items() if n > len(blocks) / 2)
    out.dropped_methods = sorted((m, n, len(blocks)) for m, n in present.items() if m not in kept)
    use = []
    for b in blocks:
        missing = [m for m in kept if m not in vals[b]]
        if missing:
            out.dropped_blocks.append((b, missing))
        else:
            use.append(b)
    if len(kept) < 3 or len(use) < 2:
        out.reason = (f"{len(kept)} ranked method(s) over {len(use)} complete block(s): the Friedman test needs at "
                      "least 3 methods and 2 blocks")
        if not kept or not use:
            return out
    from scipy.stats import rankdata

    matrix = [rankdata(_ordered([vals[b][m] for m in kept], by.higher)).tolist() for b in use]
    means = {m: math.fsum(row[j] for row in matrix) / len(matrix) for j, m in enumerate(kept)}
    order = sorted(kept, key=lambda m: (means[m], m))
    idx = [kept.index(m) for m in order]
    out.methods, out.blocks, out.mean_rank = order, use, {m: means[m] for m in order}
    out.ranks = [[row[j] for j in idx] for row in matrix]
    if out.reason:
        return out
    import numpy as np
    from scipy.stats import friedmanchisquare, studentized_range

    cols = list(zip(*out.ranks))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        stat, p = friedmanchisquare(*cols)
    out.statistic, out.p = float(stat), float(p)
    if not math.isfinite(out.p):  # every block ranks every method equal
        out.reason = "every method ties with every other in every block: nothing to test"
        return out
    k, n = len(order), len(use)
    out.cd = float(studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2) * math.sqrt(k * (k + 1) / (6 * n)))
    import pandas as pd
    import scikit_posthocs as sp

    pv = sp.posthoc_nemenyi_friedman(pd.DataFrame(out.ranks, columns=order))
    out.pairwise_p = {(a, b): float(pv.loc[a, b]) for a in order for b in order}
    return out
