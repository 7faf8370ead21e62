"""Every speed figure of the benchmark in one command, as a Markdown table (the GPU run fills
``benchmarks/README.md``):

    python -m unlearnbench.benchmarks.perf.gpu_report --data-root ../shared/data --out perf-h100.md

Sections (``--skip a,b`` leaves some out; about 4-6 minutes on an H100 with the defaults):

- ``env``: device, versions, the bf16 dense matmul rate (8192^3) -- the denominator of the compute floor.
- ``mnist``: the small CNN on MNIST with the ``baselines`` suite's recipe: 3 epochs from scratch (the
  recipe's schedule over 3 epochs), time and test accuracy (target >= 98.5% in <= 2 s); epoch time;
  evaluation throughput.
- ``resnet``: ResNet-18 on ``cifar10-jpeg`` with the suite's recipe: median epoch time over
  ``--repeats`` epochs after a warm-up epoch (target <= 1.0 s; issue 2: <= 1.3 s), images/s, achieved
  TFLOP/s (FLOPs counted by torch's FLOP counter: 3.33 GFLOP/img, ANCHORS.md) and the compute floor at the
  measured bf16 rate; evaluation throughput.
- ``profile``: ``torch.profiler`` over one ResNet-18 epoch: device-busy time against wall time (is the
  epoch bound by the GPU or by the host?) and time per kernel kind; the full table goes to
  ``<out>.profile.txt``.
- ``cell``: one ``cifar10-jpeg`` cell through the harness (``run_cell``) on a cold model cache: building
  the original and the retrain model against epochs x epoch time x (1 + retain/train) (target: within
  10%); then cells of ``--overhead-methods`` on the warm cache: harness overhead = total - unlearn -
  report - evaluate (attacks) - training of models built in the cell (target <= 5% of the cell).
  ``--cell-epochs`` shortens the recipe for this section only.
- ``shadows``: MNIST small-CNN shadow models, ``vmap`` vs ``loop``, K = ``--shadow-ks``, through
  :mod:`unlearnbench.benchmarks.perf.shadow_cost` (ANCHORS.md: 4.8x at K=16, 1.7x at K=64 per step).

``--tiny`` shrinks everything to check the code paths on a CPU in a few minutes (figures then mean
nothing and no verdicts are given). The raw numbers go to ``<out>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from unlearnbench.benchmarks.harness import RunContext, resolve_device
from unlearnbench.methods import method_names
from unlearnbench.methods.training import accuracy, fit

from unlearnbench.benchmarks.perf import _common as C

SECTIONS = ("env", "mnist", "resnet", "profile", "cell", "shadows")


@dataclasses.dataclass
class Row:
    section: str
    figure: str
    measured: str
    target: str = ""
    verdict: str = ""
    raw: dict[str, Any] = dataclasses.field(default_factory=dict)


def verdict(value: float, limit: float, *, higher_is_better: bool = False, tiny: bool = False) -> str:
    if tiny or value is None or math.isnan(value):
        return ""
    ok = value >= limit if higher_is_better else value <= limit
    if ok:
        return "met"
    miss = (limit - value) / limit if higher_is_better else (value - limit) / limit
    return f"MISSED by {100 * miss:.0f}%"


class Report:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.t0 = time.perf_counter()
        self.section_s: dict[str, float] = {}

    def add(self, *a: Any, **kw: Any) -> None:
        row = Row(*a, **kw)
        self.rows.append(row)
        print(f"  {row.figure}: {row.measured}" + (f"   [{row.target}] {row.verdict}" if row.target else ""),
              flush=True)

    def markdown(self, env: dict[str, Any]) -> str:
        a = self.args
        lines = [f"# unlearnbench speed report ({env['device_name']})", "",
                 f"`{env['command']}`", "",
                 f"{env['date']} · torch {env['torch']} · CUDA {env['cuda']} · {env['device_name']} · "
                 f"python {env['python']} · total {time.perf_counter() - self.t0:.0f} s", ""]
        if a.tiny:
            lines += ["**TINY smoke run** (`--tiny`): sizes shrunk to check the code paths; the figures are "
                      "not comparable with the targets.", ""]
        lines += ["| section | figure | measured | target / reference | verdict |", "|---|---|---|---|---|"]
        for r in self.rows:
            lines.append(f"| {r.section} | {r.figure} | {r.measured} | {r.target} | {r.verdict} |")
        if self.notes:
            lines += ["", "Notes:", *[f"- {n}" for n in self.notes]]
        lines += ["", "Section wall times: " + ", ".join(f"{k} {v:.0f} s" for k, v in self.section_s.items())]
        return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ sections


def env_section(rep: Report, device: torch.device) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    env = {"device_name": name, "torch": torch.__version__,
           "cuda": torch.version.cuda if device.type == "cuda" else None,
           "python": platform.python_version(), "date": datetime.date.today().isoformat(),
           "command": "python -m unlearnbench.benchmarks.perf.gpu_report " + " ".join(sys.argv[1:]),
           "cpu_threads": torch.get_num_threads()}
    if "env" not in rep.args.skip and device.type == "cuda":
        peak = C.bf16_matmul_tflops(device)
        env["bf16_tflops"] = peak
        rep.add("env", "bf16 dense matmul 8192³", f"{peak:.0f} TFLOP/s",
                f"ANCHORS: {C.ANCHOR_H100_BF16_TFLOPS:.0f} TFLOP/s", raw={"tflops": peak})
    return env


def _suite_kw(args: argparse.Namespace, key: str) -> dict[str, Any]:
    kw: dict[str, Any] = {"synthetic": not C.has_data(key, args.data_root)}
    if args.limit:
        kw["train_subset"] = args.limit
    if args.heldout is not None:
        kw["heldout"] = args.heldout
    return kw


def _workload(args: argparse.Namespace, key: str) -> C.Workload:
    w = C.workload(key, args.suite)
    if key == "cifar" and args.resnet_width:
        w = w.with_model_options(width=args.resnet_width)
    return w


def _data_row(rep: Report, key: str, cd, seconds: float, synthetic: bool) -> None:
    what = "SYNTHETIC stand-in (data files not found)" if synthetic else cd.cell.dataset.spec.display
    rep.add(key, f"data: {what}, load + to device", C.fmt_s(seconds), "once per process",
            raw={"seconds": seconds, "train": len(cd.train), "test": len(cd.test)})
    if synthetic:
        rep.notes.append(f"{key}: no data files under --data-root; a synthetic set of the same shape was timed.")


def mnist_section(rep: Report, ctx: RunContext) -> None:
    args = rep.args
    w = _workload(args, "mnist")
    kw = _suite_kw(args, "mnist")
    suite = C.perf_suite(w, **kw)
    t_data, cd = C.timed(ctx.device, C.cell_data, suite, ctx)
    _data_row(rep, "mnist", cd, t_data, kw["synthetic"])
    rep.notes.append(f"mnist recipe: {w.origin}: {cd.cell.dataset.recipe}")
    recipe3 = C.recipe_of(cd, epochs=3.0)
    warm = cd.make_model()
    t_cold, _ = C.timed(ctx.device, fit, warm, cd.train, recipe3, seed=0, epochs=0.2)
    model = cd.make_model()
    t3, _ = C.timed(ctx.device, fit, model, cd.train, recipe3, seed=cd.cell.seed)
    acc = accuracy(model, cd.test, recipe3.eval_batch_size)
    rep.add("mnist", f"small CNN, 3 epochs from scratch ({len(cd.train)} images, batch {recipe3.batch_size})",
            C.fmt_s(t3), "≤ 2 s (ANCHORS: 1.3 s)", verdict(t3, 2.0, tiny=args.tiny), raw={"seconds": t3})
    rep.add("mnist", "small CNN, test accuracy after those 3 epochs", f"{100 * acc:.2f}%",
            "≥ 98.5% (ANCHORS: 98.8%)", verdict(acc, 0.985, higher_is_better=True, tiny=args.tiny),
            raw={"accuracy": acc})
    rep.add("mnist", "first fit call of the process (0.2 epoch: CUDA init, autotuning)", C.fmt_s(t_cold),
            "not in the figures above", raw={"seconds": t_cold})
    times, model = C.train_epochs(cd, cd.cell.dataset.recipe, args.repeats, warmup_epochs=0)
    ep = C.median(times)
    rep.add("mnist", "small CNN epoch (median)", f"{C.fmt_s(ep)} · {len(cd.train) / ep:,.0f} img/s", "",
            raw={"epoch_s": times})
    t_eval = C.predict_seconds(model, cd.test, recipe3.eval_batch_size, ctx.device)
    rep.add("mnist", f"evaluation (predict, batch {recipe3.eval_batch_size}), test set",
            f"{len(cd.test) / t_eval:,.0f} img/s ({C.fmt_s(t_eval)} for {len(cd.test)})", raw={"seconds": t_eval})


def resnet_section(rep: Report, ctx: RunContext, env: dict[str, Any]) -> dict[str, Any]:
    args = rep.args
    w = _workload(args, "cifar")
    kw = _suite_kw(args, "cifar")
    suite = C.perf_suite(w, **kw)
    t_data, cd = C.timed(ctx.device, C.cell_data, suite, ctx)
    _data_row(rep, "resnet", cd, t_data, kw["synthetic"])
    recipe = cd.cell.dataset.recipe
    rep.notes.append(f"cifar recipe: {w.origin}: {recipe}; model options {w.model_options or 'default'}")
    times, model = C.train_epochs(cd, recipe, args.repeats, warmup_epochs=args.warmup_epochs)
    ep = C.median(times)
    n = len(cd.train)
    flops = C.train_flops_per_image(cd)
    achieved = flops * n / ep / 1e12
    peak = env.get("bf16_tflops") or C.ANCHOR_H100_BF16_TFLOPS
    floor = flops * n / (peak * 1e12)
    rep.add("resnet", f"ResNet-18 epoch, median of {len(times)} ({n} images, batch {recipe.batch_size}, "
            f"{'bf16 + channels_last' if ctx.device.type == 'cuda' else 'fp32'})",
            f"{C.fmt_s(ep)} · {n / ep:,.0f} img/s", "≤ 1.0 s (issue 2: ≤ 1.3 s; ANCHORS bare loop 0.94 s)",
            verdict(ep, 1.0, tiny=args.tiny), raw={"epoch_s": times})
    rep.add("resnet", "achieved training rate (FLOP counter: fwd+bwd per image)",
            f"{achieved:.1f} TFLOP/s ({flops / 1e9:.2f} GFLOP/img)", f"ANCHORS: {C.ANCHOR_RESNET_GFLOP} GFLOP/img",
            raw={"tflops": achieved, "flops_per_image": flops})
    rep.add("resnet", f"compute floor of that epoch at {peak:.0f} TFLOP/s", C.fmt_s(floor),
            f"epoch / floor = {ep / floor:.1f}x", raw={"floor_s": floor, "ratio": ep / floor})
    t_eval = C.predict_seconds(model, cd.test, recipe.eval_batch_size, ctx.device)
    t_train_eval = C.predict_seconds(model, cd.train, recipe.eval_batch_size, ctx.device, repeats=1)
    rep.add("resnet", f"evaluation (predict, batch {recipe.eval_batch_size}), test / train pool",
            f"{len(cd.test) / t_eval:,.0f} img/s · {n / t_train_eval:,.0f} img/s", raw={"test_s": t_eval,
                                                                                      "train_s": t_train_eval})
    return {"cd": cd, "epoch_s": ep, "recipe": recipe, "workload": w, "suite_kw": kw}


def profile_section(rep: Report, res: dict[str, Any]) -> None:
    path = Path(rep.args.profile_out or f"{rep.args.out}.profile.txt")
    prof = C.profile_training(res["cd"], res["recipe"], rep.args.profile_epochs, path)
    bound = "device-bound" if prof["busy_frac"] > 0.85 else "host / launch-bound (the device idles)"
    kinds = ", ".join(f"{k} {100 * v / prof['busy_s']:.0f}%" for k, v in list(prof["by_kind_s"].items())[:5]
                      if prof["busy_s"] > 0)
    rep.add("profile", f"one ResNet-18 epoch under torch.profiler ({path.name})",
            f"{prof['clock']} busy {C.fmt_s(prof['busy_s'])} of {C.fmt_s(prof['wall_s'])} wall "
            f"({100 * prof['busy_frac']:.0f}%): {bound}", kinds, raw=prof)


def cell_section(rep: Report, ctx: RunContext, res: dict[str, Any] | None) -> None:
    args = rep.args
    w = _workload(args, "cifar")
    known = set(method_names())
    methods = [m for m in args.overhead_methods if m in known]
    missing = [m for m in args.overhead_methods if m not in known]
    if missing:
        rep.notes.append(f"overhead methods not registered, left out: {missing}")
    recipe = {"epochs": float(args.cell_epochs)} if args.cell_epochs else None
    suite = C.perf_suite(w, methods=tuple(dict.fromkeys(["original", *methods])), recipe=recipe,
                         **_suite_kw(args, "cifar"))
    cells = {c.method: c for c in suite.cells()}
    cd = C.cell_data(suite, ctx)
    if res is None:  # the epoch time is needed for the comparison
        times, _ = C.train_epochs(cd, cd.cell.dataset.recipe, args.repeats, warmup_epochs=args.warmup_epochs)
        epoch_s = C.median(times)
    else:
        epoch_s = res["epoch_s"]
    if ctx.cache.has(cd.original_key) or ctx.cache.has(cd.reference_key):
        raise RuntimeError(f"the model cache {ctx.cache.root} already holds this cell's models; use a fresh --workdir")
    epochs = cd.cell.dataset.recipe.epochs
    record, m = C.run_cell_measured(cells["original"], ctx)
    built = record.metrics["original_train_time_s"] + record.metrics["retrain_time_s"]
    frac = len(cd.retain) / len(cd.train)
    expected = epochs * epoch_s * (1 + frac)
    ratio = built / expected
    rep.add("cell", f"build original + retrain of a cifar10-jpeg cell ({epochs:g} epochs each; "
            f"retain {len(cd.retain)}/{len(cd.train)}), model creation to trained model",
            f"{C.fmt_s(built)} = {ratio:.2f} x epochs x epoch x (1 + retain/train) = {C.fmt_s(expected)}",
            f"within 10% (2 x epochs x epoch = {C.fmt_s(2 * epochs * epoch_s)})",
            verdict(abs(ratio - 1), 0.10, tiny=args.tiny),
            raw={"built_s": built, "expected_s": expected, "ratio": ratio, "epoch_s": epoch_s, "cell": m})
    rep.add("cell", "that cold cell's phases: original / reference (with caching, and scoring the reference) / "
            "whole cell", f"{C.fmt_s(m['cell.original_s'])} / {C.fmt_s(m['cell.reference_s'])} / "
            f"{C.fmt_s(m['total_s'])}", raw=m)
    for name in methods:  # the cache is warm now, and the reference's scores are cached in ctx
        cell = cells[name]
        _, m = C.run_cell_measured(cell, ctx)
        parts = ", ".join(f"{p} {C.fmt_s(m.get(f'cell.{p}_s', 0.0))}" for p in
                          ("prepare", "original", "reference", "unlearn", "evaluate"))
        rep.add("cell", f"warm-cache cell `{cell.method}`: harness overhead",
                f"{C.fmt_s(m['overhead_s'])} = {100 * m['overhead_frac']:.1f}% of {C.fmt_s(m['total_s'])} ({parts})",
                "≤ 5%", verdict(m["overhead_frac"], 0.05, tiny=args.tiny), raw=m)


def shadows_section(rep: Report, device: torch.device) -> None:
    args = rep.args
    try:
        from unlearnbench.attacks import shadows  # noqa: F401

        from unlearnbench.benchmarks.perf import shadow_cost
    except ImportError as exc:
        rep.add("shadows", "shadow models, vmap vs loop", f"skipped: {exc}")
        return
    what = ["mnist"] + (["cifar"] if args.resnet_shadow_epochs else [])
    ns = argparse.Namespace(device=str(device), what=what, data_root=args.data_root, ks=args.shadow_ks,
                            epochs=args.shadow_epochs, mnist_subset=args.limit or None,
                            cifar_epochs=args.resnet_shadow_epochs, resnet_vmap_k=0)
    result = shadow_cost.run(ns)
    anchors = {16: "ANCHORS: 10.1 vs 48.7 ms/step (4.8x)", 64: "ANCHORS: 38.6 vs 66.9 ms/step (1.7x)"}
    for r in result["rows"]:
        if "speedup" in r:
            rep.add("shadows", f"{r['what']}: {r['epochs']:g} epoch(s), {r['train_per_shadow']} images each, "
                    f"batch {r['batch']}",
                    f"vmap {C.fmt_s(r['vmap_s'])} vs loop {C.fmt_s(r['loop_s'])} ({r['speedup']:.1f}x); per step "
                    f"{r['vmap_ms_per_step']:.1f} vs {r['loop_ms_per_step_all_k']:.1f} ms; auto picks {r['auto']}",
                    anchors.get(r["k"], ""), raw=r)
        else:
            rep.add("shadows", f"{r['what']}: {r['epochs']:g} epochs each ({r['auto']})",
                    f"{C.fmt_s(r.get(r['auto'] + '_s', float('nan')))} ({C.fmt_s(r.get('per_shadow_s'))} per shadow)",
                    raw=r)


# ---------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m unlearnbench.benchmarks.perf.gpu_report",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=None, help="folder with mnist/ and cifar10_jpeg/ (default: "
                   "$UNLEARNBENCH_DATA_ROOT or shared/data beside the checkout)")
    p.add_argument("--out", required=True, help="Markdown file to write (also <out>.json, <out>.profile.txt)")
    p.add_argument("--device", default="auto", help="auto | cuda | cpu")
    p.add_argument("--suite", default=C.RECIPE_SUITE, help="suite whose recipes are measured (default: baselines)")
    p.add_argument("--workdir", default=None, help="results/model-cache folder (default: a fresh temporary one)")
    p.add_argument("--skip", default="", type=lambda s: {x for x in s.split(",") if x},
                   help=f"comma-separated sections to leave out: {','.join(SECTIONS)}")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per model (median reported)")
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="untimed ResNet-18 epochs first")
    p.add_argument("--limit", type=int, default=0, help="train on only this many images (0: all)")
    p.add_argument("--heldout", type=int, default=None, help="held-out images (default: the dataset's)")
    p.add_argument("--cell-epochs", type=float, default=0, help="recipe epochs for the cell section (0: the suite's)")
    p.add_argument("--overhead-methods", default="original,retrain,finetune", type=lambda s: s.split(","),
                   help="methods whose warm-cache cells measure the harness overhead")
    p.add_argument("--shadow-ks", default="16,64", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--shadow-epochs", type=float, default=1.0, help="epochs per MNIST shadow model")
    p.add_argument("--resnet-shadow-epochs", type=float, default=0.0,
                   help="also train 16 ResNet-18 shadows for this many epochs (0: skip; minutes)")
    p.add_argument("--resnet-width", type=int, default=0, help="ResNet-18 width (0: the suite's; --tiny: 8)")
    p.add_argument("--profile-epochs", type=float, default=1.0)
    p.add_argument("--profile-out", default=None, help="default <out>.profile.txt")
    p.add_argument("--tiny", action="store_true", help="tiny sizes to check the code paths on a CPU")
    args = p.parse_args(argv)
    bad = args.skip - set(SECTIONS)
    if bad:
        p.error(f"unknown section(s) {sorted(bad)} in --skip; sections: {', '.join(SECTIONS)}")
    if args.tiny:
        args.limit = args.limit or 512
        args.heldout = 256 if args.heldout is None else args.heldout
        args.repeats = 1 if args.repeats == 3 else args.repeats
        args.warmup_epochs = min(args.warmup_epochs, 0.25)
        args.cell_epochs = args.cell_epochs or 1
        args.resnet_width = args.resnet_width or 8
        args.shadow_ks = [2, 4] if args.shadow_ks == [16, 64] else args.shadow_ks
        args.shadow_epochs = min(args.shadow_epochs, 0.5)
        args.profile_epochs = min(args.profile_epochs, 0.5)
    args.data_root = args.data_root or C.default_data_root()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="unlearnbench-perf-"))
    ctx = RunContext(results_dir=workdir, data_root=args.data_root, device=device)
    rep = Report(args)
    print(f"speed report on {device}; model cache in {workdir}", flush=True)

    def section(name: str, fn, *a):
        if name in args.skip:
            return None
        print(f"[{name}]", flush=True)
        t0 = time.perf_counter()
        try:
            return fn(*a)
        finally:
            rep.section_s[name] = time.perf_counter() - t0

    t0 = time.perf_counter()
    env = env_section(rep, device)  # always: the report's header needs it (--skip env skips the matmul only)
    rep.section_s["env"] = time.perf_counter() - t0
    section("mnist", mnist_section, rep, ctx)
    res = section("resnet", resnet_section, rep, ctx, env)
    if res is not None:
        section("profile", profile_section, rep, res)
    section("cell", cell_section, rep, ctx, res)
    section("shadows", shadows_section, rep, device)

    text = rep.markdown(env)
    Path(args.out).write_text(text)
    raw = {"env": env, "args": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()},
           "rows": [dataclasses.asdict(r) for r in rep.rows], "section_s": rep.section_s}
    Path(f"{args.out}.json").write_text(json.dumps(raw, indent=1, default=str))
    print()
    print(text)
    print(f"wrote {args.out} and {args.out}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
