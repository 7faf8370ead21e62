"""Entry-point plug-ins (``unlearnbench.plugins``): installed distributions register methods, metrics,
datasets and models; one that fails to import or registers a name twice is reported with its
distribution's name and skipped, never a crash.

The distributions here are real to ``importlib.metadata`` -- a ``*.dist-info`` folder with METADATA and
``entry_points.txt`` on ``sys.path``, which is what pip leaves in site-packages -- and each test runs a
fresh interpreter, so discovery happens at start-up as for a user. (``tests/test_example_plugin.py``
installs the example plug-in with pip.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

GOOD = '''
"""A plug-in for the tests: one method, one model, one dataset source, one metric group. The method
fine-tunes the head only (the CF-k baseline of Goel et al., arXiv 2201.06640), for the tests."""
from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from unlearnbench.attacks import MetricResult, register_metric, value
from unlearnbench.datasets import ImageSet, SourceData, register_source
from unlearnbench.methods import Method, fit, param, register
from unlearnbench.methods.models import register_model, relu_head


@register("head_ft", summary="fine-tune the head on the retain set (test plug-in)",
          paper="Goel et al., arXiv 2201.06640")
@dataclass(frozen=True)
class HeadFT(Method):
    epochs: float = param(2.0, "epochs over the retain set")

    def unlearn(self, request):
        fit(request.model, request.retain, replace(request.recipe, epochs=self.epochs, lr=0.01),
            seed=request.seed, budget=request.budget, params=list(request.model.head.parameters()))
        return request.model


@register_model("wide_mlp")
def wide_mlp(shape, num_classes, width: int = 48):
    c, h, w = shape
    body = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, width), nn.ReLU())
    return body, width, relu_head(width, (16,), num_classes), False


@register_source("stripes", description="horizontal vs vertical stripes (test plug-in)", default_heldout=20,
                 needs_files=False)
def stripes(root=None, download=False):
    g = torch.Generator().manual_seed(0)
    def draw(n):
        y = torch.arange(n) % 2
        base = torch.zeros(n, 1, 8, 8)
        base[y == 0, :, ::2, :] = 1.0
        base[y == 1, :, :, ::2] = 1.0
        x = (0.7 * base + 0.3 * torch.rand(n, 1, 8, 8, generator=g)).clamp(0, 1)
        return ImageSet((x * 255).round().to(torch.uint8), y.to(torch.int64))
    return SourceData("stripes", draw(160), draw(60), ("h", "v"))


@register_metric("mean_margin", produces=(value("mean_margin", "diagnostic", "none", "logit",
                                                "mean top-1 minus top-2 logit on the test split", gap=False),),
                 description="mean logit margin on the test split (test plug-in)")
def mean_margin(ctx):
    top = ctx.logits("test").topk(2, dim=1).values
    return MetricResult({"mean_margin": float((top[:, 0] - top[:, 1]).mean())})
'''

BROKEN = '''
import a_module_that_is_not_installed  # noqa: F401
'''

DUPLICATE = '''
"""Registers a fine helper, then a name the built-ins already use: the whole plug-in is skipped."""
from dataclasses import dataclass

from unlearnbench.methods import Method, register


@register("dup_helper", summary="registered before the duplicate; must be undone")
@dataclass(frozen=True)
class Helper(Method):
    def unlearn(self, request):
        return request.model


@register("finetune", summary="a second finetune")
@dataclass(frozen=True)
class SecondFinetune(Method):
    def unlearn(self, request):
        return request.model
'''

DUPLICATE_MODEL = '''
from unlearnbench.methods.models import register_model, _mlp

register_model("mlp", _mlp)
'''


def _dist(root: Path, name: str, version: str, module: str, source: str, groups: dict[str, str]) -> None:
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("".join(f"[{g}]\n{ep} = {module}\n\n" for g, ep in groups.items()))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("site")
    _dist(root, "ub-good", "1.0", "ub_good", GOOD,
          {"unlearnbench.methods": "head_ft", "unlearnbench.models": "wide_mlp", "unlearnbench.datasets": "stripes",
           "unlearnbench.metrics": "mean_margin"})
    _dist(root, "ub-broken", "0.1", "ub_broken", BROKEN, {"unlearnbench.methods": "broken"})
    _dist(root, "ub-dup", "0.2", "ub_dup", DUPLICATE, {"unlearnbench.methods": "dup"})
    _dist(root, "ub-dupmodel", "0.3", "ub_dupmodel", DUPLICATE_MODEL, {"unlearnbench.models": "mlp_again"})
    return root


def _python(site: Path, code: str, tmp: Path) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {**os.environ, "PYTHONPATH": path,
           "UNLEARNBENCH_CACHE": str(tmp / "cache")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp, timeout=300)


PROBE = '''
import json, torch
from pathlib import Path
from unlearnbench import plugins
from unlearnbench.methods import method_names, method_class
from unlearnbench.methods.models import MODELS
from unlearnbench.datasets import list_sources
from unlearnbench.attacks import list_metrics
names = method_names()
print(json.dumps({
    "methods": names, "origins": {n: method_class(n).origin for n in names},
    "finetune_module": method_class("finetune").__module__, "models": sorted(MODELS),
    "models_origin": MODELS.origins, "sources": [s.name for s in list_sources()],
    "metrics": [m.name for m in list_metrics()],
    "problems": [[p.group, p.distribution, p.error] for p in plugins.problems()],
    "paper": method_class("head_ft").paper}))
# a cell that uses the plug-in's dataset, model, method and metric
from unlearnbench.benchmarks.harness import RunContext, run_cell
from unlearnbench.benchmarks.suite import parse_suite
suite = parse_suite({"name": "p", "seeds": [0], "methods": ["head_ft"], "metrics": ["accuracy", "mean_margin"],
                     "recipes": {"r": {"epochs": 6, "batch_size": 32, "lr": 0.05, "augment": False}},
                     "datasets": [{"name": "stripes", "model": "wide_mlp", "recipe": "r"}],
                     "requests": [{"kind": "random", "fraction": 0.1}]}, path="<test>")
rec, _ = run_cell(suite.cells()[0], RunContext(results_dir=Path("res"), device=torch.device("cpu")))
print(json.dumps({"status": rec.status, "reason": rec.reason, "metrics": rec.metrics}))
'''


@pytest.fixture(scope="module")
def probe(site, tmp_path_factory):
    res = _python(site, PROBE, tmp_path_factory.mktemp("probe"))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    return res, json.loads(lines[-2]), json.loads(lines[-1])


def test_plugins_register_in_every_group_and_broken_ones_are_skipped(probe):
    res, got, _ = probe
    # the good distribution reached every registry, with its origin
    assert "head_ft" in got["methods"] and got["origins"]["head_ft"] == "ub-good 1.0"
    assert got["origins"]["finetune"] == "built-in" and got["paper"] == "Goel et al., arXiv 2201.06640"
    assert "wide_mlp" in got["models"] and got["models_origin"]["wide_mlp"] == "ub-good 1.0"
    assert "stripes" in got["sources"] and "mean_margin" in got["metrics"]
    # the broken one (import error) and the duplicates are skipped, named by distribution
    problems = {p[1]: p for p in got["problems"]}
    assert set(problems) == {"ub-broken 0.1", "ub-dup 0.2", "ub-dupmodel 0.3"}
    assert "ModuleNotFoundError" in problems["ub-broken 0.1"][2]
    assert "'finetune' is registered twice" in problems["ub-dup 0.2"][2]
    assert "'mlp' is registered twice" in problems["ub-dupmodel 0.3"][2]
    # skipped means skipped: the helper the duplicate plug-in registered first is gone, the built-ins stand
    assert "dup_helper" not in got["methods"] and got["finetune_module"] == "unlearnbench.methods.finetune"
    assert got["models_origin"]["mlp"] == "built-in"
    for dist in ("ub-broken", "ub-dup", "ub-dupmodel"):
        assert f"warning: skipped plug-in '{dist}" in res.stderr and f"pip uninstall {dist}" in res.stderr


def test_list_shows_origins_and_survives_broken_plugins(site, tmp_path):
    res = _python(site, "import sys; from unlearnbench.benchmarks.cli import main; "
                        "sys.exit(main(['list', 'methods']) or main(['list', 'models']))", tmp_path)
    assert res.returncode == 0, res.stderr
    assert "ub-good 1.0" in next(line for line in res.stdout.splitlines() if "wide_mlp" in line)
    row = next(line for line in res.stdout.splitlines() if "head_ft" in line)
    assert "ub-good 1.0" in row
    assert "built-in" in next(line for line in res.stdout.splitlines() if " finetune " in line)
    assert "skipped plug-in(s)" in res.stdout and "ub-broken 0.1 (unlearnbench.methods)" in res.stdout


def test_a_cell_runs_on_plugin_dataset_model_method_and_metric(probe):
    _, _, got = probe
    assert got["status"] == "ok", got["reason"]
    assert got["metrics"]["test_acc"] > 0.9  # stripes are easy: the plug-in model learned them
    assert "mean_margin" in got["metrics"] and got["metrics"]["passes_bwd"] > 0
