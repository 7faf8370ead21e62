"""Every bad input a clear error, no silent wrong result, one writer per results folder (issue #13).

Table-driven: each case is a bad suite file, argument, environment variable, data file or stored file,
and asserts the exit code (2), a one-line ``error:`` message naming what is wrong, where and the fix,
and no traceback. Then the behaviours that need more than one command: the model cache refusing bad
entries (and the rebuilt results equal the clean ones), stale temporaries cleaned, the results lock,
read-only folders, full disks, the thread count in the cell key, and no orphaned worker processes
after SIGKILL.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from unlearnbench.benchmarks.cli import main
from unlearnbench.benchmarks.lock import LOCK_NAME, results_lock
from unlearnbench.benchmarks.store import Store

BASE = """\
name = "bad"
seeds = [0]
methods = ["original", "retrain"]
[recipes.r]
epochs = 2
batch_size = 32
lr = 0.05
augment = false
[[datasets]]
name = "synthetic"
model = "mlp"
recipe = "r"
heldout = 40
[[requests]]
kind = "random"
fraction = 0.1
"""
# line numbers in BASE: 2 seeds, 3 methods, 5 epochs, 6 batch_size, 7 lr, 9 [[datasets]], 13 heldout,
# 14 [[requests]], 15 kind, 16 fraction


def _suite(tmp: Path, text: str, name: str = "s.toml") -> Path:
    p = tmp / name
    p.write_text(text)
    return p


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def assert_one_line_error(rc: int, err: str, pattern: str, code: int = 2) -> None:
    import re

    assert rc == code, f"exit {rc}, stderr: {err}"
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("error: ")]
    assert len(errors) == 1, f"want exactly one error line, got: {err!r}"
    assert re.search(pattern, errors[0]), f"{pattern!r} not in {errors[0]!r}"


# ------------------------------------------------------------------------------- suite files

def _sub(old: str, new: str):
    return lambda t: t.replace(old, new, 1)


def _add(extra: str):
    return lambda t: t + extra


SUITE_CASES = [
    # (id, edit of BASE, regex the one error line must match)
    ("budget-negative", _add("[budget]\nmax_epochs = -1\n"), r"line 18: key 'budget.max_epochs': must be a finite number > 0"),
    ("budget-zero", _add("[budget]\nmax_epochs = 0\n"), r"key 'budget.max_epochs'.*> 0"),
    ("budget-nan", _add("[budget]\nmax_epochs = nan\n"), r"key 'budget.max_epochs'.*finite"),
    ("budget-string", _add("[budget]\nmax_epochs = \"2\"\n"), r"key 'budget.max_epochs'"),
    ("budget-unknown-key", _add("[budget]\nmax_epoch = 2\n"), r"line 18: key 'budget.max_epoch': unknown key"),
    ("methods-empty", _sub('methods = ["original", "retrain"]', "methods = []"), r"line 3: key 'methods': is empty"),
    ("methods-twice", _sub('methods = ["original", "retrain"]', 'methods = ["retrain", "retrain"]'),
     r"line 3: key 'methods': names 'retrain' twice"),
    ("methods-typo", _sub('"retrain"]', '"retrian"]'), r"line 3: key 'methods'.*Did you mean 'retrain'"),
    ("datasets-duplicated", _add('[[datasets]]\nname = "synthetic"\nmodel = "mlp"\nrecipe = "r"\n'),
     r"line 17: key 'datasets': \[\[datasets\]\] entries 1 and 2 both are 'synthetic' with model 'mlp'"),
    ("class-float", _sub('kind = "random"\nfraction = 0.1', 'kind = "class"\nclass = 3.5'),
     r"line 16: key 'class'.*integer class index.*3\.5"),
    ("class-bool", _sub('kind = "random"\nfraction = 0.1', 'kind = "class"\nclass = true'), r"key 'class'"),
    ("class-negative", _sub('kind = "random"\nfraction = 0.1', 'kind = "class"\nclass = -2'), r"key 'class'.*>= 0"),
    ("indices-string", _sub('kind = "random"\nfraction = 0.1', 'kind = "points"\nindices = "1,2"'),
     r"line 16: key 'indices': .*must be a list of integers"),
    ("indices-float", _sub('kind = "random"\nfraction = 0.1', 'kind = "points"\nindices = [1.0, 2.5]'),
     r"key 'indices'.*integers >= 0.*2\.5"),
    ("indices-duplicate", _sub('kind = "random"\nfraction = 0.1', 'kind = "points"\nindices = [3, 3]'),
     r"key 'indices'.*duplicates"),
    ("fraction-out-of-range", _sub("fraction = 0.1", "fraction = 1.5"), r"line 16: key 'fraction'.*\(0, 1\)"),
    ("count-float", _sub("fraction = 0.1", "count = 2.5"), r"key 'count'.*positive integer"),
    ("request-kind-typo", _sub('kind = "random"', 'kind = "randm"'), r"line 15: key 'kind'.*Did you mean 'random'"),
    ("request-param-typo", _sub("fraction = 0.1", "fractoin = 0.1"), r"line 16: key 'fractoin'"),
    ("requests-duplicated", _add('[[requests]]\nkind = "random"\nfraction = 0.1\n'),
     r"key 'requests': two requests share the label 'random-10%'"),
    ("seed-negative", _sub("seeds = [0]", "seeds = [-1]"), r"line 2: key 'seeds': a seed must lie in \[0, 2147483647\]"),
    ("seed-huge", _sub("seeds = [0]", "seeds = [99999999999999]"), r"line 2: key 'seeds'.*\[0, 2147483647\]"),
    ("seed-float", _sub("seeds = [0]", "seeds = [1.5]"), r"key 'seeds': a seed must be an integer"),
    ("seed-twice", _sub("seeds = [0]", "seeds = [0, 0]"), r"key 'seeds': lists seed 0 twice"),
    ("seeds-empty", _sub("seeds = [0]", "seeds = []"), r"key 'seeds': must be a non-empty list"),
    ("recipe-unknown-key", _sub("lr = 0.05", "lrr = 0.05"), r"line 7: key 'recipes.r.lrr': unknown recipe key.*Did you mean 'lr'"),
    ("recipe-type", _sub("lr = 0.05", 'lr = "fast"'), r"line 7: key 'recipes.r.lr': must be float"),
    ("recipe-epochs-inf", _sub("epochs = 2", "epochs = inf"), r"line 5: key 'recipes.r.epochs': must be a finite"),
    ("recipe-batch-zero", _sub("batch_size = 32", "batch_size = 0"), r"line 6: key 'recipes.r.batch_size': must be >= 1"),
    ("recipe-batch-float", _sub("batch_size = 32", "batch_size = 32.0"), r"key 'recipes.r.batch_size': must be int"),
    ("recipe-schedule", _add("[recipes.q]\nschedule = \"fast\"\n"), r"key 'recipes.q.schedule'.*unknown"),
    ("heldout-negative", _sub("heldout = 40", "heldout = -3"), r"line 13: key 'heldout'.*integer >= 0"),
    ("heldout-float", _sub("heldout = 40", "heldout = 4.5"), r"line 13: key 'heldout'"),
    ("dataset-unknown-key", _sub("heldout = 40", "held_out = 40"), r"line 13: key 'held_out'.*Did you mean 'heldout'"),
    ("dataset-typo", _sub('name = "synthetic"', 'name = "synthetc"'), r"key 'name'.*Did you mean 'synthetic'"),
    ("model-typo", _sub('model = "mlp"', 'model = "mpl"'), r"line 11: key 'model'.*Did you mean 'mlp'"),
    ("top-key-typo", lambda t: "seed = [1]\n" + t, r"line 1: key 'seed': unknown top-level key.*Did you mean 'seeds'"),
    ("tolerance-negative", _add("[tolerances]\ntest_acc = -1\n"), r"key 'tolerances.test_acc'.*>= 0"),
    ("metrics-twice", _sub("seeds = [0]", 'seeds = [0]\nmetrics = ["accuracy", "accuracy"]'), r"key 'metrics'.*twice"),
    ("description-not-string", _sub("seeds = [0]", "seeds = [0]\ndescription = 3"), r"key 'description'"),
    ("not-toml", lambda t: "seeds = [0\n", r"not valid TOML"),
    ("method-option-negative-epochs", _add("[method_options.finetune]\nepochs = -1\n"),
     r"key 'method_options.finetune'.*epochs must lie in \(0, inf\), got -1"),
    ("method-option-momentum-1", _add("[method_options.scrub]\nmomentum = 1.0\n"),
     r"key 'method_options.scrub'.*momentum must lie in \[0, 1\), got 1.0"),
    ("method-option-inf", _add("[method_options.finetune]\nlr = inf\n"),
     r"line 18: key 'method_options.finetune.lr': must be a finite number, got inf"),
    ("model-option-nan", _sub('model = "mlp"', 'model = "mlp"\nmodel_options = { dropout = nan }'),
     r"line 12: key 'model_options.dropout': must be a finite number"),
    ("dataset-option-table", _sub('name = "synthetic"', 'name = "synthetic"\noptions = { n_train = { a = 1 } }'),
     r"key 'options.n_train': .*must be a string, number or boolean"),
    ("dataset-option-unknown", _sub('name = "synthetic"', 'name = "synthetic"\noptions = { n_trian = 100 }'),
     r"key 'options'.*has no option\(s\) \['n_trian'\]"),
]


@pytest.mark.parametrize("case,edit,pattern", SUITE_CASES, ids=[c[0] for c in SUITE_CASES])
def test_bad_suite_file(tmp_path, capsys, case, edit, pattern):
    suite = _suite(tmp_path, edit(BASE))
    rc, _, err = _run(capsys, ["run", "--suite", str(suite), "--results", str(tmp_path / "r"), "--device", "cpu",
                               "--quiet"])
    assert_one_line_error(rc, err, pattern)
    assert str(suite) in err
    assert not (tmp_path / "r" / "results.sqlite").exists(), "a bad suite must stop before the store is touched"


def test_suite_file_not_text_or_a_folder(tmp_path, capsys):
    bad = tmp_path / "bin.toml"
    bad.write_bytes(b"\x80\x81\xfe\xff" * 10)
    rc, _, err = _run(capsys, ["run", "--suite", str(bad), "--results", str(tmp_path / "r")])
    assert_one_line_error(rc, err, r"not a text \(UTF-8\) file")
    (tmp_path / "dir.toml").mkdir()
    rc, _, err = _run(capsys, ["run", "--suite", str(tmp_path / "dir.toml"), "--results", str(tmp_path / "r")])
    assert_one_line_error(rc, err, r"is a folder, not a file")


# ------------------------------------------------------------------------------- a bad cell is found before training

PREFLIGHT_CASES = [
    ("class-out-of-range", _sub('kind = "random"\nfraction = 0.1', 'kind = "class"\nclass = 7'),
     r"cell synthetic/mlp/class-7/original/seed0: request 'class': class 7 out of range \[0, 3\]"),
    ("class-name-unknown", _sub('kind = "random"\nfraction = 0.1', 'kind = "class"\nclass = "c9"'),
     r"no class named 'c9'.*Did you mean"),
    ("count-too-large", _sub("fraction = 0.1", "count = 100000"), r"count must lie in \[1, "),
    ("indices-out-of-range", _sub('kind = "random"\nfraction = 0.1', 'kind = "points"\nindices = [1, 99999]'),
     r"indices \[99999\] out of range"),
    ("model-option-unknown", _sub('model = "mlp"', 'model = "mlp"\nmodel_options = { hiden = [8] }'),
     r"model 'mlp': bad option"),
    ("model-option-value", _sub('model = "mlp"', 'model = "mlp"\nmodel_options = { hidden = [-4] }'),
     r"model 'mlp' with model_options .* cannot be built"),
    ("heldout-too-large", _sub("heldout = 40", "heldout = 100000"), r"heldout=100000 leaves no training images"),
    ("source-option-value", _sub('name = "synthetic"', 'name = "synthetic"\noptions = { n_train = -5 }'),
     r"dataset 'synthetic' \(options: n_train=-5\) cannot be loaded"),
]


@pytest.mark.parametrize("case,edit,pattern", PREFLIGHT_CASES, ids=[c[0] for c in PREFLIGHT_CASES])
def test_bad_cell_stops_before_any_training(tmp_path, capsys, case, edit, pattern):
    suite = _suite(tmp_path, edit(BASE))
    rc, out, err = _run(capsys, ["run", "--suite", str(suite), "--results", str(tmp_path / "r"), "--device", "cpu",
                                 "--quiet"])
    assert_one_line_error(rc, err, pattern)
    models = tmp_path / "r" / "cache" / "models"
    assert not models.exists() or not any(models.iterdir()), "a model was trained before the bad input was found"
    with Store(tmp_path / "r") as st:
        assert st.records(latest=False) == []


# ------------------------------------------------------------------------------- arguments and environment

def _ok_suite(tmp_path: Path) -> Path:
    return _suite(tmp_path, BASE, "ok.toml")


ARG_CASES = [
    # (id, extra argv, env, regex)
    ("seeds-empty", ["--seeds", ""], {}, r"argument --seeds: empty"),
    ("seeds-blank-item", ["--seeds", "0,,1"], {}, r"argument --seeds: .*empty item"),
    ("seeds-not-int", ["--seeds", "1,x"], {}, r"argument --seeds: takes comma-separated integers"),
    ("seeds-float", ["--seeds", "1.5"], {}, r"argument --seeds: takes comma-separated integers, got '1.5'"),
    ("seeds-negative", ["--seeds", "-1"], {}, r"argument --seeds: a seed must lie in \[0, 2147483647\]"),
    ("seeds-huge", ["--seeds", str(2**40)], {}, r"argument --seeds: a seed must lie in"),
    ("seeds-twice", ["--seeds", "1,1"], {}, r"argument --seeds: names 1 twice"),
    ("methods-empty", ["--methods", ""], {}, r"argument --methods: empty"),
    ("methods-typo", ["--methods", "retrian"], {}, r"unknown method 'retrian'.*Did you mean 'retrain'"),
    ("datasets-empty", ["--datasets", ""], {}, r"argument --datasets: empty"),
    ("datasets-typo", ["--datasets", "synthetc"], {}, r"--datasets: suite 'bad' has no dataset 'synthetc'. Did you mean 'synthetic'"),
    ("datasets-one-typo-of-two", ["--datasets", "synthetic,digts"], {}, r"no dataset 'digts'"),
    ("requests-typo", ["--requests", "random-11%"], {}, r"--requests: .* no request 'random-11%'. Did you mean 'random-10%'"),
    ("device-tpu", ["--device", "tpu"], {}, r"argument --device: unknown device 'tpu'"),
    ("executor-unknown", ["--executor", "dask"], {}, r"argument --executor: invalid choice"),
    ("threads-abc", [], {"UNLEARNBENCH_CPU_THREADS": "abc"}, r"UNLEARNBENCH_CPU_THREADS='abc' must be a positive integer"),
    ("threads-zero", [], {"UNLEARNBENCH_CPU_THREADS": "0"}, r"UNLEARNBENCH_CPU_THREADS='0' must be a positive integer"),
    ("threads-negative", [], {"UNLEARNBENCH_CPU_THREADS": "-2"}, r"UNLEARNBENCH_CPU_THREADS='-2'"),
    ("data-root-missing", ["--data-root", "/nonexistent/data"], {}, r"--data-root /nonexistent/data does not exist"),
    ("data-root-env-missing", [], {"UNLEARNBENCH_DATA_ROOT": "/nonexistent/data"},
     r"environment variable UNLEARNBENCH_DATA_ROOT /nonexistent/data does not exist"),
    ("suite-empty", ["--suite", ""], {}, r"--suite is empty"),
    ("suite-unknown", ["--suite", "defualt"], {}, r"unknown suite 'defualt'. Did you mean 'default'"),
    ("unknown-flag", ["--sedes", "1"], {}, r"unrecognized arguments: --sedes"),
]


@pytest.mark.parametrize("case,extra,env,pattern", ARG_CASES, ids=[c[0] for c in ARG_CASES])
def test_bad_argument_or_environment(tmp_path, capsys, monkeypatch, case, extra, env, pattern):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    argv = ["run", "--suite", str(_ok_suite(tmp_path)), "--results", str(tmp_path / "r"), "--device", "cpu",
            "--quiet"]
    if "--suite" in extra:
        argv = argv[:1] + argv[3:]
    rc, _, err = _run(capsys, argv + extra)
    assert_one_line_error(rc, err, pattern)
    assert not (tmp_path / "r").exists(), "nothing may be written before the inputs are checked"


def test_results_or_cache_dir_naming_a_file(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    base = ["run", "--suite", str(_ok_suite(tmp_path)), "--device", "cpu", "--quiet"]
    rc, _, err = _run(capsys, base + ["--results", str(f)])
    assert_one_line_error(rc, err, rf"--results {f} is a file, not a folder")
    rc, _, err = _run(capsys, base + ["--results", str(tmp_path / "r"), "--cache-dir", str(f)])
    assert_one_line_error(rc, err, rf"--cache-dir {f} is a file, not a folder")
    rc, _, err = _run(capsys, base + ["--results", str(f / "sub")])
    assert_one_line_error(rc, err, rf"{f} is a file, not a folder")
    for cmd in (["leaderboard"], ["figures"], ["reproduce"], ["export", "--out", str(tmp_path / "x.json")]):
        rc, _, err = _run(capsys, cmd + ["--results", str(f)])
        assert_one_line_error(rc, err, rf"{f} is a file, not a folder")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu(tmp_path, capsys):
    rc, _, err = _run(capsys, ["run", "--suite", str(_ok_suite(tmp_path)), "--results", str(tmp_path / "r"),
                               "--device", "cuda"])
    assert_one_line_error(rc, err, r"--device cuda asked for, but torch sees no CUDA GPU here: use --device cpu")


def test_executor_ray_without_ray(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if Ray were not installed
    monkeypatch.delitem(sys.modules, "unlearnbench.benchmarks.ray_executor", raising=False)
    rc, _, err = _run(capsys, ["run", "--suite", str(_ok_suite(tmp_path)), "--results", str(tmp_path / "r"),
                               "--device", "cpu", "--executor", "ray"])
    assert_one_line_error(rc, err, r"--executor ray needs Ray.*pip install 'unlearnbench\[ray\]'")


def test_unexpected_errors_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    from unlearnbench.benchmarks.commands import list as list_cmd

    def boom(args):
        raise KeyError("surprise")

    monkeypatch.setattr(list_cmd, "run", boom)
    rc, _, err = _run(capsys, ["list", "methods"])
    assert_one_line_error(rc, err, r"unexpected KeyError: 'surprise' -- this is a bug; re-run with --debug", code=1)
    with pytest.raises(KeyError):
        main(["--debug", "list", "methods"])
    with pytest.raises(KeyError):
        main(["list", "methods", "--debug"])
    from unlearnbench.errors import UserError

    with pytest.raises(UserError, match="unknown suite 'nope'"):  # --debug: user errors raise too
        main(["--debug", "run", "--suite", "nope"])


# ------------------------------------------------------------------------------- data files

def _idx(path: Path, arr: np.ndarray, gz: bool = True) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def _mnist_root(tmp: Path, n_train: int = 60, n_test: int = 20, labels_max: int = 9) -> Path:
    folder = tmp / "data" / "mnist"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    _idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (n_train, 28, 28)))
    _idx(folder / "train-labels-idx1-ubyte.gz", np.arange(n_train) % (labels_max + 1))
    _idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (n_test, 28, 28)))
    _idx(folder / "t10k-labels-idx1-ubyte.gz", np.arange(n_test) % 10)
    return tmp / "data"


def _truncate(p: Path, keep: int) -> None:
    p.write_bytes(p.read_bytes()[:keep])


DATA_CASES = [
    ("gz-truncated", lambda f: _truncate(f / "train-images-idx3-ubyte.gz", 200),
     r"train-images-idx3-ubyte.gz is not a readable gzip file .*truncated or damaged.*re-download"),
    ("gz-garbage", lambda f: (f / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all" * 20),
     r"t10k-labels-idx1-ubyte.gz is not a readable gzip file"),
    ("idx-bad-magic", lambda f: (f / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04abc")),
     r"train-labels-idx1-ubyte.gz is not an IDX file"),
    ("idx-truncated-body", lambda f: (f / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(bytes([0, 0, 8, 3]) + (60).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\0" * 100)),
     r"train-images-idx3-ubyte.gz is truncated"),
    ("labels-beyond-classes", lambda f: _idx(f / "train-labels-idx1-ubyte.gz", np.arange(60) % 13),
     r"train label 12 is not a class index in \[0, 9\]"),
    ("images-labels-swapped", lambda f: _idx(f / "train-labels-idx1-ubyte.gz", np.zeros((60, 28, 28))),
     r"are not train images \[N, H, W\] with N labels"),
]


@pytest.mark.parametrize("case,damage,pattern", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_file(tmp_path, capsys, case, damage, pattern):
    root = _mnist_root(tmp_path)
    damage(root / "mnist")
    suite = _suite(tmp_path, BASE.replace('name = "synthetic"', 'name = "mnist"').replace("heldout = 40", "heldout = 10"))
    rc, _, err = _run(capsys, ["run", "--suite", str(suite), "--results", str(tmp_path / "r"), "--device", "cpu",
                               "--quiet", "--data-root", str(root)])
    assert_one_line_error(rc, err, pattern)


# ------------------------------------------------------------------------------- stored files

@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A results folder with the two cells of BASE finished (original, retrain)."""
    d = tmp_path_factory.mktemp("finished")
    suite = _suite(d, BASE, "ok.toml")
    assert main(["run", "--suite", str(suite), "--results", str(d / "r"), "--device", "cpu", "--quiet"]) == 0
    return d


def _copy(finished: Path, tmp: Path) -> tuple[Path, Path]:
    shutil.copytree(finished / "r", tmp / "r")
    return tmp / "r", finished / "ok.toml"


def _values(results: Path) -> dict[str, dict[str, float]]:
    """The model-determined values of each method's newest record (no timings)."""
    quality = {"forget_acc", "retain_acc", "test_acc", "mia.loss_auc", "mia.svc_efficacy", "avg_gap"}
    with Store(results, readonly=True) as st:
        return {r.method: {k: v for k, v in r.metrics.items() if k in quality or k.startswith("gap.")}
                for r in st.records()}


def test_garbage_or_truncated_sqlite(tmp_path, capsys, finished):
    for case, damage in (("garbage", lambda p: p.write_bytes(b"garbage" * 500)),
                         ("truncated", lambda p: _truncate(p, 2000))):
        res = tmp_path / case
        shutil.copytree(finished / "r", res)
        for f in res.glob("results.sqlite-*"):
            f.unlink()
        damage(res / "results.sqlite")
        for argv in (["run", "--suite", str(finished / "ok.toml"), "--device", "cpu", "--quiet"], ["leaderboard"],
                     ["export", "--out", str(tmp_path / "x.json")], ["figures", "--out", str(tmp_path / "f")]):
            rc, _, err = _run(capsys, argv + ["--results", str(res)])
            assert_one_line_error(rc, err, rf"{res / 'results.sqlite'} is (not a readable results database|damaged)"
                                           r".*move it aside")


def test_foreign_sqlite_file(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    con = sqlite3.connect(tmp_path / "r" / "results.sqlite")
    con.execute("CREATE TABLE people (name TEXT)")
    con.commit()
    con.close()
    rc, _, err = _run(capsys, ["leaderboard", "--results", str(tmp_path / "r")])
    assert_one_line_error(rc, err, r"an SQLite file but not an unlearnbench results database")


def test_records_file_not_an_export(tmp_path, capsys):
    cases = [("{bad json", r"is not valid JSON"), ('{"format": "other/1"}', r"is not an `unlearnbench export` file"),
             ('{"format": "unlearnbench-records/1", "suite": "x", "rows": [{"a": 1}]}', r"is damaged"),
             ("[1, 2]", r"is not an `unlearnbench export` file")]
    for text, pattern in cases:
        f = tmp_path / "rec.json"
        f.write_text(text)
        rc, _, err = _run(capsys, ["leaderboard", "--records", str(f)])
        assert_one_line_error(rc, err, rf"--records {f} " + pattern)
    rc, _, err = _run(capsys, ["leaderboard", "--records", str(tmp_path / "none.json")])
    assert_one_line_error(rc, err, r"no such file")


def test_export_out_unwritable(tmp_path, capsys, finished):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    rc, _, err = _run(capsys, ["export", "--results", str(finished / "r"), "--out", str(blocker / "x.json")])
    assert_one_line_error(rc, err, rf"--out {blocker / 'x.json'}: {blocker} is a file, not a folder")
    rc, _, err = _run(capsys, ["export", "--results", str(finished / "r"), "--out", str(tmp_path)])
    assert_one_line_error(rc, err, r"is a folder: name the file to write")
    rc, _, err = _run(capsys, ["leaderboard", "--results", str(finished / "r"), "--out", str(tmp_path)])
    assert_one_line_error(rc, err, r"is a folder: name the file to write")


def _swap_other(models: Path, orig: Path, other: Path) -> None:
    shutil.copyfile(other, orig)
    shutil.copyfile(other.with_suffix(".json"), orig.with_suffix(".json"))


def _malicious(models: Path, orig: Path, other: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {models / 'pwned'}",))

    data = pickle.dumps(Evil())
    orig.write_bytes(data)
    meta = json.loads(orig.with_suffix(".json").read_text())  # a consistent sidecar: the hash passes
    meta["checkpoint"].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    orig.with_suffix(".json").write_text(json.dumps(meta))


def _legacy(models: Path, orig: Path, other: Path) -> None:
    meta = json.loads(orig.with_suffix(".json").read_text())
    del meta["checkpoint"]
    orig.with_suffix(".json").write_text(json.dumps(meta))


CACHE_CASES = [
    ("truncated", lambda m, o, x: _truncate(o, 1000), r"has 1000 bytes, \d+ were written"),
    ("garbage-same-size", lambda m, o, x: o.write_bytes(os.urandom(o.stat().st_size)), r"sha256 differs"),
    ("another-cells-checkpoint", lambda m, o, x: shutil.copyfile(x, o), r"sha256 differs"),
    ("another-cells-entry", _swap_other, r"sidecar names another entry"),
    ("sidecar-garbage", lambda m, o, x: o.with_suffix(".json").write_text("{nope"), r"sidecar .* is unreadable"),
    ("legacy-no-hash", _legacy, r"no content hash"),
    ("malicious-pickle", _malicious, r"does not load into the model \(UnpicklingError"),
]


@pytest.mark.parametrize("case,damage,pattern", CACHE_CASES, ids=[c[0] for c in CACHE_CASES])
def test_bad_cache_entry_is_reported_removed_and_rebuilt(tmp_path, capsys, finished, case, damage, pattern):
    res, suite = _copy(finished, tmp_path)
    models = res / "cache" / "models"
    orig = next(models.glob("original-*.pt"))
    other = next(models.glob("retrain-*.pt"))
    damage(models, orig, other)
    rc, out, err = _run(capsys, ["run", "--suite", str(suite), "--results", str(res), "--device", "cpu", "--quiet",
                                 "--force"])
    assert rc == 0, err
    assert "Traceback" not in err
    warnings = [x for x in err.splitlines() if x.startswith("warning: model cache entry")]
    assert len(warnings) == 1 and str(orig) in warnings[0] and "rebuilding it" in warnings[0], err
    import re

    assert re.search(pattern, warnings[0]), warnings[0]
    assert not (models / "pwned").exists(), "the malicious pickle ran"
    assert _values(res) == _values(finished / "r"), "the rebuilt entry gives other results than the clean one"
    meta = json.loads(orig.with_suffix(".json").read_text())  # rebuilt with a verified sidecar
    assert meta["checkpoint"]["key"] == orig.stem
    assert meta["checkpoint"]["sha256"] == hashlib.sha256(orig.read_bytes()).hexdigest()


def test_truncated_scores_file_figures_skip_it_and_draw_the_rest(tmp_path, capsys, finished):
    res, _ = _copy(finished, tmp_path)
    npz = sorted((res / "scores").glob("*.npz"))
    assert len(npz) == 2
    _truncate(npz[0], 100)
    rc, out, err = _run(capsys, ["figures", "--results", str(res), "--out", str(tmp_path / "figs")])
    assert rc == 0, err
    assert "Traceback" not in err
    assert any(str(npz[0]) in x and "unreadable" in x and x.startswith("note:") for x in err.splitlines()), err
    assert "figure(s) in" in out and not out.startswith("0 figure")


def test_stale_temporaries_are_cleaned_by_the_next_run(tmp_path, capsys, finished):
    res, suite = _copy(finished, tmp_path)
    scores, models = res / "scores", res / "cache" / "models"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [scores / ".0123abcd.tmp.npz", scores / "0123abcd.npz", models / f"original-x.pt.tmp{dead.pid}",
             models / f"original-x.json.tmp.{socket.gethostname()}.{dead.pid}"]
    live = models / f"original-y.pt.tmp.{socket.gethostname()}.{os.getpid()}"  # a live writer's: kept
    for f in [*stale, live]:
        f.write_bytes(b"partial")
    rc, out, err = _run(capsys, ["run", "--suite", str(suite), "--results", str(res), "--device", "cpu", "--quiet"])
    assert rc == 0, err
    assert "removed 4 temporary file(s)" in out and "2 already finished, 0 to run" in out
    assert not any(f.exists() for f in stale) and live.exists()
    assert len(list(scores.glob("*.npz"))) == 2


# ------------------------------------------------------------------------------- full disk

def test_full_disk_at_commit_surfaces_as_enospc(tmp_path, capsys, monkeypatch):
    from unlearnbench.benchmarks import store as store_mod

    class FullDisk:
        """A connection whose COMMIT fails as SQLite does on a full disk (and rolls back by itself)."""

        def __init__(self, conn):
            self._c = conn

        def __getattr__(self, name):
            return getattr(self._c, name)

        def execute(self, sql, *a):
            if sql == "COMMIT":
                self._c.execute("ROLLBACK")
                exc = sqlite3.OperationalError("database or disk is full")
                exc.sqlite_errorcode = 13
                raise exc
            return self._c.execute(sql, *a)

    real_write = store_mod.Store.write

    def write(self, record, scores=None):
        if not isinstance(self._conn, FullDisk):
            self._conn = FullDisk(self._conn)
        return real_write(self, record, scores)

    monkeypatch.setattr(store_mod.Store, "write", write)
    res = tmp_path / "r"
    rc, _, err = _run(capsys, ["run", "--suite", str(_ok_suite(tmp_path)), "--results", str(res), "--device", "cpu",
                               "--quiet"])
    assert_one_line_error(rc, err, rf"no space left on device .*at {res / 'results.sqlite'} \(ENOSPC\): free space "
                                   r"and re-run; finished results are kept")
    assert "cannot rollback" not in err
    monkeypatch.undo()
    with Store(res) as st:
        assert st.records(latest=False) == []
    assert list((res / "scores").iterdir()) == [], "the scores of the unstored record were left behind"


def test_full_disk_writing_scores_names_the_file(tmp_path, capsys, monkeypatch):
    import errno

    from unlearnbench.benchmarks import store as store_mod

    def savez(path, **arrays):
        Path(path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod.np, "savez_compressed", savez)
    res = tmp_path / "r"
    rc, _, err = _run(capsys, ["run", "--suite", str(_ok_suite(tmp_path)), "--results", str(res), "--device", "cpu",
                               "--quiet"])
    assert_one_line_error(rc, err, rf"no space left on device at {res / 'scores'}/\.[0-9a-f]+\.tmp\.npz \(ENOSPC\)")
    assert list((res / "scores").iterdir()) == []


# ------------------------------------------------------------------------------- one writer per results folder

def test_a_second_run_names_the_lock_holder_or_waits(tmp_path, capsys):
    res = tmp_path / "r"
    res.mkdir()
    argv = ["run", "--suite", str(_ok_suite(tmp_path)), "--results", str(res), "--device", "cpu", "--quiet"]
    with results_lock(res):
        rc, _, err = _run(capsys, argv)
        assert_one_line_error(rc, err, rf"results folder {res} is in use by process {os.getpid()} .*--wait-lock")
    with results_lock(res):
        releaser = threading.Timer(1.0, lambda: None)
        releaser.start()
    holder = {"go": threading.Event()}

    def hold():
        with results_lock(res):
            holder["go"].set()
            time.sleep(1.5)

    t = threading.Thread(target=hold)
    t.start()
    holder["go"].wait()
    t0 = time.monotonic()
    rc, out, err = _run(capsys, argv + ["--wait-lock"])
    t.join()
    assert rc == 0, err
    assert "waiting for process" in err and time.monotonic() - t0 >= 1.0
    assert "0 already finished, 2 to run" in out


def test_a_run_that_loses_the_race_by_milliseconds_still_names_the_holder(tmp_path):
    # The holder takes the flock, then writes its PID: a second run in between used to read an empty file
    # and say "another process" (seen in CI). It now gives the holder a moment to write.
    import fcntl

    from unlearnbench.benchmarks.lock import LockBusy

    res = tmp_path / "r"
    res.mkdir()
    fd = os.open(res / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        late = threading.Timer(0.3, lambda: os.pwrite(fd, json.dumps({"pid": 424242, "command": "x"}).encode(), 0))
        late.start()
        with pytest.raises(LockBusy, match="in use by process 424242 "):
            with results_lock(res):
                pass
        late.join()
    finally:
        os.close(fd)


def test_two_concurrent_runs_store_each_cell_once(tmp_path):
    suite = _suite(tmp_path, BASE.replace("seeds = [0]", "seeds = [0, 1]").replace("epochs = 2", "epochs = 30"))
    res = tmp_path / "r"
    cmd = [sys.executable, "-m", "unlearnbench.benchmarks.cli", "run", "--suite", str(suite), "--results", str(res),
           "--device", "cpu", "--quiet"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [o[1][-1000:] for o in outs]
    winner, loser = (0, 1) if procs[0].returncode == 0 else (1, 0)
    assert "Traceback" not in outs[loser][1]
    assert f"is in use by process {procs[winner].pid}" in outs[loser][1], outs[loser][1]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "4 already finished, 0 to run" in again.stdout
    con = sqlite3.connect(res / "results.sqlite")
    keys = [k for (k,) in con.execute("SELECT cell_key FROM runs")]
    assert len(keys) == 4 and len(set(keys)) == 4, "a cell was run twice"


# ------------------------------------------------------------------------------- read-only results folders

def _readonly_runner(folder: Path):
    """A function running a CLI command with ``folder`` read-only (a private read-only bind mount when root,
    else permissions), or None where neither is possible."""
    if os.geteuid() != 0:
        def run_chmod(argv: list[str]) -> subprocess.CompletedProcess:
            modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
            for p in modes:
                p.chmod(modes[p] & ~0o222)
            try:
                return subprocess.run([sys.executable, "-m", "unlearnbench.benchmarks.cli", *argv], capture_output=True,
                                      text=True, timeout=300)
            finally:
                for p, m in modes.items():
                    p.chmod(m)

        return run_chmod
    if shutil.which("unshare") is None:
        return None
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            f"mount --bind -o ro '{folder}' '{folder}'"], capture_output=True)
    if probe.returncode != 0:
        return None

    def run_unshare(argv: list[str]) -> subprocess.CompletedProcess:
        script = f"mount --bind -o ro '{folder}' '{folder}' && exec \"$@\""
        return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", sys.executable,
                               "-m", "unlearnbench.benchmarks.cli", *argv], capture_output=True, text=True, timeout=300)

    return run_unshare


def test_reports_work_on_a_read_only_folder_and_create_nothing(tmp_path, finished):
    res, suite = _copy(finished, tmp_path)
    # a record committed to the WAL but not yet checkpointed (a writer killed before closing): must be read
    code = textwrap.dedent(f"""
        import os, sqlite3
        c = sqlite3.connect({str(res / 'results.sqlite')!r}, isolation_level=None)
        c.execute("PRAGMA journal_mode=WAL"); c.execute("PRAGMA wal_autocheckpoint=0")
        row = c.execute("SELECT * FROM runs LIMIT 1").fetchone()
        c.execute("INSERT INTO runs VALUES (" + ",".join("?" * len(row)) + ")", ("walrow",) + row[1:])
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (res / "results.sqlite-wal").stat().st_size > 0
    run = _readonly_runner(res)
    if run is None:
        pytest.skip("cannot make a folder read-only here (root without mount namespaces)")
    before = sorted(p.relative_to(res) for p in res.rglob("*"))
    out = tmp_path / "out"
    r = run(["export", "--results", str(res), "--out", str(out / "x.json")])
    assert r.returncode == 0, r.stderr
    rows = json.loads((out / "x.json").read_text())["rows"]
    assert "walrow" in {row["run_id"] for row in rows} and len(rows) == 2  # newest per cell: the WAL row
    r = run(["leaderboard", "--results", str(res), "--out", str(out / "lb.md")])
    assert r.returncode == 0, r.stderr
    r = run(["figures", "--results", str(res), "--out", str(out / "figs")])
    assert r.returncode == 0, r.stderr
    r = run(["reproduce", "--results", str(res), "--suite", str(suite), "--cells", "method=original", "--reuse-cache"])
    assert r.returncode in (0, 1) and "Traceback" not in r.stderr, r.stderr  # compared, not crashed
    assert "cell(s)" in r.stdout
    r = run(["run", "--suite", str(suite), "--results", str(res), "--device", "cpu", "--quiet"])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ") and ("(EROFS)" in r.stderr or "(EACCES)" in r.stderr), r.stderr
    assert sorted(p.relative_to(res) for p in res.rglob("*")) == before, "a reader created files in the folder"


# ------------------------------------------------------------------------------- the cell key

def test_cpu_thread_count_is_part_of_the_cell_key(tmp_path, capsys, monkeypatch, finished):
    res, suite = _copy(finished, tmp_path)
    argv = ["run", "--suite", str(suite), "--results", str(res), "--device", "cpu", "--quiet"]
    monkeypatch.setenv("UNLEARNBENCH_CPU_THREADS", "2")
    rc, out, err = _run(capsys, argv)
    assert rc == 0, err
    assert "0 already finished, 2 to run" in out, "cells finished with 1 thread were taken as finished with 2"
    monkeypatch.setenv("UNLEARNBENCH_CPU_THREADS", "1")
    rc, out, _ = _run(capsys, argv)
    assert "2 already finished, 0 to run" in out
    with Store(res) as st:
        recs = st.records(latest=False)
    assert sorted(r.env["cpu_threads"] for r in recs) == [1, 1, 2, 2]
    assert len({r.cell_key for r in recs}) == 4


def test_default_thread_count_keeps_existing_cell_keys():
    from unlearnbench.benchmarks.suite import parse_suite

    import tomllib

    cell = parse_suite(tomllib.loads(BASE)).cells()[0]
    assert cell.key("cpu") == cell.key("cpu", 1)  # records stored before the change keep their keys
    assert cell.key("cpu", 2) != cell.key("cpu", 1)
    assert cell.key("cuda", 2) == cell.key("cuda")  # CPU threads do not change GPU results


# ------------------------------------------------------------------------------- no orphaned workers

def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(d.name))
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_lp_pool_workers_die_with_a_killed_parent(tmp_path):
    script = tmp_path / "pool.py"
    script.write_text(textwrap.dedent("""
        import time
        from unlearnbench.methods import _prune_lp as lp

        def slow(job):
            time.sleep(120)
            return job

        lp.run_jobs(slow, [{}] * 16, workers=2, min_jobs_per_worker=1)
    """))
    parent = subprocess.Popen([sys.executable, str(script)])
    try:
        deadline = time.time() + 60
        kids: list[int] = []
        while time.time() < deadline and len(kids) < 2:
            time.sleep(0.1)
            kids = _children(parent.pid)
        assert len(kids) >= 2, "the pool did not start"
        time.sleep(0.5)  # let the workers run their initializer
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 10
        alive = kids
        while time.time() < deadline and alive:
            time.sleep(0.1)
            alive = [k for k in kids if Path(f"/proc/{k}").exists() and
                     (Path(f"/proc/{k}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z")]
        assert not alive, f"orphaned LP workers {alive} outlived their SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        for k in _children(parent.pid):
            with __import__("contextlib").suppress(OSError):
                os.kill(k, signal.SIGKILL)


def test_report_primary_typo_names_close_values(tmp_path, capsys, finished):
    for cmd in (["leaderboard"], ["figures", "--out", str(tmp_path / "f")]):
        rc, _, err = _run(capsys, cmd + ["--results", str(finished / "r"), "--primary", "avg_gapp"])
        assert_one_line_error(rc, err, r"--primary 'avg_gapp' is not a value of the stored runs. Did you mean 'avg_gap'")
