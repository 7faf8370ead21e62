"""The example plug-in (``examples/eu_k_plugin``) installed the way the README says, into a temporary
virtual environment: pip installs it (``--no-deps --no-build-isolation -e``: the machine that runs the
tests may have no package index), ``unlearnbench list methods`` shows it with its distribution,
``unlearnbench check-method eu_k`` passes, its suite runs, and after ``pip uninstall`` the built-ins,
the stored results and the suites keep working.

The environment: ``python -m venv --without-pip`` plus one ``.pth`` line that adds this interpreter's
site-packages (torch, unlearnbench, pip, setuptools) -- what ``--system-site-packages`` would give if
this interpreter were not itself a venv. The plug-in lands in the new environment's own site-packages,
so its entry point is seen only there and uninstalling it removes it for real.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "eu_k_plugin"


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("plugin-env")
    env_dir = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    py = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    parents = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if Path(p).is_dir()]
    lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in dict.fromkeys(parents))
    (Path(purelib) / "_unlearnbench_parent_env.pth").write_text(lines)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["UNLEARNBENCH_CACHE"] = str(root / "cache")
    return {"python": str(py), "root": root, "env": env}


def _run(venv: dict, *argv: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([venv["python"], *argv], capture_output=True, text=True, env=venv["env"], cwd=REPO,
                          timeout=timeout)


def _cli(venv: dict, *argv: str) -> subprocess.CompletedProcess:
    return _run(venv, "-m", "unlearnbench.benchmarks.cli", *argv)


def test_example_plugin_installs_lists_and_passes_check_method(venv):
    before = _cli(venv, "list", "methods")
    assert before.returncode == 0, before.stderr
    assert "eu_k" not in before.stdout  # not installed yet: the environment is clean
    inst = _run(venv, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-e",
                str(EXAMPLE))
    assert inst.returncode == 0, inst.stdout + inst.stderr
    listed = _cli(venv, "list", "methods")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "eu_k" in line)
    assert "unlearnbench-euk" in row  # where it comes from: its distribution, not "built-in"
    checked = _cli(venv, "check-method", "eu_k")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "check-method eu_k (unlearnbench-euk 0.1.0)" in checked.stdout
    assert sum(line.startswith("PASS") for line in checked.stdout.splitlines()) == 13


@pytest.mark.slow
def test_example_suite_runs_and_uninstalling_leaves_everything_working(venv):
    results = venv["root"] / "results"
    inst = _run(venv, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-e",
                str(EXAMPLE))  # idempotent: the previous test may have been deselected
    assert inst.returncode == 0, inst.stdout + inst.stderr
    ran = _cli(venv, "run", "--suite", str(EXAMPLE / "suite.toml"), "--results", str(results), "--device", "cpu",
               "--quiet")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "8 ok, 0 not applicable, 0 failed" in ran.stdout + ran.stderr
    assert sum(line.startswith("│ eu_k") for line in ran.stdout.splitlines()) == 2  # one row per request

    gone = _run(venv, "-m", "pip", "uninstall", "-y", "-q", "unlearnbench-euk")
    assert gone.returncode == 0, gone.stdout + gone.stderr
    listed = _cli(venv, "list", "methods")
    assert listed.returncode == 0 and "eu_k" not in listed.stdout and "finetune" in listed.stdout
    board = _cli(venv, "leaderboard", "--results", str(results))  # stored records of the uninstalled method
    assert board.returncode == 0, board.stderr
    builtin = _cli(venv, "run", "--suite", "default", "--methods", "finetune,original,retrain", "--seeds", "0",
                   "--requests", "random-10%", "--results", str(results), "--device", "cpu", "--quiet")
    assert builtin.returncode == 0, builtin.stdout + builtin.stderr
    again = _cli(venv, "run", "--suite", str(EXAMPLE / "suite.toml"), "--results", str(results), "--quiet")
    assert again.returncode == 2  # a user error, one line, naming the missing method and the fix
    assert "unknown method 'eu_k'" in again.stderr and "install" in again.stderr
