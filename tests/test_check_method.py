"""``unlearnbench check-method`` fails, naming the check, for methods that break the contract.

Each broken method below is registered only for its test (and removed afterwards). Several reach
past their request through ``gc`` -- the only way left, since the harness hands a method a deep copy
of the model and nothing else; the checks must still see what they did.
"""

from __future__ import annotations

import contextlib
import gc
import warnings
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

from unlearnbench.benchmarks.checks import ContractCells, check_method, reachable_tensors
from unlearnbench.benchmarks.cli import main
from unlearnbench.methods import Method, UnlearnRequest, fit, param, register
from unlearnbench.methods import base as method_base
from unlearnbench.methods.models import Classifier


@contextlib.contextmanager
def registered(name: str, cls: type, **kw):
    register(name, summary=f"test method {name}", **kw)(cls)
    try:
        yield
    finally:
        method_base._REGISTRY.pop(name, None)


def _objects() -> list:
    with warnings.catch_warnings():  # isinstance on some torch objects warns of deprecations
        warnings.simplefilter("ignore")
        return [o for o in gc.get_objects() if isinstance(o, (Classifier, _cell_data()))]


def _cell_data() -> type:
    from unlearnbench.benchmarks.harness import CellData

    return CellData


@dataclass(frozen=True)
class PassThrough(Method):
    def unlearn(self, request: UnlearnRequest) -> nn.Module:
        return request.model


@dataclass(frozen=True)
class MutatesOriginal(Method):
    def unlearn(self, request: UnlearnRequest) -> nn.Module:
        for obj in _objects():  # every other model it can find, the original among them
            if isinstance(obj, Classifier) and obj is not request.model:
                with torch.no_grad():
                    obj.head[-1].bias.add_(1.0)
        return request.model


@dataclass(frozen=True)
class ReturnsNaN(Method):
    def unlearn(self, request: UnlearnRequest) -> nn.Module:
        with torch.no_grad():
            request.model.head[-1].bias.fill_(float("nan"))
        return request.model


@dataclass(frozen=True)
class IgnoresBudget(Method):
    epochs: float = param(20.0, "epochs of fine-tuning on the retain set")

    def unlearn(self, request: UnlearnRequest) -> nn.Module:
        from dataclasses import replace

        fit(request.model, request.retain, replace(request.recipe, epochs=self.epochs), seed=request.seed)  # no budget
        return request.model


@dataclass(frozen=True)
class MutatesInputs(Method):
    def unlearn(self, request: UnlearnRequest) -> nn.Module:
        request.forget.y.zero_()  # relabels in place: corrupts the cell's own forget set
        return request.model


@dataclass(frozen=True)
class ReadsTestData(Method):
    def unlearn(self, request: UnlearnRequest) -> nn.Module:
        from unlearnbench.benchmarks.harness import CellData

        for obj in _objects():
            if isinstance(obj, CellData) and obj.forget is request.forget:
                fit(request.model, obj.test, request.recipe, seed=request.seed, budget=request.budget)
        return request.model


@dataclass(frozen=True)
class LeavesGradOff(Method):
    def unlearn(self, request: UnlearnRequest) -> nn.Module:
        torch.set_grad_enabled(False)
        return request.model


@dataclass(frozen=True)
class Unseeded(Method):
    def unlearn(self, request: UnlearnRequest) -> nn.Module:
        g = torch.Generator().manual_seed(int(torch.seed()) % 2**31)  # fresh entropy on every call
        with torch.no_grad():
            for p in request.model.parameters():
                p.add_(1e-3 * torch.randn(p.shape, generator=g))
        return request.model


@pytest.fixture(scope="module")
def cells():
    with ContractCells() as c:
        yield c


def _results(name: str, cells) -> dict[str, object]:
    return {r.check: r for r in check_method(name, cells)}


@pytest.mark.parametrize("cls,check,words", [
    (MutatesOriginal, "original_untouched", "original model changed"),
    (ReturnsNaN, "no_nan", "NaN"),
    (IgnoresBudget, "respects_budget", "backward example passes"),
    (MutatesInputs, "inputs_untouched", "request.forget.y"),
    (ReadsTestData, "no_test_or_reference_access", "test images"),
    (LeavesGradOff, "no_global_side_effects", "grad mode"),
    (Unseeded, "deterministic", "second run with the same seed"),
], ids=lambda v: v if isinstance(v, str) and "_" in v else None)
def test_check_fails_naming_the_broken_property(cls, check, words, cells):
    name = f"broken_{check}"
    with registered(name, cls):
        results = _results(name, cells)
    assert results[check].status == "fail", results[check].line()
    assert words in results[check].detail
    # the other checks are not blamed for it (a NaN model is also what keeps_interface compares, but it passes)
    unrelated = {"declares_itself", "clone", "declares_applicability", "returns_model"}
    assert all(results[c].status == "pass" for c in unrelated), [results[c].line() for c in unrelated]


def test_nondeterministic_tag_skips_determinism_with_its_reason(cells):
    with registered("tagged_unseeded", Unseeded, tags=("nondeterministic",),
                    tag_reasons={"nondeterministic": "draws fresh entropy on purpose (test)"}):
        results = _results("tagged_unseeded", cells)
    assert results["deterministic"].status == "skip"
    assert "draws fresh entropy on purpose" in results["deterministic"].detail


def test_harness_leak_through_a_bound_method_is_found(cells, monkeypatch):
    """A request whose new_model is a bound method of the cell (what the harness passed before) reaches the
    cell's test split through ``__self__``: the reachability check must say so, with the path."""
    from unlearnbench.benchmarks.harness import CellData

    monkeypatch.setattr(CellData, "model_factory", lambda self: self.make_model)
    with registered("pass_through", PassThrough):
        res = next(check_method("pass_through", cells, ["no_test_or_reference_access"]))
    assert res.status == "fail"
    assert "request.new_model.__self__.test.x shares storage with the test images" in res.detail


def test_reachable_tensors_follows_closures_and_partials():
    import functools

    secret, other = torch.zeros(3), torch.ones(2)

    class Holder:
        __slots__ = ("t",)

        def __init__(self, t):
            self.t = t

    def closure():
        return secret

    found = {p for p, t in reachable_tensors({"f": closure, "p": functools.partial(print, Holder(other))}, "root")}
    assert found == {"root['f'].<closure secret>", "root['p'].args[0].t"}


def test_cli_exit_status_and_lines(cells, capsys):
    with registered("broken_nan_cli", ReturnsNaN), registered("broken_orig_cli", MutatesOriginal):
        rc = main(["check-method", "finetune", "broken_nan_cli", "broken_orig_cli"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "PASS  no_nan" in out and "FAIL  no_nan" in out and "FAIL  original_untouched" in out
    assert "FAILED: no_nan" in err and "FAILED: original_untouched" in err
    assert "1 of 3 methods pass" in err and "broken_nan_cli (no_nan)" in err
    assert "broken_orig_cli (original_untouched" in err


def test_cli_passes_a_builtin(capsys):
    rc = main(["check-method", "gradient_ascent"])
    out, _ = capsys.readouterr()
    assert rc == 0, out
    lines = [ln for ln in out.splitlines() if ln[:4] in ("PASS", "SKIP", "FAIL")]
    assert len(lines) == 13 and all(ln.startswith("PASS") for ln in lines), out


@pytest.mark.parametrize("argv,words", [
    (["check-method"], "name a method"),
    (["check-method", "finetun"], "Did you mean 'finetune'"),
    (["check-method", "finetune", "--checks", "no_nans"], "Did you mean 'no_nan'"),
    (["check-method", "finetune", "--model", "mpl"], "unknown model 'mpl'"),
])
def test_cli_bad_input_is_a_user_error(argv, words, capsys):
    assert main(argv) == 2
    assert words in capsys.readouterr().err
