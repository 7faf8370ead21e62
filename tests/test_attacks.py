"""Population membership-inference attacks (docs/metrics.md): orientation, exact formulas, behaviour on a
memorising model and on unseen data, the retrain reference near 0.5, the SVC convention, and the
stored per-example scores reproducing the stored values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from unlearnbench.attacks import EvalContext, list_metrics, metric_info
from unlearnbench.attacks.mia import score_conf, score_entropy, score_loss, score_mentropy
from unlearnbench.benchmarks.harness import evaluate, reference_model, run_cell
from unlearnbench.benchmarks.store import Store
from unlearnbench.datasets import TensorData

from .helpers import tiny_cell_data, tiny_context, tiny_suite

POPULATION = ("mia.loss_auc", "mia.conf_auc", "mia.entropy_auc", "mia.mentropy_auc")
DIGITS_MLP = {"epochs": 30, "batch_size": 64, "lr": 0.05, "augment": False}


# ------------------------------------------------------------------------------ formulas


def _reference_scores(logits: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    py = p[np.arange(len(y)), y]
    ent = -(p * np.log(p)).sum(1)
    mentr = []
    for pi, yi in zip(p, y):
        others = sum(pi[i] * np.log(1 - pi[i]) for i in range(len(pi)) if i != yi)
        mentr.append(-(1 - pi[yi]) * np.log(pi[yi]) - others)
    return {"loss": np.log(py), "conf": py, "entropy": -ent, "mentropy": -np.array(mentr)}


def test_scores_match_their_definitions():
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(64, 7, generator=g)
    y = torch.randint(0, 7, (64,), generator=g)
    ref = _reference_scores(logits.double().numpy(), y.numpy())
    np.testing.assert_allclose(score_loss(logits, y), ref["loss"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(score_conf(logits, y), ref["conf"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(score_entropy(logits, y), ref["entropy"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(score_mentropy(logits, y), ref["mentropy"], rtol=1e-8, atol=1e-10)


def test_scores_are_oriented_member_like_and_stay_finite():
    # a confident correct prediction (member-like) scores above an unsure one, for every attack
    sure = torch.tensor([[12.0, 0.0, 0.0]])
    unsure = torch.tensor([[0.5, 0.2, 0.0]])
    wrong = torch.tensor([[0.0, 12.0, 0.0]])
    y = torch.tensor([0])
    for fn in (score_loss, score_conf, score_mentropy):
        assert fn(sure, y)[0] > fn(unsure, y)[0] > fn(wrong, y)[0], fn.__name__
    assert score_entropy(sure, y)[0] > score_entropy(unsure, y)[0]
    # saturated logits: modified entropy stays finite and keeps ordering (1 - p underflows in float64)
    huge = torch.tensor([[0.0, 800.0, 0.0], [0.0, 50.0, 0.0]])
    s = score_mentropy(huge, torch.tensor([0, 0]))
    assert np.isfinite(s).all() and s[0] < s[1]
    assert s[1] == pytest.approx(-(50 + 50 - math.log(2)), rel=1e-9)


def test_every_mia_metric_is_registered_with_what_it_produces():
    names = {m.name: m for m in list_metrics()}
    for n in POPULATION:
        assert names[n].produces == (n,)
    assert names["mia.svc_efficacy"].produces == ("mia.svc_efficacy",)


# ------------------------------------------------------------------------------ behaviour


@pytest.fixture(scope="module")
def memorised(tmp_path_factory):
    """An MLP that fits 700 noisy 6x6 images of 20 classes perfectly (test accuracy ~0.96), with 300
    held-out images it never saw."""
    ds = {"name": "synthetic", "model": "mlp", "recipe": "tiny", "heldout": 300,
          "options": {"n_train": 1000, "n_test": 400, "classes": 20, "size": 6}}
    return tiny_cell_data(tmp_path_factory.mktemp("mem"), dataset=ds, recipe={**DIGITS_MLP, "batch_size": 32},
                          requests=[{"kind": "random", "fraction": 0.3}], metrics=["accuracy", *POPULATION])


def test_attacks_separate_memorised_data_and_not_unseen_data(memorised):
    ctx, cd, original = memorised
    res = evaluate(original, cd, ctx, POPULATION).values
    for n in POPULATION:
        assert res[n] > 0.56, f"{n} = {res[n]:.3f} on a memorising model"  # 210 vs 210: sd ~0.028
    # the same model, with never-seen held-out images in place of D_f: no signal
    unseen = evaluate_with_forget(original, cd, ctx, cd.heldout)
    for n in POPULATION:
        assert 0.42 < unseen[n] < 0.58, f"{n} = {unseen[n]:.3f} on data the model never saw"


def evaluate_with_forget(model, cd, ctx, forget: TensorData) -> dict[str, float]:
    ectx = EvalContext(model=model, train=cd.train, forget=forget, retain=cd.retain, test=cd.test,
                       heldout=cd.heldout, split=cd.split, num_classes=cd.splits.num_classes, seed=cd.cell.seed)
    out = {}
    for n in POPULATION:
        out.update(metric_info(n).fn(ectx).values)
    return out


def test_retrain_loss_auc_near_half_on_random_forgetting(tmp_path):
    # digits, random 30% of the pool: 386 forgotten images vs an equal-size sample of the 360 test
    # images, so the AUC's sampling deviation is about 0.02
    ds = {"name": "digits", "model": "mlp", "recipe": "tiny"}
    ctx, cd, original = tiny_cell_data(tmp_path, dataset=ds, recipe=DIGITS_MLP,
                                       requests=[{"kind": "random", "fraction": 0.3}])
    reference, _ = reference_model(cd, ctx, original)
    ret = evaluate(reference, cd, ctx, ("mia.loss_auc", "mia.svc_efficacy")).values
    orig = evaluate(original, cd, ctx, ("mia.loss_auc", "mia.svc_efficacy")).values
    assert 0.45 <= ret["mia.loss_auc"] <= 0.55, ret
    assert orig["mia.loss_auc"] > ret["mia.loss_auc"]
    # SVC efficacy: retrain calls more of D_f non-member than the original does
    assert ret["mia.svc_efficacy"] > orig["mia.svc_efficacy"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_class_request_non_members_are_unseen_images_of_the_class(tmp_path, seed):
    """The default suite's digits class cell: against unseen images of the forgotten class (not all classes,
    which would measure the class: retrain ~0.05), a perfect retrain reads near 0.5 on every seed."""
    ds = {"name": "digits", "model": "mlp", "recipe": "tiny"}
    ctx, cd, original = tiny_cell_data(tmp_path, dataset=ds, recipe=DIGITS_MLP, seeds=[seed],
                                       requests=[{"kind": "class", "class": 3}])
    reference, _ = reference_model(cd, ctx, original)
    res = evaluate(reference, cd, ctx, POPULATION)
    for n in POPULATION:
        assert 0.35 <= res.values[n] <= 0.65, f"retrain {n} = {res.values[n]:.3f} on class 3, seed {seed}"
    test_index = res.scores["mia.loss_auc.test_index"]
    labels = res.scores["mia.loss_auc.labels"]
    assert (cd.test.y[torch.as_tensor(test_index)] == 3).all(), "non-members must be test images of class 3"
    assert (labels == 1).sum() == len(cd.forget) and (labels == 0).sum() == int((cd.test.y == 3).sum())


def test_backdoor_request_non_members_are_triggered_relabelled_test_images(tmp_path):
    """Backdoor requests: D_f (poisoned training images, labelled as the target) against unseen test images
    poisoned the same way; retrain does not read as 'never a member' (it read 0.000 against clean images)."""
    ds = {"name": "digits", "model": "mlp", "recipe": "tiny"}
    ctx, cd, original = tiny_cell_data(tmp_path, dataset=ds, recipe=DIGITS_MLP,
                                       requests=[{"kind": "backdoor", "trigger": "blended", "target": 0}])
    reference, _ = reference_model(cd, ctx, original)
    ret = evaluate(reference, cd, ctx, POPULATION)
    orig = evaluate(original, cd, ctx, POPULATION).values
    for n in POPULATION:
        assert ret.values[n] >= 0.3, f"retrain {n} = {ret.values[n]:.3f} on a backdoor request"
    assert orig["mia.loss_auc"] > ret.values["mia.loss_auc"]  # the original memorised its poisoned images
    idx = torch.as_tensor(ret.scores["mia.loss_auc.test_index"])
    assert (cd.test.y[idx] != 0).all(), "non-members are non-target test images (then triggered)"


def _ctx_with_logits(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> EvalContext:
    def data(part):
        y = labels[part]
        return TensorData(torch.zeros(len(y), 1, 1, 1, dtype=torch.uint8), y)

    from unlearnbench.datasets import ForgetSplit, ImageSet

    n = len(labels["forget"]) + len(labels["retain"])
    split = ForgetSplit("random", {}, torch.arange(len(labels["forget"])), torch.arange(len(labels["forget"]), n),
                        ImageSet(torch.zeros(n, 1, 1, 1, dtype=torch.uint8), torch.zeros(n, dtype=torch.int64)))
    return EvalContext(model=torch.nn.Identity(), train=data("retain"), forget=data("forget"), retain=data("retain"),
                       test=data("test"), heldout=data("test"), split=split, num_classes=2, seed=0,
                       _logits=dict(logits))


def _logits_for_conf(conf: np.ndarray) -> torch.Tensor:
    """Two-class logits whose true-label (class 0) confidence is ``conf``."""
    c = torch.as_tensor(conf, dtype=torch.float64)
    return torch.stack([torch.log(c), torch.log1p(-c)], 1).float()


def test_svc_efficacy_follows_the_salun_convention():
    rng = np.random.default_rng(0)
    members = rng.uniform(0.95, 1.0, 400)  # retain: confident
    non = rng.uniform(0.3, 0.8, 200)  # test: unsure
    labels = {"retain": torch.zeros(400, dtype=torch.int64), "test": torch.zeros(200, dtype=torch.int64)}
    for forget_conf, expected in ((rng.uniform(0.3, 0.8, 100), 1.0), (rng.uniform(0.96, 1.0, 100), 0.0)):
        labels["forget"] = torch.zeros(100, dtype=torch.int64)
        ctx = _ctx_with_logits({"retain": _logits_for_conf(members), "test": _logits_for_conf(non),
                                "forget": _logits_for_conf(forget_conf)}, labels)
        res = metric_info("mia.svc_efficacy").fn(ctx)
        # fraction of D_f predicted non-member: all of a test-like D_f, none of a retain-like one
        assert res.values["mia.svc_efficacy"] == pytest.approx(expected, abs=0.02)
        assert res.values["mia.svc_efficacy"] == pytest.approx(
            float(np.mean(res.scores["mia.svc_efficacy.forget_pred_member"] == 0)))


def test_svc_efficacy_balances_a_retain_set_smaller_than_the_test_set():
    # 100 retain vs 500 test images (a subset recipe): an SVC fitted on 1:5 would call all of D_f
    # non-member; with equal-size classes a retain-like D_f is called member
    rng = np.random.default_rng(1)
    labels = {"retain": torch.zeros(100, dtype=torch.int64), "test": torch.zeros(500, dtype=torch.int64),
              "forget": torch.zeros(50, dtype=torch.int64)}
    # (in [0.9, 1] the test set has 125 images to the retain set's 100: unbalanced, that region is
    # "non-member" and the value 1.0; balanced, 25 to 100 and the value near 0)
    ctx = _ctx_with_logits({"retain": _logits_for_conf(rng.uniform(0.9, 1.0, 100)),
                            "test": _logits_for_conf(rng.uniform(0.6, 1.0, 500)),
                            "forget": _logits_for_conf(rng.uniform(0.9, 1.0, 50))}, labels)
    assert metric_info("mia.svc_efficacy").fn(ctx).values["mia.svc_efficacy"] < 0.2


def test_population_sample_is_equal_size_and_shared_by_method_and_reference():
    g = torch.Generator().manual_seed(1)
    labels = {"forget": torch.randint(0, 2, (50,), generator=g), "retain": torch.randint(0, 2, (80,), generator=g),
              "test": torch.randint(0, 2, (120,), generator=g)}
    logits = {k: torch.randn(len(v), 2, generator=g) for k, v in labels.items()}
    a = metric_info("mia.loss_auc").fn(_ctx_with_logits(logits, labels))
    logits2 = {k: torch.randn(len(v), 2, generator=g) for k, v in labels.items()}
    b = metric_info("mia.loss_auc").fn(_ctx_with_logits(logits2, labels))
    assert len(a.scores["mia.loss_auc.test_index"]) == 50
    np.testing.assert_array_equal(a.scores["mia.loss_auc.test_index"], b.scores["mia.loss_auc.test_index"])
    np.testing.assert_array_equal(a.scores["mia.loss_auc.labels"], np.r_[np.ones(50), np.zeros(50)])


# ------------------------------------------------------------------------------ stored scores


def test_stored_per_example_scores_reproduce_stored_values(tmp_path):
    suite = tiny_suite(metrics=["accuracy", *POPULATION, "mia.svc_efficacy"])
    ctx = tiny_context(tmp_path)
    with Store(tmp_path) as store:
        for cell in suite.cells():
            record, scores = run_cell(cell, ctx)
            assert record.status == "ok", record.reason
            store.write(record, scores)
        records = store.records(suite=suite.name)
        assert len(records) == 2
        for rec in records:
            arrays = store.scores(rec)
            for n in POPULATION:
                auc = roc_auc_score(arrays[f"{n}.labels"], arrays[f"{n}.scores"])
                assert auc == pytest.approx(rec.metrics[n], abs=1e-12), n
            svc = float(np.mean(arrays["mia.svc_efficacy.forget_pred_member"] == 0))
            assert svc == pytest.approx(rec.metrics["mia.svc_efficacy"], abs=1e-12)
