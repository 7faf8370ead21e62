"""What the pytest-benchmark files and ``gpu_report`` share: the measured workloads (dataset, model and
the ``baselines`` suite's recipe), cells built through the harness itself (so the data, its device
placement and the models are exactly a run's), timers that synchronise the device, FLOP counts and
the harness-overhead arithmetic.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from unlearnbench.benchmarks.harness import CellData, RunContext, prepare_cell, run_cell
from unlearnbench.benchmarks.suite import Suite, SuiteError, load_suite, parse_suite
from unlearnbench.methods import method_names
from unlearnbench.methods.models import build_model
from unlearnbench.methods.training import Recipe, fit, predict

RECIPE_SUITE = "baselines"
# (dataset, model) of each workload, and a stand-in recipe used only if the suite lacks the dataset.
WORKLOADS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "mnist": ("mnist", "small_cnn", {"epochs": 5.0, "batch_size": 128, "lr": 0.05, "augment": False}),
    "cifar": ("cifar10-jpeg", "resnet18", {"epochs": 40.0, "batch_size": 512, "lr": 0.2, "label_smoothing": 0.1,
                                           "augment": True}),
}
# synthetic stand-ins with the real images' shape, for runs without the data files
SYNTHETIC_SHAPE = {"mnist": (1, 28), "cifar": (3, 32)}
# ResNet-18 (CIFAR stem) fwd+bwd per 32x32 image, and the bf16 peak measured on the lent H100 (ANCHORS.md)
ANCHOR_RESNET_GFLOP = 3.33
ANCHOR_H100_BF16_TFLOPS = 796.0
# metrics that train models of their own (LiRA, U-LiRA): not part of a cell's cost measured here
EXPENSIVE_METRICS = ("mia.lira", "mia.ulira")


@dataclass(frozen=True)
class Workload:
    key: str  # "mnist" | "cifar"
    dataset: str
    model: str
    recipe: dict[str, Any]
    model_options: dict[str, Any] = field(default_factory=dict)
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # suite + dataset overrides
    metrics: tuple[str, ...] = ("accuracy", "mia.loss_auc", "mia.svc_efficacy")
    origin: str = "built-in stand-in"

    def with_model_options(self, **options: Any) -> "Workload":
        return Workload(self.key, self.dataset, self.model, self.recipe, {**self.model_options, **options},
                        self.method_options, self.metrics, self.origin)


def workload(key: str, suite: str = RECIPE_SUITE) -> Workload:
    """The workload with the recipe, model options and method overrides of ``suite``'s entry for its
    dataset and model (the recipe a real run uses); a stand-in recipe if the suite has no such entry."""
    if key not in WORKLOADS:
        raise ValueError(f"unknown workload {key!r}; known: {sorted(WORKLOADS)}")
    dataset, model, fallback = WORKLOADS[key]
    try:
        s = load_suite(suite)
    except SuiteError:
        s = None
    entry = next((d for d in (s.datasets if s else ()) if d.spec.name == dataset and d.model == model), None)
    if s is None or entry is None:
        return Workload(key, dataset, model, dict(fallback))
    methods = {m: {**s.method_options.get(m, {}), **entry.overrides.get(m, {})}
               for m in set(s.method_options) | set(entry.overrides)}
    metrics = tuple(m for m in s.metrics if not m.startswith(EXPENSIVE_METRICS))
    return Workload(key, dataset, model, entry.recipe.as_dict(), dict(entry.model_options), methods, metrics,
                    f"suite {s.name!r}, recipe {entry.recipe_name!r}")


def perf_suite(w: Workload, *, methods: tuple[str, ...] = ("original",), seeds: tuple[int, ...] = (0,),
               requests: tuple[dict[str, Any], ...] = ({"kind": "random", "fraction": 0.1},),
               recipe: dict[str, Any] | None = None, train_subset: int | None = None, heldout: int | None = None,
               synthetic: bool = False, name: str = "perf") -> Suite:
    """A one-dataset suite for ``w`` (parsed like any suite file), optionally smaller or synthetic."""
    ds: dict[str, Any] = {"name": w.dataset, "model": w.model, "recipe": "perf", "model_options": w.model_options}
    if synthetic:
        channels, size = SYNTHETIC_SHAPE[w.key]
        ds["name"] = "synthetic"
        ds["options"] = {"n_train": max(train_subset or 512, 64), "n_test": 256, "classes": 10, "size": size,
                         "channels": channels}
        ds["label"] = f"synthetic-{w.key}"
    elif train_subset:
        ds["train_subset"] = train_subset
    if heldout is not None:
        ds["heldout"] = heldout
    known = set(method_names())
    return parse_suite({
        "name": name, "seeds": list(seeds), "methods": list(methods), "metrics": list(w.metrics),
        "recipes": {"perf": {**w.recipe, **(recipe or {})}}, "datasets": [ds], "requests": list(requests),
        "method_options": {m: o for m, o in w.method_options.items() if m in known and m in methods},
    }, path=f"<perf {w.key}>")


def default_data_root() -> str | None:
    """``$UNLEARNBENCH_DATA_ROOT``, else ``shared/data`` beside the checkout, else None."""
    env = os.environ.get("UNLEARNBENCH_DATA_ROOT")
    if env:
        return env
    cand = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return str(cand) if cand.is_dir() else None


def has_data(key: str, data_root: str | None) -> bool:
    if not data_root:
        return False
    root = Path(data_root)
    if key == "mnist":
        return any((root / d).is_dir() for d in ("mnist", "MNIST"))
    return (root / "cifar10_jpeg").is_dir() or (root / "cifar10-jpeg.tar.gz").is_file()


# ------------------------------------------------------------------------------------ timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """Wall seconds of ``fn(*args, **kwargs)`` with the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    sync(device)
    return time.perf_counter() - t0, out


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return float("nan") if n == 0 else (s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2]))


def cell_data(suite: Suite, ctx: RunContext, index: int = 0) -> CellData:
    return prepare_cell(suite.cells()[index], ctx)


def recipe_of(cd: CellData, **changes: Any) -> Recipe:
    return Recipe.from_dict({**cd.cell.dataset.recipe.as_dict(), **changes})


def train_epochs(cd: CellData, recipe: Recipe, repeats: int, warmup_epochs: float = 1.0
                 ) -> tuple[list[float], nn.Module]:
    """Seconds of each of ``repeats`` one-epoch ``fit`` calls over the cell's training pool, after an untimed
    warm-up (CUDA context, cuDNN autotuning of every batch shape including the partial last one)."""
    model = cd.make_model()
    if warmup_epochs > 0:
        fit(model, cd.train, recipe, seed=0, epochs=warmup_epochs)
    times = [timed(cd.device, fit, model, cd.train, recipe, seed=i + 1, epochs=1.0)[0] for i in range(repeats)]
    return times, model


def predict_seconds(model: nn.Module, data, batch_size: int, device: torch.device, repeats: int = 3) -> float:
    predict(model, data, batch_size)  # warm-up (autotuning of the eval shapes)
    return median([timed(device, predict, model, data, batch_size)[0] for _ in range(repeats)])


def train_flops_per_image(cd: CellData) -> float:
    """Forward + backward FLOPs per image of the cell's architecture (torch's FLOP counter, on the CPU)."""
    from torch.utils.flop_counter import FlopCounterMode

    d = cd.cell.dataset
    model = build_model(d.model, cd.splits.image_shape, cd.splits.num_classes, cd.mean, cd.std, **d.model_options)
    x = torch.rand(2, *cd.splits.image_shape)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops() / 2


def bf16_matmul_tflops(device: torch.device, n: int = 8192, iters: int = 20) -> float:
    """Achievable bf16 dense matmul rate of the GPU (the denominator of the compute floor)."""
    if device.type != "cuda":
        return float("nan")
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    t, _ = timed(device, lambda: [a @ b for _ in range(iters)])
    return 2 * n ** 3 * iters / t / 1e12


# ------------------------------------------------------------------------- harness overhead


def overhead(metrics: dict[str, float], wall_s: float, built_s: float = 0.0) -> dict[str, float]:
    """A cell's harness overhead: its wall time less unlearning (and the method's report), the training of
    models built in that cell (``built_s``) and the attacks' compute (the evaluate phase). Measure it on
    a warm cache: a cell that builds its reference also scores it (once per reference, inside its
    ``reference`` phase), which this arithmetic would count as overhead."""
    work = sum(metrics.get(f"cell.{p}_s", 0.0) for p in ("unlearn", "report", "evaluate")) + built_s
    over = wall_s - work
    return {"total_s": wall_s, "work_s": work, "overhead_s": over,
            "overhead_frac": over / wall_s if wall_s > 0 else 0.0,
            **{k: v for k, v in metrics.items() if k.startswith("cell.")}}


def run_cell_measured(cell, ctx: RunContext) -> tuple[Any, dict[str, float]]:
    """``run_cell`` timed from outside (device synchronised), plus its overhead; models the cell had to
    build count as training, not overhead."""
    cd = prepare_cell(cell, ctx)
    cold = {"original": not ctx.cache.has(cd.original_key), "reference": not ctx.cache.has(cd.reference_key)}
    wall, (record, _) = timed(ctx.device, run_cell, cell, ctx)
    if record.status != "ok":
        raise RuntimeError(f"{cell.label}: {record.status}: {record.reason[:300]}")
    m = record.metrics
    built = (m["original_train_time_s"] if cold["original"] else 0.0) + \
            (m["retrain_time_s"] if cold["reference"] else 0.0)
    return record, {**overhead(m, wall, built), "built_s": built, "cold_original": float(cold["original"]),
                    "cold_reference": float(cold["reference"])}


# ----------------------------------------------------------------------------------- profile

_KERNEL_KINDS = [
    ("convolution", r"conv|cudnn|implicit_gemm|xmma|winograd|dgrad|wgrad|fprop"),
    ("matmul", r"gemm|matmul|cublas|cutlass"),
    ("batchnorm", r"batch_?norm|bn_|welford"),
    ("optimizer", r"multi_tensor|fused_sgd|fused_adam|_foreach|sgd"),
    ("gather / index (data, augmentation)", r"index|gather|scatter|randperm|pad"),
    ("copy / layout / cast", r"copy|memcpy|memset|contiguous|cast|convert|nchw|nhwc|transpose"),
    ("reduction / loss", r"reduce|softmax|nll|cross_entropy|sum|mean"),
    ("elementwise", r"elementwise|vectorized|unrolled|relu|add|mul|div|threshold"),
]


def kernel_kind(name: str) -> str:
    low = name.lower()
    for kind, pat in _KERNEL_KINDS:
        if re.search(pat, low):
            return kind
    return "other"


def profile_training(cd: CellData, recipe: Recipe, epochs: float, path: Path | None) -> dict[str, Any]:
    """torch.profiler over ``epochs`` of ``fit`` (after a short warm-up): wall time, device-busy time and
    where it goes. Writes the top-kernel table (and the per-kind summary) to ``path``."""
    from torch.profiler import ProfilerActivity, profile

    device = cd.device
    model = cd.make_model()
    fit(model, cd.train, recipe, seed=0, epochs=min(epochs, 0.25))
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        fit(model, cd.train, recipe, seed=1, epochs=epochs)
        sync(device)
    wall = time.perf_counter() - t0
    events = prof.key_averages()
    on_device = device.type == "cuda"

    def self_time(e) -> float:
        if on_device:
            return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)))
        return float(e.self_cpu_time_total)

    kernels = [e for e in events if self_time(e) > 0
               and (not on_device or str(getattr(e, "device_type", "")).endswith("CUDA"))]
    if on_device and not kernels:  # no kernel rows: the operators' own device time covers the same kernels
        kernels = [e for e in events if self_time(e) > 0]
    busy = sum(self_time(e) for e in kernels) / 1e6
    by_kind: dict[str, float] = {}
    for e in kernels:
        k = kernel_kind(e.key)
        by_kind[k] = by_kind.get(k, 0.0) + self_time(e) / 1e6
    top = sorted(kernels, key=self_time, reverse=True)[:15]
    out = {"wall_s": wall, "busy_s": busy, "busy_frac": busy / wall if wall > 0 else float("nan"),
           "by_kind_s": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
           "top": [(e.key[:90], self_time(e) / 1e6, int(e.count)) for e in top],
           "clock": "device" if on_device else "cpu (self time, may exceed wall with threads)"}
    if path is not None:
        sort = "self_device_time_total" if on_device else "self_cpu_time_total"
        d = cd.cell.dataset
        lines = [f"# torch.profiler: {epochs:g} epoch(s) of fit, {d.spec.display} / {d.model}, {len(cd.train)} images, "
                 f"batch {recipe.batch_size}, device {device}",
                 f"wall {wall:.3f} s; {out['clock']} busy {busy:.3f} s ({100 * out['busy_frac']:.0f}% of wall)", "",
                 "## time by kernel kind (s)"]
        lines += [f"{k:40s} {v:8.3f}  {100 * v / busy if busy else 0:5.1f}%" for k, v in out["by_kind_s"].items()]
        lines += ["", "## top operators / kernels", events.table(sort_by=sort, row_limit=40)]
        path.write_text("\n".join(lines))
    return out


def fmt_s(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"
