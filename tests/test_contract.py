"""The contract every built-in method meets, parametrised over the registry (a new method adds no test
code) and over the named checks of ``benchmarks/checks.py`` -- the same checks ``unlearnbench
check-method`` runs on plug-ins. One test per (method, check), so a failure names both: the returned
model keeps the interface, the original and the request's tensors are untouched, the budget is
respected (the example-pass caps are calibrated on these methods: see the checks' docstring),
determinism under a seed on the CPU unless tagged nondeterministic with a reason, no NaN, no access to
test data or the retrain reference, no global side effects. Plug-ins installed in the environment are
not collected here; ``unlearnbench check-method --all`` checks them."""

from __future__ import annotations

import pytest

from unlearnbench.benchmarks.checks import CHECKS, ContractCells, MethodRuns, run_check
from unlearnbench.methods import method_names, method_origin

BUILTINS = [n for n in method_names() if method_origin(n) == "built-in"]


@pytest.fixture(scope="module")
def cells():
    with ContractCells() as c:
        yield c


_RUNS: dict[str, MethodRuns] = {}


def runs_of(name: str, cells: ContractCells) -> MethodRuns:
    key = f"{id(cells)}:{name}"
    if key not in _RUNS:
        _RUNS[key] = MethodRuns(name, cells)
    return _RUNS[key]


def test_every_builtin_method_is_checked():
    assert len(BUILTINS) >= 18 and {"retrain", "original", "prune", "finetune"} <= set(BUILTINS)


@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_method_meets_contract(name, check, cells):
    res = run_check(check, runs_of(name, cells))
    assert res.status != "fail", f"{name}: {res.line()}"
    if res.status == "skip":
        pytest.skip(res.detail)
