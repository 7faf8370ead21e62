"""distribution_ft and weight_perturbation: they forget where forgetting is visible (a tiny cell that
memorises), their stop rules stop when forget and third-party data look alike and run to the limit
otherwise, class forgetting, the noise source, the adversarial variant, and the shared membership
test (methods/_membership.py)."""

from __future__ import annotations

import copy

import pytest
import torch

from unlearnbench.benchmarks.harness import evaluate, reference_model, seed_everything
from unlearnbench.datasets import TensorData
from unlearnbench.methods import MethodError, create_method
from unlearnbench.methods._membership import (Probe, auc_of, indistinguishable, label_log_probs, match_labels,
                                              match_third_party, quantile_partners)
from unlearnbench.methods.training import device_generator, predict
from unlearnbench.methods.weight_perturbation import perturb

from .helpers import tiny_cell_data

# Overlapping classes (16 noisy pixels, 10 prototypes) and a wide MLP trained to 100% train accuracy
# (~80% test): the original is clearly more member-like on its training images than a retrained model.
MEMO_DATA = {"name": "synthetic", "model": "mlp", "recipe": "tiny", "heldout": 100,
             "options": {"n_train": 440, "n_test": 300, "classes": 10, "size": 4},
             "model_options": {"hidden": [128], "head_hidden": [64]}}
MEMO_RECIPE = {"epochs": 40, "batch_size": 32, "lr": 0.05, "weight_decay": 0.0, "augment": False}
METRICS = ("accuracy", "mia.loss_auc")


@pytest.fixture(scope="module")
def memo_random(tmp_path_factory):
    ctx, cd, original = tiny_cell_data(tmp_path_factory.mktemp("memo"), dataset=MEMO_DATA, recipe=MEMO_RECIPE,
                                       requests=[{"kind": "random", "fraction": 0.2}])
    reference, _ = reference_model(cd, ctx, original)
    return ctx, cd, original, reference


@pytest.fixture(scope="module")
def memo_class(tmp_path_factory):
    ctx, cd, original = tiny_cell_data(tmp_path_factory.mktemp("memo-class"), dataset=MEMO_DATA,
                                       recipe=MEMO_RECIPE, requests=[{"kind": "class", "class": 2}])
    return ctx, cd, original


def _unlearn(name: str, cd, original, **overrides):
    method = create_method(name, overrides)
    req = cd.request(copy.deepcopy(original), heldout="needs_heldout" in method.tags)
    seed_everything(cd.cell.seed)
    return method.unlearn(req), req


def _metrics(model, cd, ctx) -> dict[str, float]:
    return evaluate(model, cd, ctx, METRICS).values


# ------------------------------------------------------------------------ forgetting where it is visible


def _loss_auc_all(model, cd) -> float:
    """Loss AUC of the whole forget set vs the whole test set (steadier than the metric's equal-size sample)."""
    lf, lt = predict(model, cd.forget), predict(model, cd.test)
    return auc_of(label_log_probs(lf, cd.forget.y), label_log_probs(lt, cd.test.y))


@pytest.mark.parametrize("name", ["distribution_ft", "weight_perturbation"])
def test_reduces_loss_auc_gap_on_memorising_cell(name, memo_random):
    ctx, cd, original, reference = memo_random
    a_orig, a_ref = _loss_auc_all(original, cd), _loss_auc_all(reference, cd)
    gap_before = a_orig - a_ref
    assert gap_before > 0.08, f"the test cell must memorise (original {a_orig:.3f}, retrain {a_ref:.3f})"
    out, req = _unlearn(name, cd, original)
    gap_after = abs(_loss_auc_all(out, cd) - a_ref)
    assert gap_after < 0.7 * gap_before, f"{name}: loss-AUC gap {gap_before:.3f} -> {gap_after:.3f} ({req.info})"
    m, m_ref = _metrics(out, cd, ctx), _metrics(reference, cd, ctx)
    assert m["test_acc"] > m_ref["test_acc"] - 0.06, f"{name} damaged the model: test acc {m['test_acc']:.3f}"
    assert req.info["membership_auc"] < req.info["initial_auc"] - 0.03


# ------------------------------------------------------------------------------------------ stop rules


def _unseen_as_forget(cd) -> TensorData:
    """Test images, never trained on: indistinguishable from held-out data by construction."""
    return cd.test


def test_distribution_ft_stops_at_once_when_forget_looks_unseen(memo_random):
    ctx, cd, original, _ = memo_random
    method = create_method("distribution_ft", {"tol": 0.08})
    req = cd.request(copy.deepcopy(original), heldout=True, forget=_unseen_as_forget(cd))
    out = method.unlearn(req)
    assert req.info["stopped_early"] == 1.0 and req.info["epochs"] == 0.0, req.info
    assert indistinguishable(req.info["membership_auc"], 0.08)
    assert all(torch.equal(a, b) for a, b in zip(out.state_dict().values(), original.state_dict().values()))


def test_distribution_ft_runs_to_the_limit_while_distinguishable(memo_random):
    ctx, cd, original, _ = memo_random
    out, req = _unlearn("distribution_ft", cd, original, lr_scale=1e-6, epochs=3.0)
    assert req.info["initial_auc"] > 0.6
    assert req.info["stopped_early"] == 0.0 and req.info["epochs"] == 3.0, req.info


def test_distribution_ft_stops_early_when_it_has_forgotten(memo_random):
    ctx, cd, original, _ = memo_random
    out, req = _unlearn("distribution_ft", cd, original, epochs=200.0, tol=0.05)
    assert req.info["stopped_early"] == 1.0 and 0 < req.info["epochs"] < 200, req.info
    assert indistinguishable(req.info["membership_auc"], 0.05) and not indistinguishable(req.info["initial_auc"], 0.05)


def test_weight_perturbation_stops_at_once_when_forget_looks_unseen(memo_random):
    ctx, cd, original, _ = memo_random
    method = create_method("weight_perturbation", {"tol": 0.08})
    req = cd.request(copy.deepcopy(original), heldout=True, forget=_unseen_as_forget(cd))
    method.unlearn(req)
    assert req.info["stopped_early"] == 1.0 and req.info["chunks"] == 0.0, req.info


def test_weight_perturbation_runs_to_the_limit_while_distinguishable(memo_random):
    ctx, cd, original, _ = memo_random
    out, req = _unlearn("weight_perturbation", cd, original, rel_sigma=0.0, lr_scale=1e-6, checks=4,
                        budget_frac=0.1)
    limit = 0.1 * cd.cell.dataset.recipe.epochs
    assert req.info["stopped_early"] == 0.0 and req.info["chunks"] == 4.0, req.info
    assert req.info["epochs"] == pytest.approx(limit, rel=0.05)


def test_weight_perturbation_stops_early_when_it_has_forgotten(memo_random):
    ctx, cd, original, _ = memo_random
    out, req = _unlearn("weight_perturbation", cd, original, budget_frac=1.0)
    assert req.info["stopped_early"] == 1.0 and req.info["epochs"] < cd.cell.dataset.recipe.epochs, req.info
    assert indistinguishable(req.info["membership_auc"], 0.03)
    assert req.info["heldout_acc"] >= req.info["initial_heldout_acc"] - 0.01
    assert 0.25 < req.info["rel_sigma"] <= 2.0 and req.info["attempts"] > 1


def test_weight_perturbation_undoes_a_diverged_chunk_and_halves_the_lr(memo_random):
    """A descent that blows up (NaN weights) or collapses to one class is undone and retried at half the lr;
    when even the last retry fails, the model before that chunk comes back. Never NaN outputs."""
    ctx, cd, original, _ = memo_random
    for lr_scale in (300.0, 100.0):  # 300: NaN; 100: finite but at chance (0.10 held-out) without the guard
        out, req = _unlearn("weight_perturbation", cd, original, lr_scale=lr_scale, budget_frac=0.5,
                            max_backoffs=10)
        assert 1 <= req.info["lr_backoffs"] <= 10 and req.info["gave_up"] == 0.0, req.info
        assert req.info["chunks"] == 8.0 and req.info["heldout_acc"] > 1.5 / 10, req.info
        assert torch.isfinite(predict(out, cd.test)).all()
    out, req = _unlearn("weight_perturbation", cd, original, lr_scale=1e4, budget_frac=0.5, max_backoffs=2)
    assert req.info["lr_backoffs"] == 2.0 and req.info["gave_up"] == 1.0 and req.info["chunks"] == 0.0, req.info
    assert torch.isfinite(predict(out, cd.test)).all()
    out, req = _unlearn("weight_perturbation", cd, original)  # the default lr: no retry needed here
    assert req.info["lr_backoffs"] == 0.0 and req.info["gave_up"] == 0.0


# ------------------------------------------------------------------------------------- class forgetting


def test_class_heldout_excludes_the_forgotten_class(memo_class):
    ctx, cd, original = memo_class
    c = cd.split.forget_class
    assert (cd.heldout.y == c).any(), "the held-out split itself holds the class"
    held = cd.request(copy.deepcopy(original), heldout=True).heldout
    assert len(held) > 0 and not (held.y == c).any()
    assert len(held) == int((cd.heldout.y != c).sum())
    assert cd.request(copy.deepcopy(original), heldout=False).heldout is None


def test_distribution_ft_forgets_a_class(memo_class):
    ctx, cd, original = memo_class
    before = _metrics(original, cd, ctx)
    out, req = _unlearn("distribution_ft", cd, original)
    after = _metrics(out, cd, ctx)
    assert before["test_acc_forgotten_class"] > 0.5
    assert after["test_acc_forgotten_class"] <= 0.1, (after, req.info)
    assert after["test_acc_rest"] > before["test_acc_rest"] - 0.1, (before, after)


# ----------------------------------------------------------------------------------- options and helpers


def test_noise_source(memo_random):
    ctx, cd, original, _ = memo_random
    out, req = _unlearn("distribution_ft", cd, original, source="noise", epochs=3.0)
    assert req.info["initial_auc"] > 0.9, "training images must look nothing like uniform noise to the original"
    assert req.info["epochs"] > 0
    with torch.no_grad():
        assert torch.isfinite(out(cd.test.floats())).all()
    # noise needs no held-out data
    req2 = cd.request(copy.deepcopy(original), heldout=False)
    create_method("distribution_ft", {"source": "noise", "epochs": 1.0}).unlearn(req2)


@pytest.mark.parametrize("disc_input", ["label_sorted", "sorted"])
def test_adversarial_variant_runs(memo_random, disc_input):
    ctx, cd, original, _ = memo_random
    out, req = _unlearn("distribution_ft", cd, original, variant="adversarial", disc_input=disc_input, epochs=5.0,
                        disc_warmup=50)
    assert 0.0 <= req.info["disc_auc"] <= 1.0
    assert req.info["epochs"] > 0
    with torch.no_grad():
        assert torch.isfinite(out(cd.test.floats())).all()


def test_heldout_is_required(memo_random):
    ctx, cd, original, _ = memo_random
    for name in ("distribution_ft", "weight_perturbation"):
        with pytest.raises(MethodError, match="needs request.heldout"):
            create_method(name).unlearn(cd.request(copy.deepcopy(original), heldout=False))


def test_matching_pairs_same_labels_for_random_and_uniform_for_class():
    g = device_generator("cpu", 0)
    forget_y = torch.tensor([0, 0, 1, 2, 2, 2])
    third = TensorData(torch.zeros(9, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2]))
    labels = match_labels("random", third, noise=False)
    m = match_third_party(forget_y, labels, len(third), g)
    assert m.shape == (6,) and torch.equal(third.y[m], forget_y)
    assert len(set(m[3:].tolist())) == 3, "partners are drawn without replacement while the class lasts"
    m = match_third_party(forget_y, labels, len(third), g, min_pairs=20)
    assert m.shape == (24,) and torch.equal(third.y[m], forget_y.repeat(4))
    assert match_labels("class", third, noise=False) is None and match_labels("backdoor", third, noise=False) is None
    assert match_labels("random", third, noise=True) is None
    u = match_third_party(forget_y, None, len(third), g, min_pairs=600)
    assert u.min() >= 0 and u.max() < 9 and len(set(u.tolist())) == 9


def test_auc_and_stop_rule():
    assert auc_of(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert auc_of(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])) == 0.0
    assert auc_of(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.5])) == 0.5
    assert indistinguishable(0.51, 0.02) and indistinguishable(0.3, 0.02) and not indistinguishable(0.53, 0.02)


def test_membership_test_sees_a_class_and_accuracy(memo_class):
    ctx, cd, original = memo_class
    req = cd.request(copy.deepcopy(original), heldout=True)
    probe = Probe.build(req.forget, req.heldout, match_labels("class", req.heldout, False),
                        device_generator("cpu", 0))
    res = probe.test(original)
    assert res.auc > 0.95, "log p_c on class-c training images vs other images must separate them"
    assert 0.5 < res.third_acc <= 1.0


def test_perturbation_is_relative_to_each_tensor(memo_random):
    ctx, cd, original, _ = memo_random
    model = copy.deepcopy(original)
    perturb(model, 0.1, device_generator("cpu", 0))
    for (name, p0), p1 in zip(original.named_parameters(), model.parameters()):
        if p0.numel() < 100:
            continue
        ratio = float((p1 - p0).detach().std() / p0.detach().std())
        assert ratio == pytest.approx(0.1, rel=0.35), name
    model = copy.deepcopy(original)
    perturb(model, 0.0, device_generator("cpu", 0))
    assert all(torch.equal(a, b) for a, b in zip(original.parameters(), model.parameters()))


def test_quantile_partners_are_stratified_and_rank_coupled():
    torch.manual_seed(0)
    third_y = torch.tensor([0] * 100 + [1] * 50)
    third_logp = torch.log_softmax(torch.randn(150, 3, dtype=torch.float64), dim=1)
    forget_y = torch.tensor([0] * 4 + [1] * 2)
    forget_logp = torch.log_softmax(torch.randn(6, 3, dtype=torch.float64), dim=1)
    m = quantile_partners(forget_logp, forget_y, third_logp, third_y)
    assert torch.equal(third_y[m], forget_y)  # same label
    for c, n in ((0, 4), (1, 2)):
        f = torch.nonzero(forget_y == c).flatten()
        pool = torch.sort(third_logp[third_y == c, c]).values
        want = pool[((torch.arange(n) + 0.5) * len(pool) / n).long()]  # evenly spaced quantiles
        got = third_logp[m[f], c]
        assert torch.equal(torch.sort(got).values, want)
        # rank-coupled: the more confident forget example gets the more confident partner
        assert torch.equal(torch.argsort(forget_logp[f, c]), torch.argsort(got))
    m = quantile_partners(forget_logp, forget_y, third_logp, None)  # no labels: the whole set is the pool
    assert m.min() >= 0 and m.max() < 150


def test_probe_samples_large_forget_sets(memo_random):
    ctx, cd, original, _ = memo_random
    req = cd.request(copy.deepcopy(original), heldout=True)
    probe = Probe.build(req.forget, req.heldout, req.heldout.y, device_generator("cpu", 0), min_pairs=200,
                        max_forget=30)
    assert len(probe.forget) == 30 and probe.labels.shape[0] >= 200
    assert len(probe.partners) <= len(req.heldout)
    res = probe.test(original)
    assert 0.0 <= res.auc <= 1.0 and 0.0 < res.third_acc <= 1.0


@pytest.mark.gpu
@pytest.mark.parametrize("name,opts", [("distribution_ft", {}), ("distribution_ft", {"variant": "adversarial"}),
                                       ("weight_perturbation", {})])
def test_runs_on_cuda_with_a_conv_net(name, opts, tmp_path):
    from unlearnbench.benchmarks.harness import RunContext, original_model, prepare_cell

    from .helpers import tiny_suite

    suite = tiny_suite(dataset={"name": "synthetic", "model": "small_cnn", "recipe": "tiny",
                                "options": {"size": 16, "channels": 3},
                                "model_options": {"channels": [8, 16], "fc": 32, "head_hidden": [16]}},
                       requests=[{"kind": "random", "fraction": 0.2}])
    ctx = RunContext(results_dir=tmp_path, device=torch.device("cuda"))
    cd = prepare_cell(suite.cells()[0], ctx)
    original, _ = original_model(cd, ctx)
    out, req = _unlearn(name, cd, original, **opts)
    with torch.no_grad():
        logits = out(cd.test.floats())
    assert logits.is_cuda and torch.isfinite(logits).all()
    assert all(isinstance(v, float) for v in req.info.values())
