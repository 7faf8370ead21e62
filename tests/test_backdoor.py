"""The backdoor request and metrics: triggers, poisoning, identified fraction, the suite path, and
backdoor removal by retraining (digits on the CPU; MNIST with ../shared/data)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unlearnbench.attacks import load_all
from unlearnbench.attacks.backdoor import apply_trigger, blended_pattern, der
from unlearnbench.benchmarks.harness import RunContext, evaluate, original_model, prepare_cell, reference_model
from unlearnbench.benchmarks.suite import load_suite
from unlearnbench.datasets import DatasetError, DatasetSpec, TensorData, build_request, build_splits
from unlearnbench.methods import fit
from unlearnbench.methods.training import Recipe, accuracy

from .helpers import tiny_cell_data, tiny_suite

load_all()


def _digits():
    return build_splits(DatasetSpec("digits"))


# ------------------------------------------------------------------------------ triggers


def test_badnets_stamps_a_white_3x3_square_bottom_right_only():
    x = torch.randint(0, 200, (5, 3, 10, 12), dtype=torch.uint8)
    out = apply_trigger(x, {"trigger": "badnets", "size": 3, "value": 255, "target": 0})
    assert (out[:, :, -3:, -3:] == 255).all()
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[:, :, -3:, -3:] = False
    assert torch.equal(out[mask], x[mask])
    assert out.dtype == torch.uint8 and not torch.equal(out, x)


def test_blended_mixes_a_fixed_random_pattern_at_alpha():
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    spec = {"trigger": "blended", "alpha": 0.1, "pattern_seed": 7, "target": 0}
    out = apply_trigger(x, spec)
    pattern = blended_pattern((1, 8, 8), 7)
    expected = (0.9 * x.float() + 0.1 * pattern.float()).round().to(torch.uint8)
    assert torch.equal(out, expected)
    assert torch.equal(blended_pattern((1, 8, 8), 7), pattern)  # fixed
    assert pattern.float().std() > 50  # a random pattern, not a constant


def test_der_formula():
    assert der(0.95, 0.05, 0.90, 0.90) == pytest.approx(0.95)
    assert der(0.95, 0.05, 0.90, 0.80) == pytest.approx(0.90)
    assert der(0.10, 0.50, 0.90, 0.95) == pytest.approx(0.5)  # no credit for an ASR rise or a CA gain


# ------------------------------------------------------------------------------ the request


@pytest.mark.parametrize("trigger", ["badnets", "blended"])
def test_backdoor_request_poisons_non_target_images(trigger):
    sp = _digits()
    split = build_request(sp, "backdoor", {"trigger": trigger}, 0)
    non_target = int((sp.train.y != 0).sum())
    poisoned = torch.nonzero((split.train.x != sp.train.x).flatten(1).any(1)).flatten()
    assert len(split.forget_idx) == round(0.1 * non_target)
    assert torch.equal(poisoned, split.forget_idx) or set(poisoned.tolist()) <= set(split.forget_idx.tolist())
    assert (sp.train.y[split.forget_idx] != 0).all()  # drawn from the non-target classes
    assert (split.train.y[split.forget_idx] == 0).all()  # relabelled to the target
    rest = torch.ones(len(sp.train), dtype=torch.bool)
    rest[split.forget_idx] = False
    assert torch.equal(split.train.y[rest], sp.train.y[rest]) and torch.equal(split.train.x[rest], sp.train.x[rest])
    assert split.train_tag and split.extra["trigger"]["trigger"] == trigger
    assert split.extra["poison_count"] == len(split.forget_idx)
    # deterministic in the seed, different across seeds
    again = build_request(sp, "backdoor", {"trigger": trigger}, 0)
    assert torch.equal(again.forget_idx, split.forget_idx) and again.train_tag == split.train_tag
    assert not torch.equal(build_request(sp, "backdoor", {"trigger": trigger}, 1).forget_idx, split.forget_idx)


def test_identified_names_part_of_the_poison_and_keeps_the_rest_in_retain():
    sp = _digits()
    full = build_request(sp, "backdoor", {"trigger": "badnets", "poison_rate": 0.2, "target": 3}, 0)
    half = build_request(sp, "backdoor", {"trigger": "badnets", "poison_rate": 0.2, "target": 3, "identified": 0.5},
                         0)
    assert half.train_tag == full.train_tag  # same poisoned training data: the original model is shared
    assert torch.equal(half.train.x, full.train.x)
    assert len(half.forget_idx) == round(0.5 * len(full.forget_idx))
    assert set(half.forget_idx.tolist()) < set(full.forget_idx.tolist())
    unidentified = set(full.forget_idx.tolist()) - set(half.forget_idx.tolist())
    assert unidentified <= set(half.retain_idx.tolist())  # the corrective-unlearning setting
    assert (half.train.y[list(unidentified)] == 3).all()


@pytest.mark.parametrize("params,match", [({"trigger": "sig"}, "trigger"), ({"poison_rate": 0}, "poison_rate"),
                                          ({"target": 10}, "target"), ({"identified": 1.5}, "identified"),
                                          ({"rate": 0.1}, "no parameter")])
def test_backdoor_request_rejects_bad_parameters(params, match):
    with pytest.raises(DatasetError, match=match):
        build_request(_digits(), "backdoor", params, 0)


def test_backdoor_suite_parses_and_lists_the_request():
    s = tiny_suite(requests=[{"kind": "backdoor", "trigger": "blended", "label": "blended"}], metrics=["backdoor"])
    assert s.requests[0].kind == "backdoor" and s.requests[0].label == "blended"
    suite = load_suite("backdoor")
    assert {r.params["trigger"] for r in suite.requests} == {"badnets", "blended"}
    assert "backdoor" in suite.metrics
    assert {d.spec.name for d in suite.datasets} == {"digits", "mnist", "cifar10-jpeg"}
    assert {d.spec.name for d in suite.datasets if d.requires == "cuda"} == {"mnist", "cifar10-jpeg"}


# ------------------------------------------------------------------------------ removal


@pytest.fixture(scope="module")
def digits_backdoor(tmp_path_factory):
    ds = {"name": "digits", "model": "mlp", "recipe": "tiny"}
    recipe = {"epochs": 30, "batch_size": 64, "lr": 0.05, "augment": False}
    return tiny_cell_data(tmp_path_factory.mktemp("bd"), dataset=ds, recipe=recipe,
                          requests=[{"kind": "backdoor", "trigger": "badnets"}], metrics=["accuracy", "backdoor"])


def test_retrain_removes_the_backdoor_that_the_original_learned(digits_backdoor):
    ctx, cd, original = digits_backdoor
    reference, _ = reference_model(cd, ctx, original)
    orig = evaluate(original, cd, ctx, ("backdoor",), original=original)
    ret = evaluate(reference, cd, ctx, ("backdoor",), original=original)
    o, r = orig.values, ret.values
    assert o["backdoor.asr"] >= 0.9 and o["backdoor.asr"] == o["backdoor.asr_original"]
    assert o["backdoor.der"] == pytest.approx(0.5)  # no change, no credit
    assert r["backdoor.asr"] <= 0.05
    assert r["backdoor.asr_original"] == o["backdoor.asr"]
    assert r["backdoor.der"] == pytest.approx(der(o["backdoor.asr"], r["backdoor.asr"], o["backdoor.clean_acc"],
                                                  r["backdoor.clean_acc"]))
    assert r["backdoor.der"] > 0.9
    # ASR counts non-target test images only
    n_non_target = int((cd.test.y != 0).sum())
    assert len(orig.scores["backdoor.triggered_pred"]) == n_non_target
    assert o["backdoor.asr"] == pytest.approx(float(np.mean(orig.scores["backdoor.triggered_pred"] == 0)))
    assert o["backdoor.clean_acc"] == pytest.approx(accuracy(original, cd.test))


def test_backdoor_metrics_are_nan_on_other_requests(tmp_path):
    ctx, cd, original = tiny_cell_data(tmp_path, metrics=["accuracy", "backdoor"])
    res = evaluate(original, cd, ctx, ("backdoor",), original=original).values
    assert res and all(math.isnan(v) for v in res.values())


def _mnist_backdoor(tmp_path, data_root, device: str, trigger: str, dataset: dict, recipe: dict):
    """Original (poisoned pool), retrain reference, and an unpoisoned model with the same recipe."""
    suite = tiny_suite(dataset={"name": "mnist", "model": "small_cnn", "recipe": "tiny", **dataset}, recipe=recipe,
                       requests=[{"kind": "backdoor", "trigger": trigger}], metrics=["accuracy", "backdoor"])
    ctx = RunContext(results_dir=tmp_path, data_root=str(data_root), device=torch.device(device))
    cd = prepare_cell(suite.cells()[0], ctx)
    original, _ = original_model(cd, ctx)
    reference, _ = reference_model(cd, ctx, original)
    clean = cd.make_model()
    fit(clean, TensorData.from_imageset(cd.splits.train, device), Recipe.from_dict(recipe), seed=cd.cell.seed)
    o = evaluate(original, cd, ctx, ("backdoor",), original=original).values
    r = evaluate(reference, cd, ctx, ("backdoor",), original=original).values
    return o, r, accuracy(clean, cd.test)


@pytest.mark.data
@pytest.mark.slow
def test_mnist_backdoor_original_and_retrain_cpu(tmp_path, data_root):
    """MNIST, a 4,000-image subset, a narrow small CNN, 8 epochs on the CPU, BadNets: the original
    learns the backdoor (ASR >= 90%) at a clean accuracy within 2 points of an unpoisoned model with
    the same recipe, and retraining on the retain set removes it (ASR <= 5%)."""
    o, r, clean_acc = _mnist_backdoor(tmp_path, data_root, "cpu", "badnets",
                                      {"train_subset": 4000,
                                       "model_options": {"channels": [16, 32], "fc": 64, "head_hidden": [64]}},
                                      {"epochs": 8, "batch_size": 64, "lr": 0.05, "augment": False})
    assert o["backdoor.asr"] >= 0.9, o
    assert clean_acc >= 0.95, f"the unpoisoned model did not learn MNIST ({clean_acc:.3f}): the check means nothing"
    assert abs(o["backdoor.clean_acc"] - clean_acc) <= 0.02, (o, clean_acc)
    assert r["backdoor.asr"] <= 0.05, r


@pytest.mark.data
@pytest.mark.gpu
@pytest.mark.parametrize("trigger", ["badnets", "blended"])
def test_mnist_backdoor_original_and_retrain_gpu(tmp_path, data_root, trigger):
    """Full MNIST, the small CNN and the backdoor suite's recipe (5 epochs), both triggers: ASR >= 90%
    before, clean accuracy within 2 points of an unpoisoned model, ASR <= 5% after retraining."""
    o, r, clean_acc = _mnist_backdoor(tmp_path, data_root, "cuda", trigger, {},
                                      {"epochs": 5, "batch_size": 128, "lr": 0.05, "augment": False})
    assert o["backdoor.asr"] >= 0.9, o
    assert clean_acc >= 0.95, f"the unpoisoned model did not learn MNIST ({clean_acc:.3f}): the check means nothing"
    assert abs(o["backdoor.clean_acc"] - clean_acc) <= 0.02, (o, clean_acc)
    assert r["backdoor.asr"] <= 0.05, r
