"""Reports: leaderboard (golden text from stored records), reproduce (pure logic and end to end on a tiny
CPU run, including a hand-edited store), figures (render, non-empty, byte-identical twice), and the
clear error every report command gives when there are no results yet.

Golden fixtures: ``tests/golden/records.json`` (records of a real tiny run) and the texts rendered
from them; regenerate with ``python tests/golden/make_golden.py`` (``--text-only`` after an intended
format change)."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import random
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from unlearnbench.benchmarks.cli import main
from unlearnbench.benchmarks.commands._results import declarations, reference_methods
from unlearnbench.benchmarks.store import RunRecord, Store
from unlearnbench.reports import figures as figs
from unlearnbench.reports.anchors import ANCHORS, normalise
from unlearnbench.reports.leaderboard import Stat, fmt_stat, render, strip_date
from unlearnbench.reports.leaderboard import build as _build
from unlearnbench.reports.reproduce import (BUILTIN, ReproduceError, Tolerances, compare, diff_table,
                                            load_tolerance_file, parse_cell_filter, select_rows, summary)

GOLDEN = Path(__file__).resolve().parent / "golden"


def build(rows, **kw):
    """The leaderboard as the CLI builds it: with the declarations of the rows' values and the reference methods."""
    return _build(rows, specs=declarations(rows), references=reference_methods(), **kw)


def _golden_module():
    spec = importlib.util.spec_from_file_location("make_golden", GOLDEN / "make_golden.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def golden():
    return _golden_module()


@pytest.fixture(scope="module")
def rows(golden):
    return golden.load_records()


def _store_from_rows(rows, path: Path) -> None:
    fields = set(RunRecord.__dataclass_fields__) - {"metrics"}
    ident = set(RunRecord.__dataclass_fields__)
    with Store(path) as store:
        for r in rows:
            kw = {k: v for k, v in r.items() if k in fields}
            kw.setdefault("cell_key", f"{r['run_id']}")
            kw.setdefault("config_hash", kw["cell_key"])
            kw.setdefault("hashes", {})
            metrics = {k: float(v) for k, v in r.items() if k not in ident}
            store.write(RunRecord(metrics=metrics, **kw))


# ------------------------------------------------------------------------------------ leaderboard


def test_leaderboard_matches_golden_text(golden, rows):
    texts = golden.render_texts(rows)
    for name, text in texts.items():
        want = (GOLDEN / name).read_text(encoding="utf-8")
        assert text == want, f"{name} differs from the golden file; if intended: python tests/golden/make_golden.py " \
                             "--text-only"


def test_leaderboard_cli_reproduces_golden_from_a_store(golden, rows, tmp_path, capsys):
    _store_from_rows(rows, tmp_path / "res")
    out = tmp_path / "lb.md"
    assert main(["leaderboard", "--results", str(tmp_path / "res"), "--out", str(out),
                 "--generated-at", golden.GENERATED_AT]) == 0
    assert out.read_text(encoding="utf-8") == (GOLDEN / "leaderboard.md").read_text(encoding="utf-8")
    assert main(["leaderboard", "--results", str(tmp_path / "res"), "--format", "csv"]) == 0
    assert capsys.readouterr().out == (GOLDEN / "leaderboard.csv").read_text(encoding="utf-8")


def test_leaderboard_deterministic_except_date_line(rows):
    shuffled = copy.deepcopy(rows)
    random.Random(0).shuffle(shuffled)
    for fmt in ("md", "html", "tex", "csv"):
        a = render(build(rows, generated_at="2026-01-01 00:00:00 UTC"), fmt)
        b = render(build(shuffled, generated_at="2027-12-31 23:59:59 UTC"), fmt)
        if fmt == "csv":
            assert a == b
            continue
        assert a != b
        diff = [(x, y) for x, y in zip(a.split("\n"), b.split("\n")) if x != y]
        assert len(diff) == 1 and "2026-01-01" in diff[0][0], diff
        assert strip_date(a) == strip_date(b)


def test_leaderboard_content(rows):
    lb = build(rows)
    text = render(lb, "md")
    rnd = next(g for g in lb.groups if g.request == "random-10%")
    methods = [mr.method for mr in rnd.rows]
    # the reference rows first, never ranked: retrain (the target of every gap), then the no-op original
    assert methods[:2] == ["retrain", "original"] and [mr.rank for mr in rnd.rows[:2]] == ["ref", "ref"]
    assert "| ref | **original (reference)** |" in text and "| ref | **retrain (reference)** |" in text
    # ranked by avg_gap, lower first; n/a and failed rows kept, at the end
    ranked = [mr for mr in rnd.rows if mr.rank not in ("ref", "—")]
    gaps = [mr.stats["avg_gap"].mean for mr in ranked]
    assert gaps == sorted(gaps) and len(ranked) == 3 and ranked[0].rank == "1"
    assert [mr.state for mr in rnd.rows[-2:]] == ["not_applicable", "failed"]
    assert "| — | golden_class_only | 0 (+2 n/a) | not applicable |" in text
    assert "`golden_fail` failed: RuntimeError: deliberate failure" in text
    # ties with the best are tested and marked (two seeds: paired t-test, Holm)
    assert ranked[0].tie is None and all(mr.tie is not None and mr.tie.n_pairs == 2 for mr in ranked[1:])
    assert "paired t-test over seeds" in text and "Holm" in text
    assert any("(≈ best)" in line for line in text.splitlines() if line.startswith("| 2 (≈ best) |")) or \
        all(not mr.tie.tied for mr in ranked[1:])
    # class-request columns only where they exist; definitions name every registered value shown
    cls = next(g for g in lb.groups if g.request == "class-1")
    assert "test_acc_forgotten_class" in cls.score_cols and "test_acc_forgotten_class" not in rnd.score_cols
    assert "mia.loss_auc" in text and "## Definitions" in text
    defs = text.split("## Definitions")[1]
    assert "- `retain_acc` (score, higher is better; unit fraction): accuracy on the retain set D_r." in defs
    assert "- `time_s` (cost, lower is better; unit s)" in defs and "gap.&lt;m> (gap, lower is better" in defs
    # placed by declaration: costs in the Cost table, CSV-only values named, the reference's own cost not shown
    assert {"time_s", "passes_fwd", "flops"} <= set(cls.cost_cols) and "retrain_passes" in cls.csv_cols
    assert "retrain_passes" not in text.split("## Definitions")[0].split("In the CSV output only")[0]
    # the mean ranks across cells, with the Friedman test
    assert "## golden: mean rank across cells" in text and "Friedman χ² = " in text
    assert "Dropped (a value in too few blocks): `golden_class_only` (2 of 4)." in text
    # provenance of the runs; the docs named are the repository's own
    assert "commit " in text and "device cpu" in text and "torch " in text and "runs made " in text
    assert "docs/metrics.md" in text and "METRICS.md" not in text


def test_stat_is_a_t_interval():
    from scipy import stats

    s = Stat.of([1.0, 2.0, 4.0, float("nan")])
    mean, sd = np.mean([1, 2, 4]), np.std([1, 2, 4], ddof=1)
    assert s.n == 3 and s.n_nan == 1 and math.isclose(s.mean, mean)
    assert math.isclose(s.ci, stats.t.ppf(0.975, 2) * sd / math.sqrt(3))
    assert fmt_stat(Stat.of([0.5])) == "0.500 (n=1)"
    assert fmt_stat(Stat.of([float("nan")])) == "nan"
    assert fmt_stat(Stat.of([1.0, 1.0]), row_n=3) == "1.000 ± 0.000 (n=2)"


def test_html_is_self_contained_and_escapes_names(rows):
    evil = copy.deepcopy(rows)
    for r in evil:
        if r["method"] == "golden_scaled":
            r["method"] = "<script>alert('x')</script>&"
    text = render(build(evil), "html")
    assert "<script" not in text and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;" in text
    assert "<style>" in text and "http" not in text and "src=" not in text
    tex = render(build(evil), "tex")
    assert r"\textless{}script\textgreater{}" in tex and r"mia.loss\_auc" in tex
    md = render(build(evil), "md")
    assert "<script" not in md


def _as_cifar(rows, kind_params=("random", {"fraction": 0.1})):
    out = copy.deepcopy(rows)
    for r in out:
        r["config"]["dataset"]["name"] = "cifar10-jpeg"
        r["dataset"] = "cifar10-jpeg"
        r["model"] = "resnet18"
    return out


def test_anchor_shown_beside_matching_cell_only(rows):
    lb = build(_as_cifar(rows))
    text = render(lb, "md")
    rnd = next(g for g in lb.groups if g.request == "random-10%")
    ref = rnd.rows[0]
    assert ref.method == "retrain" and len(ref.anchors) == 1
    anchor, note = ref.anchors[0]
    assert note == "reported on CIFAR-10 (original pixels)"
    assert math.isclose(anchor.values["forget_acc"][0], 1 - 0.0481)
    assert "↳ reported [1]" in text and "0.952 ± 0.003" in text and "reported on CIFAR-10 (original pixels)" in text
    # class-1 is not the reported 'truck' (9) setting; the digits run has no anchor at all
    cls = next(g for g in lb.groups if g.request == "class-1")
    assert all(not mr.anchors for mr in cls.rows)
    assert "reported" not in render(build(rows), "md").split("## Definitions")[0]
    # a class drawn by each seed (no class parameter) shows the 'truck' anchor, saying so
    drawn = _as_cifar(rows)
    for r in drawn:
        if r["request"] == "class-1":
            r["config"]["request"]["params"] = {}
            r["request"] = "class"
    cls = next(g for g in build(drawn).groups if g.request == "class")
    assert [(a.setting, note) for mr in cls.rows for a, note in mr.anchors] == [
        ("class 'truck' (9)", "reported on CIFAR-10 (original pixels); ours: the class each seed draws")]
    assert normalise("NegGrad+") == normalise("neggrad_plus")
    assert all(a.values for a in ANCHORS)


def test_columns_nan_everywhere_are_listed_not_shown(rows):
    rs = copy.deepcopy(rows)
    for r in rs:
        if r["status"] == "ok":
            r["backdoor.asr"] = float("nan")
    lb = build(rs)
    g = lb.groups[0]
    assert "backdoor.asr" in g.nan_cols and "backdoor.asr" not in g.score_cols
    assert "Not defined for this request (NaN in every run; gaps likewise): `backdoor.asr`" in render(lb, "md")


# ------------------------------------------------------------------------------------ reproduce (pure)


def test_tolerances_precedence():
    tol = Tolerances.merge({"default": 1e-6, "time_s": math.inf, "mia.*": 0.01},
                           {"mia.loss_auc": 0.05, "cell.total_s": 1.0})
    assert tol("mia.loss_auc") == 0.05  # exact beats glob, later layer wins
    assert tol("mia.svc_efficacy") == 0.01
    assert tol("cell.total_s") == 1.0 and tol("cell.prepare_s") == math.inf  # builtin glob
    assert tol("retrain_time_s") == math.inf and tol("test_acc") == 1e-6
    assert Tolerances.merge()("test_acc") == 1e-6 and set(BUILTIN) <= set(Tolerances.merge().table)
    assert load_tolerance_file("[tolerances]\ndefault = 0.02\n\"mia.*\" = inf\n") == {"default": 0.02,
                                                                                    "mia.*": math.inf}
    assert load_tolerance_file("test_acc = 0.1\n") == {"test_acc": 0.1}
    with pytest.raises(ReproduceError, match="non-negative"):
        load_tolerance_file("test_acc = -1\n")


def test_cell_filter_syntax(rows):
    pick = lambda f: sorted({(r["method"], r["request"]) for r in select_rows(rows, f)})  # noqa: E731
    assert pick(["method=retrain,request=class-1"]) == [("retrain", "class-1")]
    assert pick(["method=original|retrain,request=random*"]) == [("original", "random-10%"),
                                                                 ("retrain", "random-10%")]
    assert pick(["synthetic/mlp/class-1/golden_sc*/seed1"]) == [("golden_scaled", "class-1")]
    assert pick(["method=retrain", "method=original,request=class-1"]) == [
        ("original", "class-1"), ("retrain", "class-1"), ("retrain", "random-10%")]
    assert len(select_rows(rows, None)) == len(rows)
    assert select_rows(rows, ["device=cuda"]) == []
    with pytest.raises(ReproduceError, match="unknown key 'methd'"):
        parse_cell_filter("methd=retrain")


def test_compare_reports_cell_and_metric():
    tol = Tolerances.merge({"default": 1e-6})
    stored = {"status": "ok", "test_acc": 0.5, "mia.loss_auc": float("nan"), "time_s": 1.0, "gone": 1.0}
    rerun = {"status": "ok", "test_acc": 0.5 + 1e-3, "mia.loss_auc": float("nan"), "time_s": 9.0, "new": 2.0}
    diffs = compare("d/m/r/meth/seed0", stored, rerun, tol)
    verdict = {d.metric: d.verdict for d in diffs}
    assert verdict == {"status": "ok", "test_acc": "mismatch", "mia.loss_auc": "ok", "time_s": "not compared",
                       "gone": "mismatch", "new": "new"}
    table = diff_table(diffs)
    assert "d/m/r/meth/seed0" in table and "test_acc" in table and "MISMATCH" in table and "time_s" not in table
    text, passed = summary(diffs)
    assert not passed and "2 MISMATCH(ES) in 1 cell(s)" in text
    bad = compare("c", {"status": "ok"}, {"status": "failed", "reason": "RuntimeError: boom\ntrace"}, tol)
    assert bad[0].failed and "boom" in bad[0].rerun
    assert summary(compare("c", {"status": "ok", "a": 1.0}, {"status": "ok", "a": 1.0}, tol))[1]


# ------------------------------------------------------------------------------------ end to end on a tiny run

TINY = """
name = "tinyrep"
seeds = [0]
methods = ["original", "retrain"]
metrics = ["accuracy", "mia.loss_auc", "mia.svc_efficacy"]

[recipes.tiny]
epochs = 4
batch_size = 32
lr = 0.05
augment = false

[[datasets]]
name = "synthetic"
model = "mlp"
recipe = "tiny"
model_options = { hidden = [32], head_hidden = [16] }

[[requests]]
kind = "random"
fraction = 0.1

[[requests]]
kind = "class"
class = 1

[tolerances]
default = 1e-6
"""


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    d = tmp_path_factory.mktemp("tinyrep")
    (d / "tinyrep.toml").write_text(TINY)
    rc = main(["run", "--suite", str(d / "tinyrep.toml"), "--results", str(d / "res"), "--quiet", "--device", "cpu"])
    if rc != 0:
        with Store(d / "res") as store:
            failed = [f"{r.method}/{r.request}: {r.reason}" for r in store.records() if r.status == "failed"]
        pytest.fail(f"the tiny run exited {rc}: {failed}")
    return d


def test_reproduce_passes_then_fails_on_a_hand_edited_metric(tiny_results, capsys):
    res = str(tiny_results / "res")
    suite = str(tiny_results / "tinyrep.toml")
    db = tiny_results / "res" / "results.sqlite"
    before = db.read_bytes()
    assert main(["reproduce", "--suite", suite, "--results", res]) == 0
    out = capsys.readouterr().out
    assert "4 cell(s)" in out and "all reproduced" in out
    assert db.read_bytes() == before, "reproduce wrote into the store"
    with Store(tiny_results / "res") as store:
        rec = next(r for r in store.records() if r.method == "original" and r.request == "class-1")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE metrics SET value = value - 0.125 WHERE run_id = ? AND name = 'test_acc'", (rec.run_id,))
    rc = main(["reproduce", "--suite", suite, "--results", res, "--cells", "request=class-1,method=original",
               "--reuse-cache"])
    out = capsys.readouterr().out
    assert rc == 1
    line = next(x for x in out.splitlines() if "MISMATCH" in x and "test_acc" in x.split())
    assert "synthetic/mlp/class-1/original/seed0" in line and "0.125" in line
    assert "1 MISMATCH(ES) in 1 cell(s)" in out


def test_reproduce_usage_errors(tiny_results, tmp_path, capsys):
    res = str(tiny_results / "res")
    assert main(["reproduce", "--results", res, "--cells", "method=nothing*"]) == 2
    assert "no stored cells match" in capsys.readouterr().err
    (tmp_path / "t.toml").write_text("default = 'loose'\n")
    assert main(["reproduce", "--results", res, "--tolerance", str(tmp_path / "t.toml")]) == 2
    assert "non-negative number" in capsys.readouterr().err


def test_reproduce_refuses_a_missing_device(tiny_results, tmp_path, capsys, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the missing-device path cannot be exercised")
    with Store(tiny_results / "res") as store:
        recs = store.records()
    rows = [r.row() for r in recs[:1]]
    rows[0]["env"] = {**rows[0]["env"], "device_type": "cuda", "device_name": "NVIDIA H100 80GB HBM3"}
    rows[0]["cell_key"] = "k"
    _store_from_rows(rows, tmp_path / "res")
    assert main(["reproduce", "--results", str(tmp_path / "res")]) == 2
    err = capsys.readouterr().err
    assert "recorded on 'cuda'" in err and "--device cpu" in err


def test_figures_render_nonempty_and_deterministic(tiny_results, tmp_path, capsys):
    res = str(tiny_results / "res")
    assert main(["figures", "--results", res, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "no value declares a before-unlearning counterpart" in err
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    stems = {str(p.with_suffix("")) for p in files}
    for group in ("synthetic_mlp_random-10pct_cpu", "synthetic_mlp_class-1_cpu"):
        for fig in ("forget_vs_test", "mia_bars", "cost_pareto", "roc_mia.loss_auc"):
            assert f"{group}/{fig}" in stems, (group, fig, stems)
            assert {f"{group}/{fig}.{ext}" for ext in ("png", "pdf", "txt")} <= {str(p) for p in files}
    assert "synthetic_mlp_class-1_cpu/class_accuracy" in stems
    assert "synthetic_mlp_random-10pct_cpu/class_accuracy" not in stems
    for p in files:
        assert (tmp_path / "a" / p).stat().st_size > (1000 if p.suffix in (".png", ".pdf") else 50), p
    cap = (tmp_path / "a" / "synthetic_mlp_class-1_cpu" / "class_accuracy.txt").read_text()
    assert "forgotten class" in cap and "Provenance" in cap
    # a second render (of the class group, in this process) gives the same bytes: PNG and PDF carry no date
    with Store(tiny_results / "res") as store:
        recs = [r for r in store.records() if r.request == "class-1"]
        scores = {r.run_id: store.scores(r) for r in recs}
    from unlearnbench.benchmarks.commands.figures import _load_splits

    splits = _load_splits(recs[0].config["dataset"], None, [])
    assert len(splits.test.y) == len(next(iter(scores.values()))["test_correct"])
    info = figs.ClassInfo(splits.test.y.numpy(), tuple(splits.classes), {r.run_id: 1 for r in recs})
    rs = [r.row() for r in recs]
    figs.render_all(rs, scores, tmp_path / "b", specs=declarations(rs), references=reference_methods(),
                    class_info=lambda g: info)
    again = sorted((tmp_path / "b").rglob("*.*"))
    assert len([p for p in again if p.suffix in (".png", ".pdf")]) == 10
    for p in again:
        first = tmp_path / "a" / p.relative_to(tmp_path / "b")
        assert p.read_bytes() == first.read_bytes(), f"{p.name} differs between two renders"


def test_before_after_figure_and_roc_sources(rows, tmp_path):
    rs = [r for r in copy.deepcopy(rows) if r["request"] == "class-1"]
    for r in rs:
        if r["status"] == "ok":
            r["backdoor.asr"] = 0.1 if r["method"] == "retrain" else 0.6
            r["backdoor.asr_original"] = 0.95
    rep = figs.render_all(rs, {}, tmp_path, specs=declarations(rs), references=reference_methods())
    names = {f.stem.name for f in rep.written}
    # backdoor.asr declares its before-unlearning counterpart; the counterpart (a diagnostic) gets no figure
    assert "before_after_backdoor.asr" in names and "before_after_backdoor.asr_original" not in names
    cap = next(f.caption for f in rep.written if f.stem.name == "before_after_backdoor.asr")
    assert "before unlearning (backdoor.asr_original)" in cap and "Lower is better" in cap
    assert any("test labels unavailable" in s for s in rep.skipped)  # class request, no labels given
    # without declarations nothing says what backdoor.asr is: no before/after figure
    bare = figs.render_all(rs, {}, tmp_path / "bare")
    assert "before_after_backdoor.asr" not in {f.stem.name for f in bare.written}
    # ROC sources are the arrays a value's declaration names, where the run stored them
    lb = build(rs)
    g = lb.groups[0]
    y = np.r_[np.ones(5, np.int8), np.zeros(5, np.int8)]
    arrays = {"mia.loss_auc.labels": y, "mia.loss_auc.scores": np.arange(10.0)}
    assert figs.roc_sources(g, arrays) == {"mia.loss_auc": ("mia.loss_auc.labels", "mia.loss_auc.scores")}
    assert figs.roc_sources(g, {"mia.loss_auc.labels": y}) == {}


@pytest.mark.parametrize("command", ["leaderboard", "reproduce", "figures"])
def test_commands_say_there_are_no_results(command, tmp_path, capsys):
    assert main([command, "--results", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "no results in" in err and "unlearnbench run" in err
    assert not (tmp_path / "nothing").exists()


@pytest.mark.gpu
def test_reproduce_on_cuda_within_statistical_tolerance(tmp_path, capsys):
    """On CUDA a re-run is not bit-exact (bf16 autocast, TF32, cudnn.benchmark); it must land within a
    statistical tolerance, and the command must run it on the GPU it was recorded on."""
    (tmp_path / "s.toml").write_text(TINY.replace('name = "tinyrep"', 'name = "tinygpu"'))
    res = str(tmp_path / "res")
    assert main(["run", "--suite", str(tmp_path / "s.toml"), "--results", res, "--quiet", "--device", "cuda"]) == 0
    (tmp_path / "tol.toml").write_text("default = 0.1\n")
    assert main(["reproduce", "--results", res, "--tolerance", str(tmp_path / "tol.toml"), "--show", "all"]) == 0
    out = capsys.readouterr().out
    assert "4 cell(s)" in out and "all reproduced" in out


def test_exported_records_rebuild_the_same_leaderboard(tiny_results, tmp_path, capsys):
    """What a published leaderboard commits (an `export` JSON) regenerates it byte-for-byte."""
    res, suite = str(tiny_results / "res"), str(tiny_results / "tinyrep.toml")
    rec = tmp_path / "records.json"
    assert main(["export", "--suite", suite, "--results", res, "--out", str(rec)]) == 0
    for fmt in ("md", "csv"):
        a, b = tmp_path / f"a.{fmt}", tmp_path / f"b.{fmt}"
        assert main(["leaderboard", "--suite", suite, "--results", res, "--out", str(a), "--generated-at", "T"]) == 0
        assert main(["leaderboard", "--suite", suite, "--records", str(rec), "--out", str(b),
                     "--generated-at", "T"]) == 0
        assert a.read_bytes() == b.read_bytes() and len(a.read_bytes()) > 200
    import json

    rows = json.loads(rec.read_text())["rows"]
    assert len(rows) == 4 and all("config" in r and "test_acc" in r for r in rows)


def test_exported_failure_reasons_carry_no_machine_paths():
    from pathlib import Path

    import unlearnbench.benchmarks.harness as harness
    from unlearnbench.benchmarks.commands.export import portable_reason

    here = Path(harness.__file__).resolve()
    text = (f'Traceback (most recent call last):\n  File "{here}", line 470, in start_cell\n'
            f'  File "/opt/x/lib/python3.11/site-packages/sklearn/metrics/_ranking.py", line 710, in f\n'
            f'  File "/somewhere/else/script.py", line 1\nValueError: Input contains NaN.')
    out = portable_reason(text)
    assert 'File "unlearnbench/benchmarks/harness.py", line 470' in out
    assert 'File "<site-packages>/sklearn/metrics/_ranking.py"' in out and 'File "script.py"' in out
    assert str(here.parent) not in out and "/opt/" not in out and "/somewhere/" not in out
    assert out.endswith("ValueError: Input contains NaN.")
