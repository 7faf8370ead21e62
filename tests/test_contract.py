"""The contract every registered method meets, parametrised over the registry (a new method adds no
test code): on a tiny model with a tiny budget it returns a model with the same output shape,
leaves the original untouched, respects the budget, is deterministic under a seed on the CPU
(unless tagged nondeterministic, with a reason), produces no NaN, and declares what it cannot do
instead of failing."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from unlearnbench.benchmarks.harness import seed_everything
from unlearnbench.methods import Budget, create_method, method_class, method_names
from unlearnbench.methods.models import Classifier

from .helpers import tiny_cell_data

KINDS = [{"kind": "random", "fraction": 0.1}, {"kind": "class", "class": 1}]


@pytest.fixture(scope="module", params=KINDS, ids=lambda r: r["kind"])
def cell(request, tmp_path_factory):
    return tiny_cell_data(tmp_path_factory.mktemp("contract"), requests=[request.param])


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _run(name: str, cd, original, budget: Budget):
    method = create_method(name)
    req = cd.request(copy.deepcopy(original), heldout="needs_heldout" in method.tags, budget=budget)
    seed_everything(cd.cell.seed)
    out = method.unlearn(req)
    return method, req, out


@pytest.mark.parametrize("name", method_names())
def test_method_contract(name, cell, monkeypatch):
    ctx, cd, original = cell
    method = create_method(name)
    reason = method.not_applicable(cd.split.kind, original)
    if reason is not None:
        assert isinstance(reason, str) and name in reason
        pytest.skip(f"declared not applicable: {reason}")

    before = _snapshot(original)
    seen = {"samples": 0}
    real_forward = Classifier.forward

    def counting_forward(self, x):
        seen["samples"] += int(x.shape[0])
        return real_forward(self, x)

    monkeypatch.setattr(Classifier, "forward", counting_forward)
    budget = Budget(max_epochs=0.1)
    _, req, out = _run(name, cd, original, budget)
    monkeypatch.setattr(Classifier, "forward", real_forward)

    assert isinstance(out, nn.Module)
    out.eval()
    with torch.no_grad():
        x = cd.test.floats()
        y_out, y_orig = out(x), original(x)
    assert y_out.shape == y_orig.shape
    assert torch.isfinite(y_out).all(), "unlearned model outputs NaN/inf"
    after = _snapshot(original)
    assert all(torch.equal(before[k], after[k]) for k in before), "the original model was modified"
    # budget: a 0.1-epoch cap allows a few passes' worth of forwards (training + a stop-rule check), not 10 epochs
    limit = 3 * len(cd.train) + 4 * len(cd.heldout) + 2 * len(cd.test)
    assert seen["samples"] <= limit, f"{name} forwarded {seen['samples']} samples under a 0.1-epoch budget (> {limit})"
    for k, v in req.info.items():
        assert isinstance(v, (int, float)), f"request.info[{k!r}] must be a number"


@pytest.mark.parametrize("name", method_names())
def test_method_deterministic_on_cpu(name, cell):
    ctx, cd, original = cell
    cls = method_class(name)
    if "nondeterministic" in cls.tags:
        pytest.skip(f"tagged nondeterministic: {cls.tag_reasons['nondeterministic']}")
    if create_method(name).not_applicable(cd.split.kind, original):
        pytest.skip("not applicable to this request")
    outs = []
    for _ in range(2):
        _, _, out = _run(name, cd, original, Budget(max_epochs=0.1))
        with torch.no_grad():
            outs.append(out.eval()(cd.test.floats()))
    assert torch.equal(outs[0], outs[1]), f"{name} is not deterministic under a fixed seed on the CPU"


@pytest.mark.parametrize("name", method_names())
def test_method_declares_itself(name):
    cls = method_class(name)
    doc = (cls.__module__ and __import__(cls.__module__, fromlist=["_"]).__doc__) or ""
    assert len(doc.strip()) > 80, f"{name}'s module docstring must cite its paper and state its choices"
    assert cls.summary, f"{name} needs a one-line summary"
    create_method(name)  # defaults construct
