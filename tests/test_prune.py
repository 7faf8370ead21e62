"""PRUNE: patches are local (bit-identical outputs outside their supports), survive a state_dict round trip,
certify every point of a ``points`` request (local reach), are caught by the verifier when tampered with, give
each cluster its own target, cover every cluster member by default, and leave test accuracy alone on small
requests. Reach as a choice: local supports certify a class's training images and leave its test images
recognised; generalising supports (gamma from the pre-activation scale) forget the class on test images too
(<= 0.3 on the seeds suite's digits class cells), with flip counts and storage reported. Input-space patching
of MLPs. Also the LP layer: the closed-form minimal patch equals the dualised joint LP's optimum, and LP results
do not depend on the worker count."""

from __future__ import annotations

import copy
import dataclasses
import io

import numpy as np
import pytest
import torch

from unlearnbench.benchmarks.harness import seed_everything
from unlearnbench.methods import accuracy, create_method
from unlearnbench.methods import _prune_lp as plp
from unlearnbench.methods._prune_model import PatchedModel, linearise, pattern_of, pre_activations, relu_mlp_layers
from unlearnbench.methods.base import ReportData
from unlearnbench.methods.cost import count_work
from unlearnbench.methods.models import state_bytes
from unlearnbench.methods.prune import verify_certificate
from unlearnbench.methods.training import predict

from .helpers import TINY_RECIPE, tiny_cell_data

DIGITS = {"name": "digits", "model": "mlp", "recipe": "tiny"}
DEEP = {"name": "synthetic", "model": "mlp", "recipe": "tiny",
        "model_options": {"hidden": [32], "head_hidden": [16, 8]}}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One results/cache folder for the module: the digits original is trained once and reused."""
    return tmp_path_factory.mktemp("prune")


def _cell(cache_dir, request, dataset=DIGITS):
    return tiny_cell_data(cache_dir, requests=[request], dataset=dataset, recipe=TINY_RECIPE)


def _unlearn(cd, original, **opts):
    method = create_method("prune", {"lp_workers": 1, **opts})
    req = cd.request(copy.deepcopy(original), heldout=False)
    seed_everything(cd.cell.seed)
    return method, req, method.unlearn(req)


@pytest.fixture(scope="module")
def points1(cache_dir):
    ctx, cd, original = _cell(cache_dir, {"kind": "points", "count": 1})
    method, req, out = _unlearn(cd, original)
    return cd, original, method, req, out


@pytest.fixture(scope="module")
def points10(cache_dir):
    ctx, cd, original = _cell(cache_dir, {"kind": "points", "count": 10})
    method, req, out = _unlearn(cd, original)
    return cd, original, method, req, out


# ------------------------------------------------------------------------------------- patched model


def test_outside_support_is_bit_identical(points1):
    cd, original, _, _, out = points1
    assert isinstance(out, PatchedModel) and len(out.patches) == 1
    x = torch.cat([cd.test.floats(), cd.retain.floats()])
    with torch.no_grad():
        g = out.head.supports(out.features(x)).amax(1)
        y_new, y_old = out(x), original(x)
    outside = g == 0
    assert outside.sum() > 0.9 * len(x), "the support of one patch should cover almost no other input"
    assert torch.equal(y_new[outside], y_old[outside])
    assert y_new[outside].view(torch.int32).equal(y_old[outside].view(torch.int32)), "not bit-identical"
    # inputs far outside the feature box (clamped patch, support 0) too
    z = out.features(x[:50]) * 5.0 + 3.0
    with torch.no_grad():
        far = out.head.supports(z).amax(1) == 0
        assert far.any() and torch.equal(out.head(z)[far], original.head(z)[far])
        # and inside the support the patch does act
        zf = out.features(cd.forget.floats())
        assert not torch.equal(out.head(zf), original.head(zf))


def test_state_dict_round_trip(points10, tmp_path):
    cd, original, _, _, out = points10
    buf = io.BytesIO()
    torch.save(out.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = cd.make_model()  # same architecture, different (initial) weights: the state overwrites them
    rebuilt = PatchedModel.from_state_dict(fresh, state).eval()
    assert len(rebuilt.patches) == len(out.patches) == 10
    x = torch.cat([cd.test.floats(), cd.forget.floats()])
    with torch.no_grad():
        assert torch.equal(rebuilt(x), out(x))
    assert verify_certificate(rebuilt, cd.forget, cd.forget.y).all()
    # patch tensors are counted as extra parameters and bytes
    n_orig = sum(p.numel() for p in original.parameters())
    assert sum(p.numel() for p in out.parameters()) > n_orig
    assert all(not p.requires_grad for p in out.head.parameters())


# --------------------------------------------------------------------------------------- certificates


@pytest.mark.parametrize("cell_name", ["points1", "points10"])
def test_points_cells_certified_and_local(cell_name, request):
    cd, original, method, req, out = request.getfixturevalue(cell_name)
    ok = verify_certificate(out, cd.forget, cd.forget.y)
    assert ok.all(), f"certified {int(ok.sum())}/{len(ok)}"
    pred = predict(out, cd.forget).argmax(1)
    assert (pred != cd.forget.y).all()
    assert method.report(out, req)["certified_fraction"] == 1.0
    drop = accuracy(original, cd.test) - accuracy(out, cd.test)
    assert drop <= 0.01, f"test accuracy dropped by {100 * drop:.2f} points"
    assert req.info["patches"] >= 1 and req.info["lp_count"] > 0


def test_verifier_detects_broken_certificates(points1):
    cd, original, _, _, out = points1
    assert verify_certificate(out, cd.forget).all()
    # a weakened patch no longer flips the whole region
    weak = copy.deepcopy(out)
    with torch.no_grad():
        weak.patches[0].d.mul_(0.1)
    assert not verify_certificate(weak, cd.forget).any()
    # a bound K below |p| breaks locality, so nothing is certified
    bad_k = copy.deepcopy(out)
    with torch.no_grad():
        bad_k.patches[0].K.mul_(0.5)
    assert not verify_certificate(bad_k, cd.forget).any()
    # a patch whose region is not the point's covers nothing
    moved = copy.deepcopy(out)
    with torch.no_grad():
        moved.patches[0].patterns.mul_(-1.0)
    assert not verify_certificate(moved, cd.forget).any()
    # labels: a prediction equal to the label is not a certified forgetting
    assert not verify_certificate(out, cd.forget, predict(out, cd.forget).argmax(1)).any()


def test_deep_head_certified_and_local(cache_dir):
    ctx, cd, original = _cell(cache_dir, {"kind": "points", "count": 3}, dataset=DEEP)
    assert len(relu_mlp_layers(original)) == 3
    _, _, out = _unlearn(cd, original)
    assert verify_certificate(out, cd.forget, cd.forget.y).all()
    x = cd.test.floats()
    with torch.no_grad():
        outside = out.head.supports(out.features(x)).amax(1) == 0
        assert outside.any()
        assert torch.equal(out(x)[outside], original(x)[outside])


# -------------------------------------------------------------------------------------- many points


def test_cluster_targets_are_per_cluster(cache_dir):
    ctx, cd, original = _cell(cache_dir, {"kind": "class", "class": 3})
    _, req, out = _unlearn(cd, original, n_clusters=4, max_rounds=1, direct_max_points=1, class_grouping="kmeans",
                           certify_members=False, reach="local")
    targets = [int(p.target) for p in out.patches]
    assert len(targets) == 4 and all(t != 3 for t in targets)
    assert len(set(targets)) > 1, f"every cluster got the same target {targets}"
    assert sum(len(p.patterns) for p in out.patches) >= 0.9 * len(cd.forget)  # members' regions are supported
    assert req.info["rounds"] == 1


def test_random_one_percent(cache_dir):
    ctx, cd, original = _cell(cache_dir, {"kind": "random", "fraction": 0.01})
    method, req, out = _unlearn(cd, original, certify_members=False)
    assert accuracy(out, cd.forget) <= method.target_forget_acc + 1e-9
    drop = accuracy(original, cd.test) - accuracy(out, cd.test)
    assert drop <= 0.01, f"test accuracy dropped by {100 * drop:.2f} points"
    assert len(cd.forget) > method.direct_max_points  # clustered: the representatives' regions are certified
    assert 1 <= int(verify_certificate(out, cd.forget, cd.forget.y).sum()) < len(cd.forget)
    # certify_members (the default): each cluster's shift covers all its members' regions, so every point is
    # certified
    full_method, full_req, full = _unlearn(cd, original)
    assert full_method.certify_members and full_req.info["member_lps"] > 0
    assert full_req.info["member_cover_truncated"] == 0.0
    assert verify_certificate(full, cd.forget, cd.forget.y).all()
    assert accuracy(original, cd.test) - accuracy(full, cd.test) <= 0.01
    # past member_lp_limit the remaining clusters are patched from their representatives alone
    _, cut_req, cut = _unlearn(cd, original, member_lp_limit=1)
    assert cut_req.info["member_cover_truncated"] == 1.0
    assert accuracy(cut, cd.forget) <= method.target_forget_acc + 1e-9


# ----------------------------------------------------------------------------------------------- reach


def test_reach_auto_is_generalising_for_classes_only():
    m = create_method("prune")
    assert m.reach == "auto" and m.resolved_reach("class") == "generalising"
    assert {m.resolved_reach(k) for k in ("points", "random", "backdoor")} == {"local"}
    assert create_method("prune", {"reach": "local"}).resolved_reach("class") == "local"


def _class_report(cd, original, **opts):
    method, req, out = _unlearn(cd, original, **opts)
    after = dataclasses.replace(req, evaluation=ReportData(original=original, heldout=cd.heldout, test=cd.test))
    return method, req, out, method.report(out, after)


def test_class_request_local_vs_generalising(cache_dir):
    """A class, not clustered (the authors' README): local supports certify every training image of the class
    and leave its unseen test images recognised; generalising supports (gamma from the pre-activation scale)
    forget the class on test images too, certify fewer points, and change more unrelated predictions -- all
    counted."""
    ctx, cd, original = _cell(cache_dir, {"kind": "class", "class": 3})
    c = cd.split.forget_class
    test_c = cd.test.subset(torch.nonzero(cd.test.y == c).flatten())
    _, lreq, local, lrep = _class_report(cd, original, reach="local")
    assert lreq.info["generalising"] == 0.0 and lreq.info["gamma_used"] == 1e4
    assert accuracy(local, cd.forget) == 0.0 and lrep["certified_fraction"] == 1.0
    assert accuracy(local, test_c) > 0.6, "sharp supports do not reach unseen images of the class"
    _, greq, gen, grep = _class_report(cd, original)  # reach="auto": generalising for a class
    scale = greq.info["preact_median"]
    assert greq.info["generalising"] == 1.0 and greq.info["gamma_used"] == pytest.approx(1.0 / scale)
    assert accuracy(gen, cd.forget) == 0.0
    assert accuracy(gen, test_c) <= 0.3, "generalising supports reach the class's unseen images"
    assert grep["certified_fraction"] < lrep["certified_fraction"]
    for rep, model in ((lrep, local), (grep, gen)):  # flip counts are what they say
        for name, data in (("retain", cd.retain), ("test", cd.test), ("heldout", cd.heldout)):
            changed = predict(model, data).argmax(1) != predict(original, data).argmax(1)
            assert rep[f"flips_{name}"] == float(changed.sum())
        assert rep["flips_test"] == rep["flips_test_forgotten_class"] + rep["flips_test_other"]
    assert grep["flips_test_forgotten_class"] > lrep["flips_test_forgotten_class"]


def test_storage_counts_what_a_deployment_stores(points10):
    cd, original, method, req, out = points10
    rep = method.report(out, req)
    assert rep["patch_bytes"] == state_bytes(out) - state_bytes(original) > 0  # what the harness's extra_bytes is
    m, d = out.patches[0].patterns.shape[1], out.head.lo.numel()
    regions = sum(len(p.patterns) for p in out.patches)
    assert rep["reassure_bytes"] - rep["patch_bytes"] == regions * m * d * 4  # (A, b) instead of the sign pattern


def test_lp_solves_are_counted_as_work(cache_dir):
    ctx, cd, original = _cell(cache_dir, {"kind": "points", "count": 3})
    with count_work() as work:
        _, req, _ = _unlearn(cd, original)
    assert work.other["lp_solves"] == req.info["lp_count"] > 0
    assert work.fwd >= len(cd.forget) + len(cd.retain)  # the features pass over forget and retain


# ------------------------------------------------------------------------------------------ input space


@pytest.fixture(scope="module")
def input_points10(cache_dir):
    ctx, cd, original = _cell(cache_dir, {"kind": "points", "count": 10})
    method, req, out = _unlearn(cd, original, space="input")
    return cd, original, method, req, out


def test_input_space_certified_and_local(input_points10):
    """The authors' own setting for MLPs: the whole network patched in input space, the box the valid pixel
    range. Every point certified; outside every support the outputs are the original's bit for bit."""
    cd, original, method, req, out = input_points10
    assert out.space == "input" and req.info["input_space"] == 1.0
    assert out.head.lo.numel() == cd.forget.x[0].numel()  # regions live in the 64-pixel input space
    assert len(relu_mlp_layers(original)) + 1 == len(out.head.linears())  # the body's Linear too
    assert verify_certificate(out, cd.forget, cd.forget.y).all()
    assert (predict(out, cd.forget).argmax(1) != cd.forget.y).all()
    x = torch.cat([cd.test.floats(), cd.retain.floats()])
    with torch.no_grad():
        outside = out.head.supports(out.features(x)).amax(1) == 0
        assert outside.sum() > 0.9 * len(x)
        assert torch.equal(out(x)[outside], original(x)[outside])
        assert torch.allclose(out(x), out.head(out.features(x)))
    assert accuracy(original, cd.test) - accuracy(out, cd.test) <= 0.01


def test_input_space_state_dict_round_trip(input_points10):
    cd, original, method, req, out = input_points10
    buf = io.BytesIO()
    torch.save(out.state_dict(), buf)
    buf.seek(0)
    rebuilt = PatchedModel.from_state_dict(cd.make_model(), torch.load(buf, weights_only=True)).eval()
    assert rebuilt.space == "input"
    x = torch.cat([cd.test.floats(), cd.forget.floats()])
    with torch.no_grad():
        assert torch.equal(rebuilt(x), out(x))


def test_input_space_needs_an_mlp(tmp_path):
    ctx, cd, original = tiny_cell_data(tmp_path, requests=[{"kind": "points", "count": 2}], recipe=TINY_RECIPE,
                                       dataset={"name": "synthetic", "model": "small_cnn", "recipe": "tiny",
                                                "options": {"size": 8},
                                                "model_options": {"channels": [4], "fc": 16, "head_hidden": [8]}})
    reason = create_method("prune", {"space": "input"}).not_applicable("points", original)
    assert reason and "space=input" in reason
    assert create_method("prune").not_applicable("points", original) is None


# -------------------------------------------------------------------------------- the seeds suite, digits


def _seeds_digits_class(tmp_path, seeds):
    from unlearnbench.benchmarks.harness import RunContext, run_cell
    from unlearnbench.benchmarks.suite import load_suite

    cells = load_suite("seeds").cells(methods=["prune"], datasets=["digits"], requests=["class"], seeds=seeds)
    ctx = RunContext(results_dir=tmp_path, device=torch.device("cpu"))
    return [run_cell(cell, ctx)[0] for cell in cells]


def _check_generalising_class(records):
    for rec in records:
        v = rec.metrics
        assert rec.status == "ok", rec.reason
        assert v["prune.generalising"] == 1.0
        assert v["test_acc_forgotten_class"] <= 0.3, (rec.seed, v["test_acc_forgotten_class"])
        assert v["forget_acc"] == 0.0
        for k in ("flips_retain", "flips_heldout", "flips_test", "flips_test_other", "flips_test_forgotten_class"):
            assert f"prune.{k}" in v
        assert v["extra_bytes"] == v["prune.patch_bytes"]


def test_generalising_reach_forgets_a_digits_class_on_test_images(tmp_path):
    """The seeds suite's digits class cell (seed 0), through the harness: forgotten-class test accuracy <= 0.3,
    with the flipped-point counts and the patch storage reported."""
    _check_generalising_class(_seeds_digits_class(tmp_path, [0]))


@pytest.mark.slow
def test_generalising_reach_forgets_a_digits_class_on_test_images_all_seeds(tmp_path):
    _check_generalising_class(_seeds_digits_class(tmp_path, [0, 1, 2]))


# --------------------------------------------------------------------------------------------- LPs


def _toy_region(seed: int = 0, d: int = 6, m: int = 4, C: int = 4):
    torch.manual_seed(seed)
    lins = [torch.nn.Linear(d, m).double(), torch.nn.Linear(m, C).double()]
    z0 = torch.rand(1, d, dtype=torch.float64)
    lin = linearise(z0, lins)
    s = pattern_of(lin["pre"][0])
    A = (-s[:, None] * lin["J"][0]).numpy()
    b = (s * (lin["pre"][0] - lin["J"][0] @ z0[0])).numpy()
    F1 = lin["F1"][0].numpy()
    F2 = (lin["out"][0] - lin["F1"][0] @ z0[0]).numpy()
    return A, b, np.zeros(d), np.ones(d), F1, F2, lins, z0


def test_linearise_matches_the_head():
    A, b, lo, hi, F1, F2, lins, z0 = _toy_region()
    assert (A @ z0[0].numpy() <= b + 1e-12).all()
    W1 = lins[0].weight.detach().numpy()
    mask = (pre_activations(z0, lins)[0] > 0).double().numpy()
    assert np.allclose(F1, lins[1].weight.detach().numpy() @ (mask[:, None] * W1))
    zq = z0 + 1e-4 * torch.randn_like(z0)  # a nearby point in the same region: the affine form is exact
    if (A @ zq[0].numpy() <= b).all():
        with torch.no_grad():
            assert np.allclose(lins[1](torch.relu(lins[0](zq)))[0].numpy(), F1 @ zq[0].numpy() + F2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_minimal_closed_form_equals_joint_lp(seed):
    A, b, lo, hi, F1, F2, _, z0 = _toy_region(seed)
    t = int(np.argmin(F1 @ z0[0].numpy() + F2))
    eps = 0.05
    js, V, const = plp.spec_rows(F1, F2, t)
    vals, _, ok = plp.region_max(A, b, lo, hi, V, const)
    assert ok
    r = np.full(len(F2), -np.inf)
    r[js] = vals + eps
    d = plp.shift_patch(r, t, "minimal")
    c_joint, d_joint, H_joint = plp.joint_minimal_lp(A, b, lo, hi, F1, F2, t, eps)
    assert np.isclose(np.abs(d).max(), H_joint, rtol=1e-6, atol=1e-7)
    for c, dd in ((np.zeros_like(F1), d), (c_joint, d_joint)):  # both meet the spec on the region
        _, V2, const2 = plp.spec_rows(F1 + c, F2 + dd, t)
        v2, _, ok2 = plp.region_max(A, b, lo, hi, V2, const2)
        assert ok2 and v2.max() <= -eps + 1e-6
    d_re = plp.shift_patch(r, t, "reassure")
    assert abs(d_re.sum()) < 1e-9 and np.abs(d_re).max() >= np.abs(d).max() - 1e-12
    assert ((d_re[js] - d_re[t]) <= -r[js] + 1e-9).all()


def test_lp_jobs_independent_of_worker_count():
    jobs = []
    for seed in range(16):
        A, b, lo, hi, F1, F2, _, z0 = _toy_region(seed)
        jobs.append({"A": A, "b": b, "lo": lo, "hi": hi, "F1": F1, "F2": F2, "t": 0, "eps": 0.01,
                     "form": "minimal", "lp": "ranges"})
    one = plp.run_jobs(plp.patch_job, jobs, workers=1)
    two = plp.run_jobs(plp.patch_job, jobs, workers=2, min_jobs_per_worker=4)
    assert all(a["ok"] and np.array_equal(a["d"], b_["d"]) for a, b_ in zip(one, two))


# --------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_cuda_autocast_fp32_head(cache_dir):
    ctx, cd, original = _cell(cache_dir, {"kind": "points", "count": 10})
    dev = torch.device("cuda")
    cuda_orig = copy.deepcopy(original).to(dev).eval()
    method = create_method("prune", {"lp_workers": 1})
    data = lambda t: type(t)(t.x.to(dev), t.y.to(dev), t.augment)  # noqa: E731
    req = cd.request(copy.deepcopy(cuda_orig), heldout=False, forget=data(cd.forget), retain=data(cd.retain))
    seed_everything(0)
    out = method.unlearn(req)
    x = data(cd.test).floats()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        z = out.features(x)
        y = out(x)
    assert y.dtype == torch.float32
    with torch.no_grad():
        outside = out.head.supports(z.float()).amax(1) == 0
        prev, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, False
        ref = cuda_orig.head(z.float())
        torch.backends.cuda.matmul.allow_tf32 = prev
    assert torch.equal(y[outside], ref[outside])
    assert verify_certificate(out, data(cd.forget), cd.forget.y.to(dev)).all()
