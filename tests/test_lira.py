"""LiRA, U-LiRA and the shadow-model trainers: the statistic, balanced memberships, vmap == loop,
caching, and the attacks on a tiny memorising setup (original clearly attacked, retrain near 0.5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import unlearnbench.attacks.lira as lira_mod
from unlearnbench.attacks.lira import (LIRA_NAMES, gaussian_fits, lira_scores, lira_statistic, shadow_set,
                                       summarize)
from unlearnbench.attacks.shadows import ShadowError, balanced_memberships, resolve_mode, train_shadow_models
from unlearnbench.benchmarks.harness import CellHarness, evaluate, prepare_cell, reference_model
from unlearnbench.datasets import DatasetSpec, TensorData, build_splits
from unlearnbench.methods import create_method
from unlearnbench.methods.models import build_model
from unlearnbench.methods.training import Recipe

from .helpers import tiny_cell_data, tiny_suite

# 20 classes of 6x6 noisy prototypes: an MLP fits the pool perfectly and generalises to ~96%, so
# membership leaves a trace per example (what LiRA reads) more than in the loss population
MEMORISING = {"name": "synthetic", "model": "mlp", "recipe": "tiny", "heldout": 60,
              "options": {"n_train": 660, "n_test": 300, "classes": 20, "size": 6},
              "model_options": {"hidden": [128], "head_hidden": [64]}}
RECIPE = {"epochs": 30, "batch_size": 32, "lr": 0.05, "augment": False}
K = 16


# ------------------------------------------------------------------------------ pieces


def test_statistic_is_stable_and_exact():
    logits = torch.tensor([[2.0, 1.0, 0.0], [1000.0, 0.0, -5.0], [0.0, 1000.0, 0.0]])
    y = torch.tensor([0, 0, 0])
    phi = lira_statistic(logits, y)
    p = torch.softmax(logits[0].double(), 0)
    assert phi[0] == pytest.approx(math.log(p[0] / (1 - p[0])), rel=1e-12)
    assert np.isfinite(phi).all()
    assert phi[1] == pytest.approx(1000.0 - math.log(1 + math.exp(-5.0)), rel=1e-12)
    assert phi[2] == pytest.approx(-1000.0, rel=1e-12)  # logsumexp(1000, 0) = 1000 in float64


@pytest.mark.parametrize("k,n", [(2, 7), (8, 101), (16, 300)])
def test_balanced_memberships(k, n):
    m = balanced_memberships(k, n, np.random.default_rng(3))
    assert m.shape == (k, n) and m.dtype == bool
    assert (m.sum(0) == k // 2).all()  # every example IN for exactly half of the shadows
    assert m.sum(1).max() - m.sum(1).min() <= 1  # equal-size shadows
    other = balanced_memberships(k, n, np.random.default_rng(4))
    assert not np.array_equal(m, other)
    if k >= 8:  # not a structured design: many distinct membership patterns
        assert len({tuple(col) for col in m.T}) > n // 2
    with pytest.raises(ShadowError, match="even"):
        balanced_memberships(3, n, np.random.default_rng(0))


def test_gaussian_scores_rank_members_first():
    rng = np.random.default_rng(0)
    n, k = 400, 16
    member = balanced_memberships(k, n, rng)
    shift = rng.uniform(0.5, 3.0, n)  # per-example memorisation effect
    base = rng.normal(0, 2, n)
    phi = base + member * shift + rng.normal(0, 0.3, (k, n))
    fits = gaussian_fits(phi, member)
    target_in = rng.uniform(size=n) < 0.5
    phi_t = base + target_in * shift + rng.normal(0, 0.3, n)
    scores = lira_scores(phi_t, fits)
    for name, s in scores.items():
        assert summarize(s, target_in.astype(int))["auc"] > 0.8, name
    # online beats the population score (the raw statistic), since it removes per-example difficulty
    assert summarize(scores["online"], target_in)["auc"] > summarize(phi_t, target_in)["auc"] + 0.1
    with pytest.raises(Exception):
        gaussian_fits(phi, np.zeros_like(member))


def test_summarize_metrics():
    labels = np.r_[np.ones(1000), np.zeros(1000)].astype(int)
    s = np.r_[np.arange(1000) + 500.0, np.arange(1000)]  # 500 of 1000 positives above every negative
    out = summarize(s, labels)
    assert out["tpr@0.1%fpr"] == pytest.approx(0.501, abs=2e-3)
    assert out["balacc"] == pytest.approx(0.75, abs=1e-3)
    assert out["auc"] == pytest.approx(0.875, abs=1e-3)
    assert math.isnan(summarize(s, np.ones(2000, int))["auc"])


def test_auto_mode_rule():
    tiny = nn.Linear(10, 10)
    big = nn.Linear(1000, 1000)
    assert resolve_mode("auto", tiny, "cpu") == "loop"
    assert resolve_mode("auto", tiny, "cuda") == "vmap"
    assert resolve_mode("auto", big, "cuda") == "loop"
    assert resolve_mode("vmap", big, "cpu") == "vmap"
    with pytest.raises(ShadowError, match="mode"):
        resolve_mode("fast", tiny, "cpu")


# ------------------------------------------------------------------------------ vmap == loop


class _BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(4 * 8 * 8, 10))

    def forward(self, x):
        return self.body(x)


def _digits():
    sp = build_splits(DatasetSpec("digits"))
    return sp, TensorData.from_imageset(sp.train.subset(torch.arange(300)), "cpu")


@pytest.mark.parametrize("arch,recipe", [
    ("mlp", Recipe(epochs=3, batch_size=64, lr=0.05, augment=False)),  # 150 = 2*64 + 22: partial batches
    ("mlp", Recipe(epochs=2.5, batch_size=40, lr=0.01, augment=False, optimizer="adam", schedule="cosine",
                   label_smoothing=0.1)),
    ("bn", Recipe(epochs=2, batch_size=64, lr=0.05, augment=False, nesterov=False)),
])
def test_vmap_reproduces_the_loop(arch, recipe):
    """Same init, same batches, same schedule and optimizer: parameters and BatchNorm statistics agree
    to 1e-4 (fp32 summation order differs, nothing else)."""
    sp, data = _digits()
    if arch == "bn":
        def make():
            return _BNNet()
    else:
        def make():
            return build_model("mlp", sp.image_shape, 10, [0.3], [0.3], hidden=(32,), head_hidden=(16,))
    member = balanced_memberships(4, len(data), np.random.default_rng(0))
    seeds = [11, 12, 13, 14]
    loop = train_shadow_models(make, data, member, recipe, seeds, "cpu", mode="loop")
    vm = train_shadow_models(make, data, member, recipe, seeds, "cpu", mode="vmap")
    assert len(loop) == len(vm) == 4
    for a, b in zip(loop, vm):
        assert a.keys() == b.keys()
        for name in a:
            if a[name].is_floating_point():
                assert torch.allclose(a[name], b[name], atol=1e-4, rtol=1e-4), name
            else:
                assert torch.equal(a[name], b[name]), name
    # different shadows really differ (own init, own data)
    w = next(n for n in loop[0] if n.endswith("weight"))
    assert not torch.allclose(loop[0][w], loop[1][w])


def test_train_shadow_models_checks_its_arguments():
    sp, data = _digits()

    def make():
        return build_model("mlp", sp.image_shape, 10, [0.3], [0.3], hidden=(8,), head_hidden=(8,))

    member = balanced_memberships(2, len(data), np.random.default_rng(0))
    with pytest.raises(ShadowError, match="seeds"):
        train_shadow_models(make, data, member, Recipe(epochs=1), [1], "cpu")
    with pytest.raises(ShadowError, match="N = len"):
        train_shadow_models(make, data, member[:, :10], Recipe(epochs=1), [1, 2], "cpu")


# ------------------------------------------------------------------------------ the attacks


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lira")
    ctx, cd, original = tiny_cell_data(tmp, dataset=MEMORISING, recipe=RECIPE,
                                       requests=[{"kind": "random", "fraction": 0.3}],
                                       metrics=["accuracy", "mia.loss_auc", "mia.lira", "mia.ulira"],
                                       metric_options={"mia.lira": {"shadows": K}, "mia.ulira": {"shadows": K}})
    reference, _ = reference_model(cd, ctx, original)
    return ctx, cd, original, reference


def _eval(setup, model, role, metrics, method="original"):
    ctx, cd, original, _ = setup
    return evaluate(model, cd, ctx, metrics, role=role, method=create_method(method), original=original)


def test_lira_attacks_the_original_and_not_retrain(setup):
    ctx, cd, original, reference = setup
    orig = _eval(setup, original, "unlearned", ("mia.loss_auc", "mia.lira"))
    ret = _eval(setup, reference, "reference", ("mia.loss_auc", "mia.lira"))
    assert set(LIRA_NAMES) <= set(orig.values)
    o, r = orig.values, ret.values
    assert o["mia.lira_online_auc"] > 0.65, o
    assert o["mia.lira_online_auc"] >= o["mia.loss_auc"], o
    assert abs(r["mia.lira_online_auc"] - 0.5) < 0.08, r
    assert abs(r["mia.lira_online_fixed_auc"] - 0.5) < 0.08, r
    assert abs(r["mia.lira_offline_auc"] - 0.5) < 0.1, r
    # stored per-example scores reproduce the values
    from sklearn.metrics import roc_auc_score

    s = orig.scores
    assert roc_auc_score(s["mia.lira.labels"], s["mia.lira.online"]) == pytest.approx(o["mia.lira_online_auc"])
    assert s["mia.lira.labels"].sum() == len(cd.forget)


def test_shadows_are_trained_once_and_cached(setup, monkeypatch):
    ctx, cd, original, _ = setup
    _eval(setup, original, "unlearned", ("mia.lira",))  # shadows exist now
    lira_mod._SETS.clear()

    def boom(*a, **k):
        raise AssertionError("shadows retrained although cached")

    monkeypatch.setattr(lira_mod, "train_shadow_models", boom)
    ss = shadow_set(_ectx(setup, original), K, "auto")
    assert ss.phi.shape == (K, len(ss.pool)) and ss.member.shape == (K, len(ss.pool))
    assert len(ss.pool) == len(cd.train) + min(len(cd.test), len(cd.train))
    # without the phi file, shadows come from the model cache, still untrained
    (ctx.cache.root / f"{ss.key}.phi.npz").unlink()
    lira_mod._SETS.clear()
    again = shadow_set(_ectx(setup, original), K, "auto")
    np.testing.assert_allclose(again.phi, ss.phi)


def _ectx(setup, model):
    from unlearnbench.attacks import EvalContext

    ctx, cd, original, _ = setup
    return EvalContext(model=model, train=cd.train, forget=cd.forget, retain=cd.retain, test=cd.test,
                       heldout=cd.heldout, split=cd.split, num_classes=cd.splits.num_classes, seed=cd.cell.seed,
                       harness=CellHarness(cd, ctx, original=original))


def test_ulira_detects_no_unlearning_and_not_retrain(setup):
    ctx, cd, original, reference = setup
    none = _eval(setup, original, "unlearned", ("mia.ulira",), method="original").values
    ret = _eval(setup, reference, "reference", ("mia.ulira",)).values
    assert none["mia.ulira_auc"] > 0.65, none
    assert none["mia.ulira_acc"] > 0.58, none
    assert abs(ret["mia.ulira_auc"] - 0.5) < 0.1, ret
    assert abs(ret["mia.ulira_acc"] - 0.5) < 0.1, ret


def test_ulira_shadow_unlearning_is_cached(setup, monkeypatch):
    ctx, cd, original, reference = setup
    first = _eval(setup, reference, "reference", ("mia.ulira",)).values
    from unlearnbench.methods.reference import Retrain

    def boom(self, request):
        raise AssertionError("shadows unlearned again although cached")

    monkeypatch.setattr(Retrain, "unlearn", boom)
    again = _eval(setup, reference, "reference", ("mia.ulira",)).values
    assert again == first


def test_ulira_methods_option_skips_other_methods(setup):
    ctx, cd, original, _ = setup
    cd2 = type(cd)(**{**cd.__dict__})
    from dataclasses import replace

    cd2.cell = replace(cd.cell, metric_options={"mia.ulira": {"shadows": K, "methods": ["retrain"]}})
    res = evaluate(original, cd2, ctx, ("mia.ulira",), role="unlearned", method=create_method("original"),
                   original=original).values
    assert all(math.isnan(v) for v in res.values())


def test_lira_options_are_checked(setup):
    from unlearnbench.attacks import MetricError

    ctx, cd, original, _ = setup
    from dataclasses import replace

    for opts, match in (({"shadows": 7}, "even"), ({"shadows": 512}, "even"), ({"shadow": 8}, "no option")):
        cd2 = type(cd)(**{**cd.__dict__})
        cd2.cell = replace(cd.cell, metric_options={"mia.lira": opts})
        with pytest.raises(MetricError, match=match):
            evaluate(original, cd2, ctx, ("mia.lira",))


@pytest.mark.gpu
def test_vmap_and_loop_shadows_agree_on_cuda():
    """On the GPU the loop trains in bf16 autocast and vmap in fp32/TF32: not the same numbers, the
    same training -- test accuracies of each pair agree within 3 points."""
    sp = build_splits(DatasetSpec("digits"))
    data = TensorData.from_imageset(sp.train, "cuda")
    test = TensorData.from_imageset(sp.test, "cuda")

    def make():
        return build_model("small_cnn", sp.image_shape, 10, [0.3], [0.3]).cuda()

    member = balanced_memberships(4, len(data), np.random.default_rng(0))
    recipe = Recipe(epochs=10, batch_size=64, lr=0.05, augment=False)
    loop = train_shadow_models(make, data, member, recipe, [1, 2, 3, 4], "cuda", mode="loop")
    vm = train_shadow_models(make, data, member, recipe, [1, 2, 3, 4], "cuda", mode="vmap")
    from unlearnbench.methods.training import accuracy

    for a, b in zip(loop, vm):
        ma, mb = make(), make()
        ma.load_state_dict(a)
        mb.load_state_dict(b)
        assert abs(accuracy(ma, test) - accuracy(mb, test)) < 0.03


def test_lira_on_a_class_request_compares_with_unseen_images_of_that_class(setup):
    ctx, cd, original, _ = setup
    suite = tiny_suite(dataset=MEMORISING, recipe=RECIPE, requests=[{"kind": "class", "class": 3}],
                       metrics=["accuracy", "mia.lira"], metric_options={"mia.lira": {"shadows": K}})
    cdc = prepare_cell(suite.cells()[0], ctx)
    assert cdc.original_key == cd.original_key  # same training data: same original, same shadows
    res = evaluate(original, cdc, ctx, ("mia.lira",), role="unlearned", original=original)
    labels, pos = res.scores["mia.lira.labels"], res.scores["mia.lira.pool_index"]
    n_train = len(cdc.train)
    ss = lira_mod._SETS[next(reversed(lira_mod._SETS))]
    test_pos = pos[labels == 0] - n_train
    assert (test_pos >= 0).all()
    assert (cdc.test.y[torch.as_tensor(ss.test_index[test_pos])] == 3).all()
    assert (labels == 1).sum() == len(cdc.forget) and (cdc.forget.y == 3).all()
    assert all(np.isfinite(v) for v in res.values.values())


def test_vmap_trainer_runs_with_augmentation():
    sp, data = _digits()
    data = TensorData(data.x, data.y, "crop_flip")

    def make():
        return build_model("mlp", sp.image_shape, 10, [0.3], [0.3], hidden=(16,), head_hidden=(8,))

    member = balanced_memberships(2, len(data), np.random.default_rng(0))
    states = train_shadow_models(make, data, member, Recipe(epochs=1, batch_size=64, lr=0.05, augment=True), [1, 2],
                                 "cpu", mode="vmap")
    assert all(torch.isfinite(t).all() for s in states for t in s.values() if t.is_floating_point())
