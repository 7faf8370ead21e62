"""Harness, cache keys, results store, suites and CLI: the foundation's guarantees."""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from unlearnbench.benchmarks.cli import main
from unlearnbench.benchmarks.harness import RunContext, prepare_cell, run_cell
from unlearnbench.benchmarks.store import RunRecord, Store, StoreError, open_store
from unlearnbench.benchmarks.suite import SuiteError, load_suite, parse_suite
from unlearnbench.methods import MethodError, create_method

from .helpers import tiny_suite

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------- cache keys

def _keys(suite, tmp):
    ctx = RunContext(results_dir=tmp, device=torch.device("cpu"))
    cell = suite.cells()[0]
    cd = prepare_cell(cell, ctx)
    return cd.original_key, cd.reference_key, cell.key("cpu")


def test_cache_keys_change_when_and_only_when_inputs_change(tmp_path):
    base = _keys(tiny_suite(), tmp_path)
    assert base == _keys(tiny_suite(), tmp_path)
    # a different method or suite name: same original and reference models, different cell
    other = _keys(tiny_suite(methods=["retrain"], name="other"), tmp_path)
    assert other[:2] == base[:2] and other[2] != base[2]
    # a label is presentation only
    lab = _keys(tiny_suite(requests=[{"kind": "random", "fraction": 0.1, "label": "r10"}]), tmp_path)
    assert lab == base
    # the seed changes everything
    s1 = _keys(tiny_suite(seeds=[1]), tmp_path)
    assert s1[0] != base[0] and s1[1] != base[1] and s1[2] != base[2]
    # the recipe changes both models
    r = _keys(tiny_suite(recipe={"epochs": 9, "batch_size": 32, "lr": 0.05, "augment": False}), tmp_path)
    assert r[0] != base[0] and r[1] != base[1]
    # another forget set: same original, different reference
    q = _keys(tiny_suite(requests=[{"kind": "random", "fraction": 0.2}]), tmp_path)
    assert q[0] == base[0] and q[1] != base[1]
    # a different architecture option changes both
    ds = {"name": "synthetic", "model": "mlp", "recipe": "tiny", "model_options": {"hidden": [16], "head_hidden": [16]}}
    m = _keys(tiny_suite(dataset=ds), tmp_path)
    assert m[0] != base[0] and m[1] != base[1]
    # a method hyperparameter changes the cell, not the models
    h1 = _keys(tiny_suite(methods=["retrain"]), tmp_path)
    assert h1[:2] == base[:2]


def test_original_is_cached_and_reused(tmp_path):
    suite = tiny_suite(methods=["original", "retrain"])
    ctx = RunContext(results_dir=tmp_path, device=torch.device("cpu"))
    recs = [run_cell(c, ctx)[0] for c in suite.cells()]
    assert all(r.status == "ok" for r in recs)
    files = sorted(p.name for p in (tmp_path / "cache" / "models").glob("*.pt"))
    assert len(files) == 2 and files[0].startswith("original-") and files[1].startswith("retrain-")
    # a fresh context (a new process) loads the same models: identical metrics
    ctx2 = RunContext(results_dir=tmp_path, device=torch.device("cpu"))
    again = run_cell(suite.cells()[1], ctx2)[0]
    assert again.metrics["test_acc"] == recs[1].metrics["test_acc"]
    assert again.metrics["cell.original_s"] < recs[0].metrics["cell.original_s"] + 1.0


def test_run_cell_record_contents(tmp_path):
    suite = tiny_suite(methods=["original", "retrain"], requests=[{"kind": "class", "class": 1}])
    ctx = RunContext(results_dir=tmp_path, device=torch.device("cpu"))
    orig, scores = run_cell(suite.cells()[0], ctx)
    retr, _ = run_cell(suite.cells()[1], ctx)
    m = orig.metrics
    for name in ("retain_acc", "forget_acc", "test_acc", "UA", "mia.loss_auc", "mia.svc_efficacy", "gap.forget_acc",
                 "avg_gap", "time_s", "peak_mem_mib", "extra_params", "extra_bytes", "test_acc_forgotten_class",
                 "test_acc_rest", "speedup_vs_retrain"):
        assert name in m and isinstance(m[name], float), name
    assert retr.metrics["avg_gap"] == 0.0 and retr.metrics["forget_acc"] == 0.0
    assert retr.metrics["time_s"] == retr.metrics["retrain_time_s"] > 0
    assert m["gap.forget_acc"] == pytest.approx(abs(m["forget_acc"] - retr.metrics["forget_acc"]))
    assert m["extra_params"] == 0.0
    assert orig.hashes["forget"] and orig.hashes["original_model"].startswith("original-")
    assert orig.env["git_commit"] and orig.env["device_type"] == "cpu" and orig.env["torch"] == torch.__version__
    assert "mia.loss_auc.scores" in scores and scores["mia.loss_auc.scores"].shape == scores["mia.loss_auc.labels"].shape


# ------------------------------------------------------------------------------- store

def _record(key="k1", **metrics):
    return RunRecord(cell_key=key, suite="s", dataset="d", model="m", request="r", method="x", seed=0, status="ok",
                     config={"a": 1}, config_hash=key, hashes={}, env={}, metrics=metrics)


def test_store_round_trip_nan_and_latest(tmp_path):
    with Store(tmp_path) as st:
        st.write(_record(acc=0.5, auc=float("nan")), {"s": np.arange(3)})
        time.sleep(1.1)
        st.write(_record(acc=0.7))
        recs = st.records()
        assert len(recs) == 1 and recs[0].metrics["acc"] == 0.7  # newest row per cell
        old = [r for r in st.records(latest=False) if r.metrics["acc"] == 0.5][0]
        assert math.isnan(old.metrics["auc"])
        assert st.scores(old)["s"].tolist() == [0, 1, 2]
        assert st.finished_keys("s") == {"k1"} and st.finished_keys("other") == set()
    con = sqlite3.connect(tmp_path / "results.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT typeof(value) FROM metrics WHERE name='acc'").fetchone()[0] == "real"


def test_open_store_without_results_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="Run a suite first"):
        open_store(tmp_path / "nothing", must_exist=True)


def _write_suite(path: Path, methods: str, seeds: str) -> Path:
    path.write_text(f"""
name = "killtest"
seeds = {seeds}
methods = {methods}
[recipes.r]
epochs = 40
batch_size = 16
lr = 0.05
augment = false
[[datasets]]
name = "synthetic"
model = "mlp"
recipe = "r"
[[requests]]
kind = "random"
fraction = 0.1
""")
    return path


def test_sigkill_mid_suite_loses_nothing_and_redoes_nothing(tmp_path):
    suite = _write_suite(tmp_path / "s.toml", '["original", "retrain"]', "[0, 1, 2, 3, 4, 5]")
    results = tmp_path / "res"
    cmd = [sys.executable, "-m", "unlearnbench.benchmarks.cli", "run", "--suite", str(suite), "--results",
           str(results), "--quiet", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = results / "results.sqlite"
    deadline = time.time() + 120
    n = 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                n = sqlite3.connect(db).execute("SELECT count(*) FROM runs").fetchone()[0]
            except sqlite3.OperationalError:
                n = 0
            if n >= 3:
                break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    con = sqlite3.connect(db)
    before = dict(con.execute("SELECT run_id, cell_key FROM runs").fetchall())
    assert 3 <= len(before) < 12
    # every stored row is complete: its metrics are there and its scores file exists
    for run_id in before:
        assert con.execute("SELECT count(*) FROM metrics WHERE run_id=?", (run_id,)).fetchone()[0] > 10
        sf = con.execute("SELECT scores_file FROM runs WHERE run_id=?", (run_id,)).fetchone()[0]
        assert (results / sf).is_file()
    con.close()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"{len(before)} already finished" in out.stdout
    con = sqlite3.connect(db)
    after = con.execute("SELECT run_id, cell_key FROM runs").fetchall()
    keys = [k for _, k in after]
    assert len(after) == 12 and len(set(keys)) == 12, "a cell was lost or stored twice"
    assert set(before) <= {r for r, _ in after}, "a finished run was redone or lost"


# ------------------------------------------------------------------------------- suites and bad input

def test_datasets_selects_by_label_before_name():
    # baselines has full MNIST (label "mnist") and a 1,000-image subset (name "mnist", label "mnist-sub1k").
    suite = load_suite("baselines")

    def labels(names):
        return sorted({c.dataset.spec.display for c in suite.cells(methods=["retrain"], seeds=[0], datasets=names)})

    assert labels(["mnist"]) == ["mnist"]
    assert labels(["mnist-sub1k"]) == ["mnist-sub1k"]
    assert labels(["mnist", "mnist-sub1k"]) == ["mnist", "mnist-sub1k"]
    assert labels(["digits"]) == ["digits"]


def test_builtin_default_suite_parses_with_every_method():
    from unlearnbench.methods import method_names

    s = load_suite("default")
    assert s.name == "default" and s.seeds == (0, 1, 2)
    assert set(s.methods) == set(method_names())
    assert len(s.cells()) == 2 * 3 * len(method_names())


@pytest.mark.parametrize("text,match", [
    ("name = \"x\"\nseeds = [0]\nbogus = 1\n", r"line 3: key 'bogus'"),
    ("seeds = 0\n", r"line 1: key 'seeds'"),
    ("seeds = [0\n", "not valid TOML"),
    ("""seeds = [0]
methods = ["retrian"]
[recipes.r]
epochs = 1
[[datasets]]
name = "digits"
model = "mlp"
recipe = "r"
[[requests]]
kind = "random"
fraction = 0.1
""", r"line 2: key 'methods'.*Did you mean 'retrain'"),
    ("""seeds = [0]
[recipes.r]
epochs = 1
lr = "fast"
[[datasets]]
name = "digits"
model = "mlp"
recipe = "r"
[[requests]]
kind = "random"
fraction = 0.1
""", r"line 4: key 'recipes.r.lr'.*must be float"),
    ("""seeds = [0]
[recipes.r]
epochs = 1
[[datasets]]
name = "digits"
model = "mlp"
recipe = "q"
[[requests]]
kind = "random"
fraction = 0.1
""", r"line 7: key 'recipe'.*no \[recipes.q\]"),
    ("""seeds = [0]
[recipes.r]
epochs = 1
[[datasets]]
name = "digits"
model = "mlp"
recipe = "r"
[[requests]]
kind = "random"
fractoin = 0.1
""", r"line 10: key 'fractoin'"),
])
def test_malformed_suite_names_key_and_line(tmp_path, text, match):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(SuiteError, match=match):
        load_suite(str(p))


def test_unknown_method_and_hyperparameter_errors():
    with pytest.raises(MethodError, match="Did you mean 'retrain'"):
        create_method("retrian")
    with pytest.raises(MethodError, match="has no hyperparameter"):
        create_method("original", {"lr": 0.1})


def test_cli_errors_exit_2_with_one_line(tmp_path, capsys):
    assert main(["run", "--suite", "nope", "--results", str(tmp_path)]) == 2
    assert "unknown suite 'nope'" in capsys.readouterr().err
    assert main(["run", "--methods", "retrian", "--results", str(tmp_path)]) == 2
    assert "Did you mean 'retrain'" in capsys.readouterr().err


def test_cli_list(capsys):
    for what in ("methods", "datasets", "requests", "metrics", "suites"):
        assert main(["list", what]) == 0
    out = capsys.readouterr().out
    assert "retrain" in out and "digits" in out and "mia.loss_auc" in out and "default" in out


def test_cli_run_then_skip(tmp_path, capsys):
    suite = _write_suite(tmp_path / "s.toml", '["original", "retrain"]', "[0]")
    args = ["run", "--suite", str(suite), "--results", str(tmp_path / "r"), "--quiet", "--device", "cpu"]
    assert main(args) == 0
    assert "0 already finished, 2 to run" in capsys.readouterr().out
    assert main(args) == 0
    assert "2 already finished, 0 to run" in capsys.readouterr().out
    assert main(args + ["--force"]) == 0
    with Store(tmp_path / "r") as st:
        assert len(st.records(latest=False)) == 4 and len(st.records()) == 2


def test_gpu_only_datasets_are_skipped_with_reason_on_cpu(tmp_path, capsys):
    s = tmp_path / "g.toml"
    s.write_text(_write_suite(tmp_path / "tmp.toml", '["original"]', "[0]").read_text().replace(
        'recipe = "r"', 'recipe = "r"\nrequires = "cuda"'))
    args = ["run", "--suite", str(s), "--results", str(tmp_path / "r"), "--quiet", "--device", "cpu"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "needs a CUDA GPU" in out and "--allow-cpu" in out and "0 to run, 1 skipped" in out
    assert main(args + ["--allow-cpu"]) == 0  # the same cell, run on the CPU when asked
    out = capsys.readouterr().out
    assert "1 to run" in out and "skipped" not in out
    with Store(tmp_path / "r") as st:
        assert [r.status for r in st.records()] == ["ok"]


def test_threaded_scoring_gives_the_sequential_results(tmp_path):
    """The executor's overlapped path (scoring on worker threads) changes no value and keeps cell order."""
    from unlearnbench.benchmarks.executors import run_inprocess

    suite = tiny_suite(methods=["original", "retrain"], seeds=[0, 1],
                       requests=[{"kind": "random", "fraction": 0.1}, {"kind": "class", "class": 0}])
    cells = suite.cells()
    out = {}
    for threads in (0, 2):
        got = []
        ctx = RunContext(results_dir=tmp_path / f"t{threads}", device=torch.device("cpu"))
        run_inprocess(cells, ctx, lambda rec, sc: got.append((rec, sc)), score_threads=threads)
        out[threads] = got
    assert [r.cell_key for r, _ in out[0]] == [c.key("cpu") for c in cells] == [r.cell_key for r, _ in out[2]]
    timing = ("time_s", "peak_mem_mib", "speedup_vs_retrain", "original_train_time_s", "retrain_time_s")
    for (a, sa), (b, sb) in zip(out[0], out[2]):
        va = {k: repr(v) for k, v in a.metrics.items() if k not in timing and not k.startswith("cell.")}
        vb = {k: repr(v) for k, v in b.metrics.items() if k not in timing and not k.startswith("cell.")}
        assert va == vb  # repr: NaN equals NaN
        assert sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)


def test_a_diverged_method_is_recorded_as_failed_with_a_plain_reason(tmp_path, monkeypatch):
    from unlearnbench.methods.reference import Original

    def nan_model(self, request):
        with torch.no_grad():
            for p in request.model.parameters():
                p.fill_(float("nan"))
        return request.model

    monkeypatch.setattr(Original, "unlearn", nan_model)
    suite = tiny_suite(methods=["original"])
    rec, scores = run_cell(suite.cells()[0], RunContext(results_dir=tmp_path, device=torch.device("cpu")))
    assert rec.status == "failed" and "not finite" in rec.reason and "diverged" in rec.reason and scores == {}
