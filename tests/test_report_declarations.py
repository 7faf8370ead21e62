"""Reports read declarations, not names: a value registered through ``register_metric`` alone lands in the
right leaderboard table and the right figures; ranks carry their uncertainty (ties with the best, mean
ranks across cells with Friedman/Nemenyi, the critical-difference figure); ``docs/metrics.md`` matches the
registry."""

from __future__ import annotations

import copy
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

import unlearnbench.attacks.base as registry
from unlearnbench.attacks import MetricResult, register_metric, value
from unlearnbench.benchmarks.commands._results import declarations, reference_methods
from unlearnbench.reports import figures as figs
from unlearnbench.reports import metrics_doc
from unlearnbench.reports.leaderboard import build, render
from unlearnbench.reports.ranking import RankBy, cell_ranks, ties_with_best

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"


@pytest.fixture
def rows():
    spec = importlib.util.spec_from_file_location("make_golden", GOLDEN / "make_golden.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.load_records()


@pytest.fixture
def scratch_registry(monkeypatch):
    """Register metrics in a copy of the registry, restored after the test (docs/metrics.md stays exact)."""
    registry._ensure_loaded()
    monkeypatch.setattr(registry, "_METRICS", dict(registry._METRICS))
    monkeypatch.setattr(registry, "_VALUES", dict(registry._VALUES))


def _lb(rows, **kw):
    return build(rows, specs=declarations(rows), references=reference_methods(), **kw)


def test_a_metric_registered_alone_is_placed_by_its_declaration(rows, scratch_registry, tmp_path):
    # a cost in a new unit and a membership score, declared through register_metric and nothing else
    @register_metric("toy.energy", produces=(value("toy.energy_j", "cost", "lower", "J", "energy the unlearn call "
                                                   "drew", gap=False, family="energy"),), description="toy energy")
    def _energy(ctx):  # pragma: no cover - the rows below carry its values
        return MetricResult({"toy.energy_j": 1.0})

    @register_metric("toy.membership", produces=(value("toy.membership_auc", "score", "closest", "AUC",
                                                       "a toy membership attack", family="membership"),),
                     description="toy membership")
    def _member(ctx):  # pragma: no cover
        return MetricResult({"toy.membership_auc": 0.5})

    rs = copy.deepcopy(rows)
    energy = {"retrain": 50.0, "original": 0.5, "golden_scaled": 2.0, "golden_sharpened": 3.0, "golden_shrunk": 4.0,
              "golden_class_only": 1.0}
    for r in rs:
        if r["status"] == "ok":
            r["toy.energy_j"] = energy[r["method"]] * (1 + 0.1 * r["seed"])
            r["toy.membership_auc"] = 0.5 + 0.05 * r["seed"] + (0.2 if r["method"] == "original" else 0.0)
            r["toy.undeclared"] = 1.0
    lb = _lb(rs)
    g = next(g for g in lb.groups if g.request == "class-1")
    assert "toy.energy_j" in g.cost_cols and "toy.energy_j" not in g.score_cols + g.gap_cols + g.diag_cols
    assert "toy.membership_auc" in g.score_cols
    # a value nothing declares still appears, as a score, with a note
    assert "toy.undeclared" in g.score_cols and lb.undeclared == ["toy.undeclared"]
    text = render(lb, "md")
    cost_table = text.split("**Cost**")[1].split("**Diagnostics")[0].split("\n\n")[1]
    assert "toy.energy_j ↓" in cost_table.splitlines()[0]
    assert "toy.membership_auc ≈" in text.split("**Scores**")[1].split("**Gaps")[0]
    assert "- `toy.energy_j` (cost, lower is better; unit J): energy the unlearn call drew." in text
    assert "Nothing declares `toy.undeclared`: shown as a score, without a direction." in text
    # figures: the membership score among the MIA bars, the cost on an axis of its own (unit J: log scale)
    assert "toy.membership_auc" in figs.membership_cols(g)
    assert "toy.energy_j" in g.cost_axes and figs.cost_scale("J") == "log"
    rep = figs.render_all(rs, {}, tmp_path, specs=declarations(rs), references=reference_methods())
    caps = {f.stem.name: f.caption for f in rep.written if f.stem.parent.name == "synthetic_mlp_class-1_cpu"}
    assert "toy.membership_auc" in caps["mia_bars"] and "toy.energy_j (J, log)" in caps["cost_pareto"]
    # CPU memory is not measured: no memory panel, and the leaderboard says why, once
    assert "peak_mem_mib" not in g.cost_axes and "peak_mem_mib" in g.nan_cols
    assert text.count("peak_mem_mib is not measured on the CPU") == 1


def test_primary_direction_comes_from_its_declaration(rows):
    # test_acc is declared higher-is-better: the highest mean ranks first
    lb = _lb(rows, primary="test_acc")
    assert lb.by.higher and lb.by.column == "test_acc"
    g = next(g for g in lb.groups if g.request == "class-1")
    ranked = [mr for mr in g.rows if mr.rank not in ("ref", "—")]
    means = [mr.stats["test_acc"].mean for mr in ranked]
    assert means == sorted(means, reverse=True)
    # a closest-to-retrain primary ranks by its gap; an explicit override wins over the declaration
    lb = _lb(rows, primary="mia.loss_auc")
    assert lb.by.column == "gap.mia.loss_auc" and not lb.by.higher
    assert _lb(rows, primary="test_acc", higher_is_better=False).by.higher is False
    # an undeclared primary ranks lower-first and says so
    assert "nothing declares" in build(rows, primary="test_acc").by.text


def _rows(values: dict[str, dict[tuple[str, int], float]], seeds=(0, 1, 2), requests=("r1",)):
    """Synthetic ok rows: values[method][(request, seed)] = avg_gap."""
    out = []
    for m, per in values.items():
        for (req, seed), v in per.items():
            out.append({"suite": "s", "dataset": "d", "model": "m", "request": req, "method": m, "seed": seed,
                        "status": "ok", "run_id": f"{m}-{req}-{seed}", "created_at": "2026", "avg_gap": v,
                        "env": {"device_type": "cpu"}, "config": {}})
    return out


def test_ties_with_the_best_paired_t_test_with_holm():
    best = {0: 0.10, 1: 0.20, 2: 0.30}
    near = {0: 0.11, 1: 0.19, 2: 0.31}  # differences +0.01, -0.01, +0.01: not significant
    worse = {0: 0.50, 1: 0.61, 2: 0.69}  # +0.40, +0.41, +0.39 on every seed: significant
    same = dict(best)
    ties = ties_with_best({"a": best, "b": near, "c": worse, "d": same}, ["a", "d", "b", "c"])
    assert ties["d"].tied and ties["d"].p == 1.0  # identical values: a tie
    assert ties["b"].tied and not ties["c"].tied
    from scipy.stats import ttest_rel
    from statsmodels.stats.multitest import multipletests

    raw = [1.0, ttest_rel(list(near.values()), list(best.values())).pvalue,
           ttest_rel(list(worse.values()), list(best.values())).pvalue]
    assert np.allclose([ties[m].p_holm for m in "dbc"], multipletests(raw, method="holm")[1])
    # through the leaderboard: the reference rows are not ranked, the tie is marked beside the rank
    rows = _rows({"retrain": {("r1", s): 0.0 for s in range(3)}, "original": {("r1", s): 0.9 for s in range(3)},
                  "a": {("r1", s): v for s, v in best.items()}, "b": {("r1", s): v for s, v in near.items()},
                  "c": {("r1", s): v for s, v in worse.items()}})
    lb = build(rows, references=("original", "retrain"))
    g = lb.groups[0]
    assert [(mr.method, mr.rank_text) for mr in g.rows] == [("retrain", "ref"), ("original", "ref"), ("a", "1"),
                                                          ("b", "2 (≈ best)"), ("c", "3")]
    text = render(lb, "md")
    assert "| 2 (≈ best) | b |" in text and "Holm" in text
    csv_text = render(lb, "csv")
    assert ",b,2,yes," in csv_text and ",c,3,no," in csv_text
    # one seed: nothing is tested, and the leaderboard says so
    one = [r for r in rows if r["seed"] == 0]
    text = render(build(one, references=("original", "retrain")), "md")
    assert "One seed per method: ranked by the value alone; ties with the best are not tested." in text
    assert "≈ best)" not in text


def test_mean_ranks_across_cells_friedman_nemenyi_and_the_cd_figure(tmp_path):
    rng = np.random.default_rng(0)
    vals: dict[str, dict[tuple[str, int], float]] = {m: {} for m in ("a", "b", "c", "d", "class_only")}
    blocks = [(req, s) for req in ("r1", "r2", "r3") for s in range(4)]
    for req, s in blocks:
        for i, m in enumerate(("a", "b", "c", "d")):
            vals[m][(req, s)] = 0.1 * i + 0.01 * rng.random()  # a < b < c < d in every block
        if req == "r1":
            vals["class_only"][(req, s)] = 0.0
    del vals["d"][("r3", 3)]  # d misses one block: that block is dropped
    rows = _rows(vals)
    by = RankBy("avg_gap", "avg_gap", False, "avg_gap")
    cr = cell_ranks(rows, by, references=("original", "retrain"), suite="s")
    assert cr.methods == ["a", "b", "c", "d"] and len(cr.blocks) == 11 and cr.total_blocks == 12
    assert cr.dropped_methods == [("class_only", 4, 12)]
    assert cr.dropped_blocks == [(("d", "m", "r3", "cpu", 3), ["d"])]
    from scipy.stats import friedmanchisquare

    assert math.isclose(cr.p, friedmanchisquare([1] * 11, [2] * 11, [3] * 11, [4] * 11).pvalue)
    assert cr.significant and cr.mean_rank == {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
    # Demšar's table: q_0.05 = 2.569 for k = 4
    assert math.isclose(cr.cd, 2.569 * math.sqrt(4 * 5 / (6 * 11)), rel_tol=1e-3)
    assert cr.differs("a", "d") and not cr.tied_with_best("d") and cr.tied_with_best("b")
    lb = build(rows)
    text = render(lb, "md")
    assert "## s: mean rank across cells" in text and "| 1 | a | 1.00 | — |" in text
    assert "Dropped (a value in too few blocks): `class_only` (4 of 12)." in text
    rep = figs.render_all(rows, {}, tmp_path)
    cd = next(f for f in rep.written if f.stem.name == "critical_difference")
    assert cd.stem.with_suffix(".png").stat().st_size > 1000
    assert "Friedman" in cd.caption and "class_only (4 of 12 blocks)" in cd.caption
    assert "d/m/r3/cpu/seed3 (no d)" in cd.caption
    # too few methods: no test, no figure, and a stated reason
    two = [r for r in rows if r["method"] in ("a", "b")]
    rep = figs.render_all(two, {}, tmp_path / "two")
    assert "critical_difference" not in {f.stem.name for f in rep.written}
    assert any("needs at least 3 methods" in s for s in rep.skipped)


def test_docs_metrics_md_matches_the_declarations():
    have = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    want = metrics_doc.render(metrics_doc.from_registry())
    assert have == want, f"docs/metrics.md differs from the declarations in the code; regenerate: {metrics_doc.COMMAND}"


def test_docs_metrics_md_lists_every_value_with_kind_and_direction():
    from unlearnbench.attacks import declared_families, declared_values

    text = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    for v in declared_values():
        line = next((x for x in text.splitlines() if x.startswith(f"| `{v.name}` |")), None)
        assert line is not None, v.name
        cells = [c.strip() for c in line.split(" | ")]
        assert cells[1] == v.kind and cells[2] == metrics_doc.DIRECTION_TEXT[v.direction], line
    for f in declared_families():
        assert f"| `{f.spec.name}` | {f.spec.kind} |" in text
    assert "| `<method>.<key>` | diagnostic |" in text and "`gap.<m> = |m(θ_u) − m(θ_r)|`" in text
    assert "Holm" in text and "Friedman" in text and "Nemenyi" in text


def test_readme_and_leaderboard_point_at_the_repositorys_own_metrics_doc(rows):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/metrics.md" in readme and "shared/docs" not in readme and "METRICS.md" not in readme
    assert "docs/metrics.md" in render(_lb(rows), "md")
