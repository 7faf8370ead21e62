"""Speed benchmarks (pytest-benchmark; on demand: ``pytest benchmarks/perf --benchmark-only``).

- ``test_train_epoch``: one epoch of ``fit`` with the suite's recipe over the device-resident training
  pool (small CNN on MNIST, ResNet-18 on ``cifar10-jpeg``); ``extra_info``: images/s, and for
  ResNet-18 the achieved TFLOP/s and the compute floor at the ANCHORS.md bf16 rate.
- ``test_predict``: evaluation throughput of ``predict`` on the test set.
- ``test_harness_overhead``: a whole ``run_cell`` on a warm model cache; ``extra_info``: the harness's
  overhead (wall - unlearn - report - evaluate), absolute and as a fraction of the cell.
- ``test_shadow_training``: K shadow models of the MNIST small CNN, ``vmap`` vs ``loop``
  (``attacks.shadows.train_shadow_models``).

The figures are recorded, not asserted against the targets: a missed target is reported with its
profile (``python -m unlearnbench.benchmarks.perf.gpu_report``), not hidden behind a red test.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from unlearnbench.benchmarks.perf import _common as C
from unlearnbench.benchmarks.harness import RunContext, run_cell
from unlearnbench.benchmarks.suite import load_suite
from unlearnbench.methods import method_names
from unlearnbench.methods.training import fit, predict

WORKLOADS = ("mnist", "cifar")


def _median(benchmark) -> float:
    return float(benchmark.stats.stats.median)


@pytest.mark.benchmark(group="train-epoch")
@pytest.mark.parametrize("key", WORKLOADS)
def test_train_epoch(benchmark, perf, key: str):
    cd, synthetic = perf.cell_data(key)
    recipe = cd.cell.dataset.recipe
    model = cd.make_model()
    fit(model, cd.train, recipe, seed=0, epochs=1.0 if perf.full else 0.25)  # warm-up: autotuning, caches
    seeds = itertools.count(1)

    def one_epoch() -> None:
        fit(model, cd.train, recipe, seed=next(seeds), epochs=1.0)
        C.sync(cd.device)

    benchmark.pedantic(one_epoch, rounds=perf.rounds, iterations=1)
    t = _median(benchmark)
    n = len(cd.train)
    info = {"images": n, "images_per_s": n / t, "batch_size": recipe.batch_size, "device": str(cd.device),
            "synthetic": synthetic, "size": perf.size}
    if key == "cifar":
        flops = C.train_flops_per_image(cd)
        info.update(gflop_per_image=flops / 1e9, achieved_tflops=flops * n / t / 1e12,
                    floor_s=flops * n / (C.ANCHOR_H100_BF16_TFLOPS * 1e12), target_epoch_s=1.0)
        assert 0 < flops < 1e11
    benchmark.extra_info.update(info)
    assert math.isfinite(t) and t > 0
    assert not any(torch.isnan(p).any() for p in model.parameters())


@pytest.mark.benchmark(group="predict")
@pytest.mark.parametrize("key", WORKLOADS)
def test_predict(benchmark, perf, key: str):
    cd, synthetic = perf.cell_data(key)
    data = cd.test if perf.full else cd.test.subset(torch.arange(min(1024, len(cd.test))))
    model = cd.make_model()
    batch = cd.cell.dataset.recipe.eval_batch_size
    predict(model, data, batch)  # warm-up

    def run() -> torch.Tensor:
        out = predict(model, data, batch)
        C.sync(cd.device)
        return out

    logits = benchmark.pedantic(run, rounds=perf.rounds, iterations=1)
    assert logits.shape == (len(data), cd.splits.num_classes)
    benchmark.extra_info.update(images=len(data), images_per_s=len(data) / _median(benchmark), batch_size=batch,
                                synthetic=synthetic, size=perf.size)


@pytest.mark.benchmark(group="harness-overhead")
@pytest.mark.parametrize("method", ("original", "finetune"))
@pytest.mark.parametrize("key", ("digits", "cifar"))
def test_harness_overhead(benchmark, perf, key: str, method: str, tmp_path):
    if method not in method_names():
        pytest.skip(f"method {method!r} is not registered")
    if key == "cifar" and not perf.full:
        pytest.skip("a ResNet-18 cell scores 10k test images: --perf-size full (a GPU) only")
    if key == "digits":
        cell = next(c for c in load_suite("default").cells(methods=[method], seeds=[0]))
    else:
        # the overhead does not depend on how long the models trained: a 1-epoch recipe builds them quickly
        suite = C.perf_suite(perf.workload(key), methods=(method,), recipe={"epochs": 1.0}, **perf.suite_kw(key))
        cell = suite.cells()[0]
    ctx = RunContext(results_dir=tmp_path, data_root=perf.data_root, device=perf.device)
    first, _ = run_cell(cell, ctx)  # builds the cached models and the reference's scores
    assert first.status == "ok", first.reason
    overheads: list[dict[str, float]] = []

    def run() -> None:
        overheads.append(C.run_cell_measured(cell, ctx)[1])

    benchmark.pedantic(run, rounds=perf.rounds, iterations=1)
    med = sorted(overheads, key=lambda m: m["overhead_s"])[len(overheads) // 2]
    assert all(m["cold_original"] == 0 and m["cold_reference"] == 0 for m in overheads)  # a warm cache
    assert 0 < med["work_s"] <= med["total_s"] * 1.01
    benchmark.extra_info.update(overhead_s=med["overhead_s"], overhead_frac=med["overhead_frac"],
                                target_frac=0.05, phases={k: v for k, v in med.items() if k.startswith("cell.")},
                                size=perf.size)


@pytest.mark.benchmark(group="shadow-models")
@pytest.mark.parametrize("many", (False, True), ids=("K-few", "K-many"))
@pytest.mark.parametrize("mode", ("vmap", "loop"))
def test_shadow_training(benchmark, perf, mode: str, many: bool):
    shadows = pytest.importorskip("unlearnbench.attacks.shadows", reason="attacks.shadows is not there yet")
    if not hasattr(shadows, "train_shadow_models"):
        pytest.skip("attacks.shadows has no train_shadow_models yet")
    k = (64 if many else 16) if perf.full else (4 if many else 2)
    cd, synthetic = perf.cell_data("mnist")
    data = cd.train
    rng = np.random.default_rng(0)
    if hasattr(shadows, "balanced_memberships"):
        member = shadows.balanced_memberships(k, len(data), rng)
    else:
        member = rng.random((k, len(data))) < 0.5
    recipe = C.recipe_of(cd, batch_size=256, epochs=1.0 if perf.full else 0.5)
    seeds = list(range(1, k + 1))
    shadows.train_shadow_models(cd.make_model, data, member[:, :], recipe, seeds, cd.device, mode=mode,
                                epochs=2 * 256 / len(data))  # warm-up: a couple of steps

    def run():
        out = shadows.train_shadow_models(cd.make_model, data, member, recipe, seeds, cd.device, mode=mode)
        C.sync(cd.device)
        return out

    states = benchmark.pedantic(run, rounds=1 if perf.full else 2, iterations=1)
    assert len(states) == k
    steps = math.ceil(recipe.epochs * math.ceil(int(member[0].sum()) / recipe.batch_size))
    benchmark.extra_info.update(k=k, mode=mode, steps_per_shadow=steps,
                                ms_per_step_all_k=1e3 * _median(benchmark) / steps, synthetic=synthetic,
                                size=perf.size)
