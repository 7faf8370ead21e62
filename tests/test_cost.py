"""Cost on equal footing: example-pass counters, FLOPs, comparable reference times, no speed-up for a
no-op, no process-RSS memory figure on the CPU (attacks/costs.py, methods/cost.py)."""

from __future__ import annotations

import math

import pytest
import torch

from unlearnbench.attacks import declaration
from unlearnbench.benchmarks.harness import RunContext, run_cell
from unlearnbench.methods.cost import add_passes, count_work, per_example_flops
from unlearnbench.methods.models import build_model

from .helpers import tiny_suite

RECIPE = {"epochs": 3, "batch_size": 32, "lr": 0.05, "augment": False}


def _run(tmp, methods, **kw):
    suite = tiny_suite(methods=methods, recipe=RECIPE, **kw)
    ctx = RunContext(results_dir=tmp, device=torch.device("cpu"))
    out = {}
    for cell in suite.cells():
        record, _ = run_cell(cell, ctx)
        assert record.status == "ok", record.reason
        out[(cell.request.label, cell.method)] = record
    return out


def test_retrain_passes_are_epochs_times_retain_size_and_identical_across_runs(tmp_path):
    a = _run(tmp_path / "a", ["retrain", "finetune", "original"])
    b = _run(tmp_path / "b", ["retrain", "finetune", "original"])
    for key, rec in a.items():
        for name in ("passes_fwd", "passes_bwd", "flops", "passes_vs_retrain"):
            assert repr(rec.metrics[name]) == repr(b[key].metrics[name]), (key, name)
    rec = a[("random-10%", "retrain")]
    from unlearnbench.benchmarks.harness import prepare_cell

    suite = tiny_suite(methods=["retrain"], recipe=RECIPE)
    cd = prepare_cell(suite.cells()[0], RunContext(results_dir=tmp_path / "c", device=torch.device("cpu")))
    retain = len(cd.retain)
    assert rec.metrics["passes_fwd"] == rec.metrics["passes_bwd"] == RECIPE["epochs"] * retain
    assert rec.metrics["retrain_passes"] == 2 * RECIPE["epochs"] * retain
    assert rec.metrics["passes_vs_retrain"] == 1.0
    fwd, bwd = per_example_flops(cd.make_model(), cd.splits.image_shape)
    assert rec.metrics["flops"] == pytest.approx(RECIPE["epochs"] * retain * (fwd + bwd))
    ft = a[("random-10%", "finetune")]
    assert ft.metrics["passes_fwd"] > 0 and ft.metrics["passes_vs_retrain"] == pytest.approx(
        rec.metrics["retrain_passes"] / (ft.metrics["passes_fwd"] + ft.metrics["passes_bwd"]))


def test_noop_gets_no_speedup_and_cpu_memory_is_not_process_rss(tmp_path):
    recs = _run(tmp_path, ["original", "retrain", "finetune"])
    orig = recs[("random-10%", "original")]
    assert orig.metrics["passes_fwd"] == orig.metrics["passes_bwd"] == 0
    assert math.isnan(orig.metrics["speedup_vs_retrain"]) and math.isnan(orig.metrics["passes_vs_retrain"])
    for rec in recs.values():
        assert math.isnan(rec.metrics["peak_mem_mib"]), "on the CPU peak_mem_mib must stay empty, not process RSS"
        assert "not measured" in rec.env["peak_mem_note"]
        assert rec.metrics["retrain_time_in_run"] == 1.0  # trained by this process
        assert rec.env["reference_timing"]["measured_in_run"] is True
    assert recs[("random-10%", "finetune")].metrics["speedup_vs_retrain"] > 0


def test_incomparable_cached_reference_time_is_retimed(tmp_path):
    """A reference time cached under another timing environment (another device name, library version...)
    is not divided by a time measured now: the reference is timed again in this process."""
    from unlearnbench.benchmarks.harness import original_model, prepare_cell, reference_model, reference_timing

    suite = tiny_suite(methods=["retrain"], recipe=RECIPE)
    ctx = RunContext(results_dir=tmp_path, device=torch.device("cpu"))
    cd = prepare_cell(suite.cells()[0], ctx)
    original, _ = original_model(cd, ctx)
    _, info = reference_model(cd, ctx, original)
    fresh = RunContext(results_dir=tmp_path, device=torch.device("cpu"))  # another process: nothing timed here yet
    same = reference_timing(cd, fresh, original, info)
    assert same["in_run"] is False and same["time_s"] == info["train_time_s"]  # comparable: read from the cache
    other = dict(info, timing_env={**info["timing_env"], "device_name": "some other CPU"})
    again = reference_timing(cd, fresh, original, other)
    assert again["in_run"] is True and again["time_s"] != info["train_time_s"]
    forced = RunContext(results_dir=tmp_path, device=torch.device("cpu"), retime_reference=True)
    assert reference_timing(cd, forced, original, info)["in_run"] is True


def test_counter_counts_forward_backward_and_functorch_code_itself():
    model = build_model("mlp", (1, 8, 8), 10, [0.5], [0.3], hidden=[16], head_hidden=[8])
    with count_work() as outer:
        with count_work() as inner:
            out = model(torch.rand(5, 1, 8, 8))
            out.sum().backward()
        with torch.no_grad():
            model(torch.rand(3, 1, 8, 8))  # inference: forward only
        teacher = model(torch.rand(4, 1, 8, 8)).detach()  # output never backpropagated: no backward pass
        del teacher
        add_passes(fwd=2, bwd=20)  # what torch.func code reports for itself
    assert (inner.fwd, inner.bwd) == (5, 5)
    assert (outer.fwd, outer.bwd) == (5 + 3 + 4 + 2, 5 + 20)
    model(torch.rand(2, 1, 8, 8))  # outside any block: not counted anywhere
    assert outer.fwd == 14


def test_cost_values_are_declared():
    for name in ("time_s", "speedup_vs_retrain", "passes_fwd", "passes_bwd", "flops", "passes_vs_retrain",
                 "peak_mem_mib", "extra_params", "extra_bytes", "work.lp_solves"):
        spec = declaration(name)
        assert spec is not None and spec.kind == "cost", name
    assert declaration("retrain_time_s").kind == "diagnostic"
    assert declaration("avg_gap").kind == "gap" and declaration("avg_gap").direction == "lower"
    assert declaration("gap.mia.loss_auc").kind == "gap"
