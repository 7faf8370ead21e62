"""``unlearnbench tune``: search ranges, validation cells that never touch the evaluated forget sets or the
test split, the compute cap, the objectives, resuming a SIGKILLed study, overlays and their records."""

from __future__ import annotations

import dataclasses
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from unlearnbench.benchmarks.cli import main
from unlearnbench.benchmarks.harness import RunContext, prepare_cell
from unlearnbench.benchmarks.store import Store
from unlearnbench.benchmarks.suite import SuiteError, apply_tuned, load_suite
from unlearnbench.benchmarks.tune import (PENALTY, VALIDATION_SEED_BASE, TuneError, heldout_halves, load_overlay,
                                          prepare_validation, read_overlay_file, retrain_free_score, run_on_cell,
                                          run_study, validation_cells, write_overlay)
from unlearnbench.methods import create_method, method_class, search_space
from unlearnbench.methods.cost import WorkLimitExceeded, count_work

from .helpers import tiny_suite

BASELINES = ("finetune", "gradient_ascent", "neggrad_plus", "random_label", "salun", "l1_sparse", "scrub",
             "bad_teacher", "boundary_shrink", "boundary_expand", "unsir", "fisher", "ssd")

DS = {"name": "synthetic", "model": "mlp", "recipe": "tiny", "options": {"classes": 6, "n_train": 300},
      "model_options": {"hidden": [32], "head_hidden": [16]}}
REQUESTS = [{"kind": "random", "fraction": 0.1}, {"kind": "class"}]


def _suite(**kw):
    return tiny_suite(methods=kw.pop("methods", ["original", "retrain", "finetune", "ssd"]), requests=REQUESTS,
                      seeds=[0, 1, 2], dataset=DS, **kw)


def _suite_file(path: Path, methods: str = '["original", "retrain", "finetune"]', epochs: int = 8) -> Path:
    path.write_text(f"""
name = "tunetest"
seeds = [0, 1, 2]
methods = {methods}
[recipes.tiny]
epochs = {epochs}
batch_size = 32
lr = 0.05
augment = false
[[datasets]]
name = "synthetic"
model = "mlp"
recipe = "tiny"
options = {{ classes = 6, n_train = 300 }}
model_options = {{ hidden = [32], head_hidden = [16] }}
[[requests]]
kind = "random"
fraction = 0.1
[[requests]]
kind = "class"
""")
    return path


# ------------------------------------------------------------------------------ search ranges


@pytest.mark.parametrize("name", BASELINES)
def test_every_baseline_declares_search_ranges_around_its_defaults(name):
    cls = method_class(name)
    space = search_space(cls)
    assert space, f"{name} declares no search range"
    defaults = create_method(name).hyperparameters()
    for field, s in space.items():
        assert s.contains(defaults[field]), (name, field)
        if s.kind != "categorical":  # a range, not a point: tuning can move both ways from the paper's value
            assert s.low < s.high


def test_list_methods_shows_search_ranges(capsys):
    assert main(["list", "methods", "--verbose"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "search [0.001, 0.5] log" in out.replace("[search", "search [").replace("search [ ", "search [") or \
        "[0.001, 0.5] log" in out


# ------------------------------------------------------------------------------ validation cells


class TrippedTestSplit(BaseException):
    """Raised by the poisoned test split: a BaseException, so no `except Exception` can hide it."""


class _Poison:
    def __getattr__(self, name):
        raise TrippedTestSplit(f"the test split was read ({name})")

    def __len__(self):
        raise TrippedTestSplit("the test split was read (len)")


def test_validation_cells_are_disjoint_from_evaluated_cells_and_never_read_test_data(tmp_path, monkeypatch):
    suite = _suite()
    ctx = RunContext(results_dir=tmp_path, device=torch.device("cpu"))
    evaluated, class_idx = {}, set()
    for c in suite.cells(methods=["finetune"]):
        cd = prepare_cell(c, ctx)
        evaluated.setdefault(c.request.kind, set()).add(cd.split.hashes["forget"])
        if c.request.kind == "class":
            evaluated.setdefault("classes", set()).add(cd.split.forget_class)
            class_idx |= set(cd.split.forget_idx.tolist())

    real = RunContext.device_data

    def poisoned(self, splits):  # the test split every cell would see is replaced by a tripwire
        d = dict(real(self, splits))
        d["test"] = _Poison()
        return d

    monkeypatch.setattr(RunContext, "device_data", poisoned)
    ctx = RunContext(results_dir=tmp_path, device=torch.device("cpu"))
    with pytest.raises(TrippedTestSplit):  # the tripwire works: an evaluated cell's scoring reads the test split
        len(prepare_cell(suite.cells()[0], ctx).test)
    for req in suite.requests:
        specs = validation_cells(suite, suite.datasets[0], req, "finetune", 2, ctx)
        assert [s.seed for s in specs] == [VALIDATION_SEED_BASE, VALIDATION_SEED_BASE + 1]
        assert not {s.seed for s in specs} & set(suite.seeds)
        vcs = [prepare_validation(s, ctx) for s in specs]
        hashes = {vc.forget_hash for vc in vcs}
        assert not hashes & evaluated[req.kind], "a validation forget set is an evaluated one"
        if req.kind == "class":
            classes = {vc.cd.split.forget_class for vc in vcs}
            assert not classes & evaluated["classes"], "a validation cell forgets an evaluated class"
            for vc in vcs:  # another class: disjoint as index sets, not only as hashes
                assert not set(vc.cd.split.forget_idx.tolist()) & class_idx
        # the scoring half and the method half partition the held-out split
        full = len(vcs[0].cd.test) + len(vcs[0].cd.heldout)
        score_idx, method_idx = heldout_halves(prepare_cell(specs[0], ctx).heldout)
        assert len(score_idx) + len(method_idx) == full
        assert not set(score_idx.tolist()) & set(method_idx.tolist())
        # whole studies run on these cells without touching the test split (a read raises TrippedTestSplit)
        res = run_study(suite=suite, dataset=suite.datasets[0], request=req, method="finetune", cells=vcs, ctx=ctx,
                        n_trials=4, cap=0.5)
        assert res.trials.get("fail", 0) == 0
        assert res.provenance["validation_forget_hashes"] == [vc.forget_hash for vc in vcs]


def test_validation_class_cells_avoid_a_fixed_class(tmp_path):
    suite = tiny_suite(methods=["finetune"], requests=[{"kind": "class", "class": 2}], seeds=[0, 1], dataset=DS)
    ctx = RunContext(results_dir=tmp_path, device=torch.device("cpu"))
    specs = validation_cells(suite, suite.datasets[0], suite.requests[0], "finetune", 3, ctx)
    classes = [s.request.params["class"] for s in specs]
    assert 2 not in classes and len(set(classes)) == 3


def test_suite_seeds_in_the_validation_range_are_refused(tmp_path):
    suite = tiny_suite(methods=["finetune"], requests=REQUESTS, seeds=[VALIDATION_SEED_BASE], dataset=DS)
    ctx = RunContext(results_dir=tmp_path, device=torch.device("cpu"))
    with pytest.raises(TuneError, match="validation"):
        validation_cells(suite, suite.datasets[0], suite.requests[0], "finetune", 1, ctx)


# ------------------------------------------------------------------------------ cap and scores


def test_count_work_limit_stops_at_the_first_forward_beyond_it():
    from unlearnbench.methods.models import build_model

    model = build_model("mlp", (1, 8, 8), 4, [0.5], [0.25], hidden=[8], head_hidden=[8])
    x = torch.rand(10, 1, 8, 8)
    with count_work(limit=25) as wc:
        model(x)
        model(x).sum().backward()  # 20 fwd + 10 bwd after this forward? the forward is checked first
        assert wc.fwd == 20
        with pytest.raises(WorkLimitExceeded) as err:
            model(x)  # 20 + 10 + 10 = 40 > 25
    assert err.value.passes == 40 and err.value.limit == 25
    with count_work(limit=None) as wc:  # no limit: counts only
        for _ in range(5):
            model(x)
    assert wc.fwd == 50


def test_a_trial_over_the_compute_cap_is_capped_and_within_it_is_scored(tmp_path):
    suite = _suite()
    ctx = RunContext(results_dir=tmp_path, device=torch.device("cpu"))
    req = suite.requests[0]
    (vc,) = [prepare_validation(s, ctx) for s in validation_cells(suite, suite.datasets[0], req, "finetune", 1, ctx)]
    # finetune for 10 retain epochs = 2 x 10 x |retain| passes; retrain = 2 x 8 x |retain|: over a cap of 0.5
    out = run_on_cell("finetune", {"epochs": 10.0}, vc, ctx, "retrain-gap", 0.5)
    assert out.status == "capped" and out.value == PENALTY
    assert out.info["passes"] > out.info["limit"] == int(0.5 * vc.retrain_passes)
    # 2 epochs: within it, scored, and the pass count is exact (2 epochs x |retain| x fwd+bwd)
    ok = run_on_cell("finetune", {"epochs": 2.0, "lr": 0.05, "batch_size": 32}, vc, ctx, "retrain-gap", 0.5)
    assert ok.status == "ok"
    assert ok.info["passes"] == 2 * 2 * len(vc.cd.retain)
    assert 0.0 <= ok.value <= 1.0 and ok.value == pytest.approx(ok.info["avg_gap"])
    free = run_on_cell("finetune", {"epochs": 2.0, "lr": 0.05, "batch_size": 32}, vc, ctx, "retrain-free", 0.5)
    assert free.value == pytest.approx(free.info["retrain_free"])


def test_a_study_whose_every_trial_goes_over_the_cap_writes_nothing(tmp_path):
    suite = _suite()
    ctx = RunContext(results_dir=tmp_path, device=torch.device("cpu"))
    req = suite.requests[0]
    vcs = [prepare_validation(s, ctx) for s in validation_cells(suite, suite.datasets[0], req, "finetune", 1, ctx)]
    res = run_study(suite=suite, dataset=suite.datasets[0], request=req, method="finetune", cells=vcs, ctx=ctx,
                    n_trials=3, cap=1e-6)
    assert res.best_params == {} and res.trials == {"pruned": 3}


def test_retrain_free_score_formula():
    orig = {"retain_acc": 1.0, "test_acc": 0.9, "test_acc_rest": 0.92}
    # random request: forget accuracy should sit at the model's own held-out accuracy, loss AUC at 0.5
    v = {"forget_acc": 0.95, "retain_acc": 0.98, "test_acc": 0.85, "mia.loss_auc": 0.6}
    assert retrain_free_score(v, orig, "random") == pytest.approx((0.10 + 0.02 + 0.05 + 0.10) / 4)
    # class request: forget accuracy should be 0; test accuracy compared on the other classes
    v = {"forget_acc": 0.2, "retain_acc": 1.0, "test_acc": 0.7, "test_acc_rest": 0.90, "mia.loss_auc": 0.5}
    assert retrain_free_score(v, orig, "class") == pytest.approx((0.2 + 0.0 + 0.02 + 0.0) / 4)


# ------------------------------------------------------------------------------ resume after SIGKILL


def _trials(db: Path) -> dict[int, tuple[str, float | None, str]]:
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT t.number, t.state, v.value, t.trial_id FROM trials t LEFT JOIN trial_values v "
                           "ON v.trial_id = t.trial_id").fetchall()
        params = {}
        for tid, name, value in con.execute("SELECT trial_id, param_name, param_value FROM trial_params"):
            params.setdefault(tid, {})[name] = value
    finally:
        con.close()
    return {n: (state, value, json.dumps(params.get(tid, {}), sort_keys=True)) for n, state, value, tid in rows}


def test_a_sigkilled_study_resumes_and_keeps_every_finished_trial(tmp_path):
    suite = _suite_file(tmp_path / "s.toml", epochs=30)
    results = tmp_path / "res"
    cmd = [sys.executable, "-m", "unlearnbench.benchmarks.cli", "tune", "--suite", str(suite), "--results",
           str(results), "--methods", "finetune", "--requests", "random-10%", "--trials", "12", "--device", "cpu",
           "--validation-cells", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = results / "tune.sqlite"
    deadline = time.time() + 240
    done = 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                now = _trials(db)
            except sqlite3.OperationalError:
                now = {}
            done = sum(1 for s, _, _ in now.values() if s in ("COMPLETE", "PRUNED"))
            mid_trial = any(s == "RUNNING" and len(json.loads(p)) == 3 for s, _, p in now.values())
            if done >= 3 and (mid_trial or done >= 8):  # kill inside a trial that has chosen its values
                break
        time.sleep(0.02)
    assert proc.poll() is None, f"the study ended before it could be killed: {proc.stderr.read().decode()[-800:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _trials(db)
    finished = {n: t for n, t in before.items() if t[0] in ("COMPLETE", "PRUNED")}
    running = {n: t for n, t in before.items() if t[0] == "RUNNING"}
    assert 3 <= len(finished) < 12
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    after = _trials(db)
    for n, t in finished.items():  # every finished trial kept as it was: state, value and values tried
        assert after[n] == t, f"trial {n} changed on resume"
    assert sum(1 for s, _, _ in after.values() if s in ("COMPLETE", "PRUNED")) == 12
    for n, t in running.items():  # the trial the kill interrupted is failed and re-run with its values
        assert after[n][0] == "FAIL"
        if len(json.loads(t[2])) == 3:  # (a kill before the sampler chose all its values leaves nothing to re-run)
            assert any(s in ("COMPLETE", "PRUNED") and p == t[2] for m, (s, _, p) in after.items() if m > n)
    overlay = read_overlay_file(results / "tuned-tunetest.toml")
    (entry,) = overlay["tuned"]
    assert entry["study"]["trials"] == 12 and entry["method"] == "finetune"


# ------------------------------------------------------------------------------ overlays and records


def test_tune_then_run_tuned_records_provenance_beside_untuned_records(tmp_path, capsys):
    suite_path = _suite_file(tmp_path / "s.toml", methods='["original", "retrain", "finetune", "ssd"]')
    res = tmp_path / "res"
    overlay = tmp_path / "tuned.toml"
    assert main(["tune", "--suite", str(suite_path), "--results", str(res), "--methods", "finetune,ssd", "--trials", "5",
                 "--device", "cpu", "--out", str(overlay), "--quiet"]) == 0
    data = read_overlay_file(overlay)
    assert {(e["request"], e["method"]) for e in data["tuned"]} == {
        (r, m) for r in ("random-10%", "class") for m in ("finetune", "ssd")}
    for e in data["tuned"]:
        s = e["study"]
        assert s["objective"] == "retrain-gap" and s["trials"] == 5 and s["cap"] == 0.5
        k = 4 if e["request"] == "class" else 2  # class requests: 4 validation classes by default
        assert s["validation_seeds"] == [VALIDATION_SEED_BASE + i for i in range(k)]
        if s["default_value"] == s["default_value"]:  # the defaults are trial 0 (NaN: it went over the cap)
            assert s["best_value"] <= s["default_value"] + 1e-12
        assert set(e["params"]) == set(search_space(method_class(e["method"])))
    common = ["--suite", str(suite_path), "--results", str(res), "--device", "cpu", "--quiet"]
    assert main(["run", *common]) == 0
    assert main(["run", *common, "--tuned", str(overlay)]) == 0
    with Store(res, readonly=True) as store:
        recs = store.records(suite="tunetest")
    by_source: dict[str, list] = {}
    for r in recs:
        by_source.setdefault(r.config["params_source"], []).append(r)
    assert {r.method for r in by_source["tuned"]} == {"finetune", "ssd"} and len(by_source["tuned"]) == 12
    assert {r.method for r in by_source["default"]} == {"original", "retrain", "finetune", "ssd"}
    for r in by_source["tuned"]:
        entry = next(e for e in data["tuned"] if (e["request"], e["method"]) == (r.request, r.method))
        assert r.config["tuning"]["study"] == entry["study"]["study"]
        assert r.config["tuning"]["overlay"] == overlay.name
        for k, v in entry["params"].items():
            assert r.config["method_params"][k] == v
    # the leaderboard shows the tuned rows beside the untuned ones, with the study in the provenance
    from unlearnbench.reports.leaderboard import build, render

    lb = build([r.row() for r in recs])
    for g in lb.groups:
        names = [mr.method for mr in g.rows]
        assert {"finetune", "finetune (tuned)", "ssd", "ssd (tuned)", "retrain"} <= set(names), names
        assert any("ssd (tuned): values chosen by study tunetest/" in item for item in g.provenance)
    assert "| finetune (tuned) |" in render(lb, "md")
    # the records reproduce: their configs rebuild cells with the stored keys
    from unlearnbench.benchmarks.suite import CellSpec

    for r in recs:
        assert CellSpec.from_config(r.config, r.suite).key("cpu") == r.cell_key


def test_hand_set_cells_say_so_and_keep_their_keys():
    suite = tiny_suite(methods=["finetune"], method_options={"finetune": {"lr": 0.05}})
    (cell,) = suite.cells()
    assert cell.config()["params_source"] == "hand-set"
    plain = dataclasses.replace(cell, params_source="default")
    assert plain.key("cpu") == cell.key("cpu")  # provenance is not an input
    tuned = dataclasses.replace(cell, params_source="tuned", tuning={"study": "s"})
    assert tuned.key("cpu") != cell.key("cpu")  # a tuned cell is a cell of its own


def test_overlay_errors_name_the_problem(tmp_path):
    suite = load_suite(str(_suite_file(tmp_path / "s.toml")))
    path = tmp_path / "o.toml"
    from unlearnbench.benchmarks.tune import StudyResult

    def result(method="finetune", params=None, dataset="synthetic"):
        return StudyResult((dataset, "mlp", "class", method), "n", params or {"lr": 0.1}, 0.1, 3, 0.2, {}, 1.0, 1.0,
                           {"study": "n", "validation_seeds": [VALIDATION_SEED_BASE]}, [])

    write_overlay(path, "tunetest", [result()])
    entries = load_overlay(path, suite)
    cells = apply_tuned(suite.cells(methods=["finetune"], requests=["class"]), entries)
    assert all(c.params_source == "tuned" and c.method_params["lr"] == 0.1 for c in cells)
    with pytest.raises(SuiteError, match="validation seed"):
        apply_tuned(suite.cells(methods=["finetune"], requests=["class"], seeds=[VALIDATION_SEED_BASE]), entries)
    with pytest.raises(TuneError, match="overlay of suite 'tunetest'"):
        write_overlay(path, "othersuite", [result()])
    write_overlay(tmp_path / "bad.toml", "tunetest", [result(method="ssd", params={"alpha": 1.0})])
    with pytest.raises(TuneError, match="method 'ssd' is not in suite"):
        load_overlay(tmp_path / "bad.toml", suite)
    write_overlay(tmp_path / "bad1.toml", "tunetest", [result(params={"lr": "fast"})])
    with pytest.raises(TuneError, match="lr must be float"):
        load_overlay(tmp_path / "bad1.toml", suite)
    write_overlay(tmp_path / "bad2.toml", "tunetest", [result(dataset="digits")])
    with pytest.raises(TuneError, match="no dataset 'digits'"):
        load_overlay(tmp_path / "bad2.toml", suite)
    (tmp_path / "junk.toml").write_text("format = 'x'\n")
    with pytest.raises(TuneError, match="not an `unlearnbench tune` overlay"):
        load_overlay(tmp_path / "junk.toml", suite)
    assert main(["run", "--suite", str(tmp_path / "s.toml"), "--results", str(tmp_path / "r"), "--tuned",
                 str(tmp_path / "missing.toml")]) == 2


def test_second_trial_is_the_recipe_anchor():
    """After the defaults, a new study tries the defaults with the lr and batch size of the recipe that trained
    the original model (clipped into the ranges; the nearest categorical value)."""
    from unlearnbench.benchmarks.tune import recipe_anchor
    from unlearnbench.methods import Recipe

    space = search_space(method_class("finetune"))
    defaults = {k: create_method("finetune").hyperparameters()[k] for k in space}
    anchor = recipe_anchor(defaults, space, Recipe(lr=0.05, batch_size=60))
    assert anchor == {**defaults, "lr": 0.05, "batch_size": 64}
    clipped = recipe_anchor(defaults, space, Recipe(lr=5.0, batch_size=1000))
    assert clipped["lr"] == space["lr"].high and clipped["batch_size"] == 256
    ssd_space = search_space(method_class("ssd"))  # no lr/batch_size searched: nothing to anchor
    ssd_defaults = {k: create_method("ssd").hyperparameters()[k] for k in ssd_space}
    assert recipe_anchor(ssd_defaults, ssd_space, Recipe()) == ssd_defaults
