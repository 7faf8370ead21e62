"""The one training loop and evaluation: it learns, respects budgets and schedules, and the CUDA fast
path (bf16 autocast, channels_last, fused SGD, padded evaluation batches) computes the same function."""

from __future__ import annotations

import pytest
import torch

from unlearnbench.datasets import DatasetSpec, TensorData, build_splits
from unlearnbench.methods import Budget, Recipe, accuracy, fit, predict
from unlearnbench.methods.models import build_model, head_linears
from unlearnbench.methods.training import lr_factor, prepare


@pytest.fixture(scope="module")
def digits():
    sp = build_splits(DatasetSpec("digits"))
    return sp


def _data(sp, device):
    return TensorData.from_imageset(sp.train, device), TensorData.from_imageset(sp.test, device)


@pytest.mark.parametrize("arch", ["mlp", "small_cnn"])
def test_fit_learns_digits_on_cpu(digits, arch):
    train, test = _data(digits, "cpu")
    torch.manual_seed(0)
    model = build_model(arch, digits.image_shape, 10, [0.3], [0.3])
    assert accuracy(model, test) < 0.3
    stats = fit(model, train, Recipe(epochs=8, batch_size=64, lr=0.05, augment=False), seed=0)
    assert accuracy(model, test) > 0.9
    assert stats.steps == 8 * (len(train) // 64) and not model.training


def test_budget_caps_epochs_and_fractional_epochs(digits):
    train, _ = _data(digits, "cpu")
    model = build_model("mlp", digits.image_shape, 10, [0.3], [0.3])
    per_epoch = len(train) // 64
    stats = fit(model, train, Recipe(epochs=10, batch_size=64), seed=0, budget=Budget(max_epochs=0.5))
    assert stats.steps == -(-per_epoch // 2) and stats.epochs_run == pytest.approx(stats.steps / per_epoch)
    stats = fit(model, train.subset(torch.arange(10)), Recipe(epochs=3, batch_size=64), seed=0)
    assert stats.steps == 3  # a set smaller than one batch is one batch, never dropped


def test_on_epoch_end_stops(digits):
    train, _ = _data(digits, "cpu")
    model = build_model("mlp", digits.image_shape, 10, [0.3], [0.3])
    seen = []
    stats = fit(model, train, Recipe(epochs=5, batch_size=256), seed=0, on_epoch_end=lambda e: seen.append(e) or e == 2)
    assert seen == [1, 2] and stats.stopped_early and stats.steps == 2 * (len(train) // 256)


def test_onecycle_schedule_shape():
    total = 100
    f = [lr_factor(s, total, "onecycle", 0.2) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and max(f) == pytest.approx(1.0) and f.index(max(f)) == 20
    assert f[-1] < 0.02 and all(a >= b for a, b in zip(f[20:], f[21:]))
    assert lr_factor(5, 10, "constant", 0.2) == 1.0


def test_models_expose_features_and_relu_head():
    for arch, shape in (("mlp", (1, 8, 8)), ("small_cnn", (1, 28, 28)), ("resnet18", (3, 32, 32))):
        m = build_model(arch, shape, 10, [0.5] * shape[0], [0.25] * shape[0]).eval()
        x = torch.rand(2, *shape)
        assert torch.equal(m(x), m.head(m.features(x)))
        assert len(head_linears(m)) == 2 and head_linears(m)[-1].out_features == 10


@pytest.mark.gpu
def test_cuda_fit_learns_a_conv_net_in_bf16(digits):
    """Regression: autocast around several optimizer steps reuses stale low-precision weights (the
    model then stays at chance). One step per autocast region must train like fp32 does."""
    train, test = _data(digits, "cuda")
    torch.manual_seed(0)
    model = prepare(build_model("small_cnn", digits.image_shape, 10, [0.3], [0.3]), "cuda")
    fit(model, train, Recipe(epochs=10, batch_size=64, lr=0.05, augment=False), seed=0)
    assert accuracy(model, test) > 0.9


@pytest.mark.gpu
def test_cuda_padded_eval_batches_give_the_same_logits(digits):
    train, _ = _data(digits, "cuda")
    torch.manual_seed(0)
    model = prepare(build_model("small_cnn", digits.image_shape, 10, [0.3], [0.3]), "cuda").eval()
    n = len(train)
    padded = predict(model, train, batch_size=100)  # ragged last batch padded to 100 rows
    whole = predict(model, train, batch_size=n)
    assert padded.shape == (n, 10)
    assert torch.allclose(padded, whole, atol=5e-2, rtol=0)  # bf16: same function, different kernels
    assert (padded.argmax(1) == whole.argmax(1)).float().mean() > 0.99
