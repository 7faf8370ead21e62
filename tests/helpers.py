"""Builders for tiny cells used across tests (no files, CPU, seconds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from unlearnbench.benchmarks.harness import RunContext, original_model, prepare_cell
from unlearnbench.benchmarks.suite import parse_suite

TINY_RECIPE = {"epochs": 8, "batch_size": 32, "lr": 0.05, "augment": False}


def tiny_suite(methods: list[str] | None = None, requests: list[dict[str, Any]] | None = None,
               seeds: list[int] | None = None, dataset: dict[str, Any] | None = None,
               metrics: list[str] | None = None, recipe: dict[str, Any] | None = None, **top: Any):
    data = {
        "name": top.pop("name", "tiny"),
        "seeds": seeds or [0],
        "methods": methods or ["original", "retrain"],
        "metrics": metrics or ["accuracy", "mia.loss_auc", "mia.svc_efficacy"],
        "recipes": {"tiny": recipe or TINY_RECIPE},
        "datasets": [dataset or {"name": "synthetic", "model": "mlp", "recipe": "tiny",
                                 "model_options": {"hidden": [32], "head_hidden": [16]}}],
        "requests": requests or [{"kind": "random", "fraction": 0.1}],
        **top,
    }
    return parse_suite(data, path="<test>")


def tiny_context(tmp: Path) -> RunContext:
    return RunContext(results_dir=tmp, device=torch.device("cpu"))


def tiny_cell_data(tmp: Path, **kw):
    """(ctx, cell data, trained original) for the first cell of a tiny suite."""
    suite = tiny_suite(**kw)
    ctx = tiny_context(tmp)
    cell = suite.cells()[0]
    cd = prepare_cell(cell, ctx)
    original, _ = original_model(cd, ctx)
    return ctx, cd, original
