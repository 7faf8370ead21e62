"""The baseline zoo (finetune ... ssd): the two public-code bugs stay fixed (SalUn's out-of-mask weights,
UNSIR's noise label), Boundary Expanding returns the original output size, class-only methods are
recorded "not applicable" on other requests, and every method lowers the forget accuracy of a small
class-forgetting cell (the digits, with the baselines suite's digits settings). Cells from tests/helpers.py,
CPU, seconds."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from unlearnbench.benchmarks.harness import RunContext, original_model, prepare_cell, run_cell, seed_everything
from unlearnbench.benchmarks.suite import load_suite
from unlearnbench.methods import Budget, accuracy, create_method, method_class
from unlearnbench.methods.salun import saliency_mask

from .helpers import tiny_cell_data, tiny_context, tiny_suite

BASELINES = ("finetune", "gradient_ascent", "neggrad_plus", "random_label", "salun", "l1_sparse", "scrub",
             "bad_teacher", "boundary_shrink", "boundary_expand", "unsir", "fisher", "ssd")
CLASS_ONLY = ("boundary_shrink", "boundary_expand", "unsir")
FORGET_CLASS = 3  # not 0: UNSIR's public-code bug labels its noise 0
DIGITS_RECIPE = {"epochs": 30, "batch_size": 64, "lr": 0.05, "weight_decay": 5e-4, "augment": False}  # default.toml


@pytest.fixture(scope="module")
def class_cell(tmp_path_factory):
    """The digits (1,287 training images, the default suite's MLP and recipe), forgetting class 3."""
    return tiny_cell_data(tmp_path_factory.mktemp("baselines-class"), recipe=DIGITS_RECIPE,
                          dataset={"name": "digits", "model": "mlp", "recipe": "tiny"},
                          requests=[{"kind": "class", "class": FORGET_CLASS}])


@pytest.fixture(scope="module")
def random_cell(tmp_path_factory):
    return tiny_cell_data(tmp_path_factory.mktemp("baselines-random"),
                          requests=[{"kind": "random", "fraction": 0.2}])


def _unlearn(name: str, cd, original, overrides: dict | None = None, budget: Budget | None = None):
    method = create_method(name, overrides or {})
    req = cd.request(copy.deepcopy(original), heldout="needs_heldout" in method.tags, budget=budget or Budget())
    seed_everything(cd.cell.seed)
    return method.unlearn(req), req


def test_all_baselines_registered():
    for name in BASELINES:
        cls = method_class(name)
        assert ("class_only" in cls.tags) == (name in CLASS_ONLY), name


# ------------------------------------------------------------------------------------ SalUn


def test_salun_weights_outside_the_mask_are_bit_identical(random_cell):
    ctx, cd, original = random_cell
    opts = {"epochs": 3.0, "batch_size": 32, "lr": 0.05}  # enough steps for weight decay/momentum to act
    method = create_method("salun", opts)
    assert method.weight_decay > 0 and method.momentum > 0
    out, req = _unlearn("salun", cd, original, opts)
    mask = saliency_mask(copy.deepcopy(original), cd.forget, fraction=method.mask_fraction,
                         batch_size=method.batch_size, select=method.mask_select)
    before, after = dict(original.named_parameters()), dict(out.named_parameters())
    n_in = n_out = moved_in = 0
    for name, m in mask.items():
        b, a = before[name].detach(), after[name].detach()
        assert torch.equal(a[~m], b[~m]), f"{name}: weights outside the SalUn mask moved"
        n_in += int(m.sum())
        n_out += int((~m).sum())
        moved_in += int((a[m] != b[m]).sum())
    assert abs(n_in / (n_in + n_out) - 0.5) < 1e-3
    assert req.info["mask_fraction"] == pytest.approx(n_in / (n_in + n_out))
    assert moved_in > 0.5 * n_in, "the weights inside the mask should train"


def test_random_label_without_mask_moves_every_weight(random_cell):
    """Control for the test above: the same training without a mask (random_label) moves the weights that
    SalUn freezes, through weight decay and momentum alone if not through their gradients."""
    ctx, cd, original = random_cell
    out, _ = _unlearn("random_label", cd, original, {"epochs": 3.0, "batch_size": 32, "lr": 0.05})
    moved = sum(int((a != b).sum()) for a, b in zip(out.parameters(), original.parameters()))
    total = sum(p.numel() for p in original.parameters())
    assert moved > 0.99 * total


def test_salun_mask_largest_and_smallest_are_complements(random_cell):
    ctx, cd, original = random_cell
    big = saliency_mask(copy.deepcopy(original), cd.forget, fraction=0.5, select="largest")
    small = saliency_mask(copy.deepcopy(original), cd.forget, fraction=0.5, select="smallest")
    total = sum(m.numel() for m in big.values())
    overlap = sum(int((big[k] & small[k]).sum()) for k in big)
    assert overlap <= 1 and sum(int(m.sum()) for m in big.values()) == total // 2


# ------------------------------------------------------------------------------------- UNSIR


def test_unsir_noise_is_labelled_with_the_forget_class(class_cell, monkeypatch):
    """Every image UNSIR trains on is paired with its label; noise images (off the 1/255 pixel grid of the
    data) must carry the forgotten class, data images never do."""
    from unlearnbench.methods import unsir

    ctx, cd, original = class_cell
    assert cd.split.forget_class == FORGET_CLASS != 0
    pending: list[torch.Tensor] = []
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real_forward, real_ce = unsir.forward, F.cross_entropy

    def forward(model, x):
        pending.append(x.detach().clone())
        return real_forward(model, x)

    def cross_entropy(logits, target, *args, **kwargs):
        if pending:  # a loss of unsir's own (noise optimisation, impair); repair uses the training loop's
            seen.append((pending.pop(), target.detach().clone()))
        return real_ce(logits, target, *args, **kwargs)

    monkeypatch.setattr(unsir, "forward", forward)
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", cross_entropy)
    opts = {"noise_batch": 8, "noise_epochs": 1, "noise_steps": 2, "retain_per_class": 0, "batch_size": 32}
    _unlearn("unsir", cd, original, opts)
    monkeypatch.undo()
    x = torch.cat([a for a, _ in seen]).flatten(1)
    y = torch.cat([b for _, b in seen])
    on_grid = ((x * 255 - (x * 255).round()).abs() < 1e-3).all(1) & (x >= 0).all(1) & (x <= 1).all(1)
    noise = ~on_grid
    assert int(noise.sum()) > 2 * 8, "the impair pass should show noise images beyond the 2 x 8 optimised ones"
    assert bool((y[noise] == FORGET_CLASS).all()), f"noise labelled {sorted(set(y[noise].tolist()))}"
    assert not bool((y[~noise] == FORGET_CLASS).any())
    assert int((~noise).sum()) > 0 and int((y[~noise] == 0).sum()) > 0  # data rows, class 0 among them


# -------------------------------------------------------------------------- Boundary Expanding


def test_boundary_expand_returns_the_original_output_size(class_cell):
    ctx, cd, original = class_cell
    out, _ = _unlearn("boundary_expand", cd, original, {"batch_size": 16, "lr": 0.01})
    x = cd.test.floats()
    with torch.no_grad():
        y_out, y_orig = out.eval()(x), original(x)
    assert y_out.shape == y_orig.shape == (len(cd.test), cd.splits.num_classes)
    assert out.head[-1].out_features == cd.splits.num_classes
    assert sum(p.numel() for p in out.parameters()) == sum(p.numel() for p in original.parameters())
    assert not torch.equal(y_out, y_orig)


# ----------------------------------------------------------------------------- not applicable


@pytest.mark.parametrize("name", CLASS_ONLY)
def test_class_only_methods_are_not_applicable_to_random(name, tmp_path):
    suite = tiny_suite(methods=[name], requests=[{"kind": "random", "fraction": 0.1}])
    record, scores = run_cell(suite.cells()[0], tiny_context(tmp_path))
    assert record.status == "not_applicable"
    assert name in record.reason and "random" in record.reason
    assert scores == {} and record.metrics == {}


# ------------------------------------------------------------------------ forgetting direction


def _digits_overrides() -> dict[str, dict]:
    """The per-dataset rescaling the baselines suite uses on the digits (tiny data, tiny MLP)."""
    suite = load_suite("baselines")
    digits = next(d for d in suite.datasets if d.spec.name == "digits")
    return {m: dict(o) for m, o in digits.overrides.items()}


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_lowers_forget_accuracy_on_a_class(name, class_cell):
    ctx, cd, original = class_cell
    before = accuracy(original, cd.forget)
    assert before > 0.9, "the tiny original should fit its training data"
    out, _ = _unlearn(name, cd, original, _digits_overrides().get(name, {}))
    after = accuracy(out.eval(), cd.forget)
    assert after < before - 0.2, f"{name}: forget accuracy {before:.3f} -> {after:.3f}"
    assert accuracy(out, cd.retain) > 0.5, f"{name} destroyed the retain set"


# ----------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("name", BASELINES)
def test_baseline_runs_on_cuda_with_a_conv_net(name, tmp_path):
    """The CUDA paths (bf16 autocast, channels_last, fused optimisers, vmap'd per-example Fisher on convs) run
    and change the model; whether a 240-image synthetic cell is forgotten is the CPU tests' business."""
    suite = tiny_suite(methods=[name], requests=[{"kind": "class", "class": 1}],
                       dataset={"name": "synthetic", "model": "small_cnn", "recipe": "tiny",
                                "options": {"size": 16, "channels": 3}})
    ctx = RunContext(results_dir=tmp_path, device=torch.device("cuda"))
    cd = prepare_cell(suite.cells()[0], ctx)
    original, _ = original_model(cd, ctx)
    out, _ = _unlearn(name, cd, original, _digits_overrides().get(name, {}))
    with torch.no_grad():
        y = out.eval()(cd.test.floats())
        y0 = original(cd.test.floats())
    assert y.shape == y0.shape == (len(cd.test), cd.splits.num_classes) and bool(torch.isfinite(y).all())
    assert not torch.equal(y, y0), f"{name} left the model unchanged on CUDA"


def test_clip_gradients_bounds_every_step():
    from unlearnbench.methods._baseline_utils import clip_gradients

    layer = torch.nn.Linear(8, 4)
    opt = clip_gradients(torch.optim.SGD(layer.parameters(), lr=1.0), max_norm=0.5)
    before = [p.detach().clone() for p in layer.parameters()]
    (1000.0 * layer(torch.ones(3, 8)).sum()).backward()
    opt.step()
    moved = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(layer.parameters(), before)))
    assert 0.49 < float(moved) <= 0.5 + 1e-5


@pytest.mark.parametrize("kind", ["empirical", "true"])
def test_fisher_diagonal_matches_a_per_example_loop(kind, random_cell):
    from unlearnbench.methods._baseline_utils import fisher_diagonal

    ctx, cd, original = random_cell
    model = copy.deepcopy(original).eval()
    data = cd.retain.subset(torch.arange(24))
    fast = fisher_diagonal(model, data, kind=kind, chunk=8)
    slow = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    x = data.floats()
    for i in range(len(data)):
        logp = F.log_softmax(model(x[i:i + 1]), dim=1)[0]
        weights = {int(data.y[i]): 1.0} if kind == "empirical" else dict(enumerate(logp.exp().tolist()))
        for k, w in weights.items():
            grads = torch.autograd.grad(logp[k], list(model.parameters()), retain_graph=True)
            for (n, _), g in zip(model.named_parameters(), grads):
                slow[n] += w * g.pow(2) / len(data)
    for n in slow:
        assert torch.allclose(fast[n], slow[n], rtol=1e-4, atol=1e-9), n
