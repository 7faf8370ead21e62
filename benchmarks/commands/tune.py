"""``unlearnbench tune``: choose each method's hyperparameters inside its declared search ranges on
validation cells (never the evaluated cells, never the test split), and write them as a suite overlay
that ``unlearnbench run --tuned FILE`` applies. The protocol: ``benchmarks/tune.py`` and docs/tuning.md."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from unlearnbench.benchmarks.commands.run import add_data_and_device_args
from unlearnbench.benchmarks.validate import csv_arg


def add_parser(sub) -> None:
    from unlearnbench.benchmarks.tune import (DEFAULT_CAP, DEFAULT_CLASS_VALIDATION_CELLS, DEFAULT_TRIALS,
                                              DEFAULT_VALIDATION_CELLS, OBJECTIVES,
                                              STORAGE_NAME, VALIDATION_SEED_BASE)

    p = sub.add_parser(
        "tune", help="tune each method's hyperparameters on validation cells (Optuna) and write a suite overlay",
        description="One Optuna study (TPE sampler, median pruner) per (dataset, model, request, method) of the suite. "
                    f"Trials run on validation cells (seeds {VALIDATION_SEED_BASE} + k; for class requests, classes no "
                    "evaluated cell forgets), scored on a half of the held-out split -- never on the evaluated forget "
                    "sets or the test split. A trial may use at most --cap times the example passes of retraining. "
                    f"Studies live in <results>/{STORAGE_NAME}: a killed run resumes where it stopped. The chosen "
                    "values and each study's provenance go to --out (TOML), for `unlearnbench run --tuned FILE`. "
                    "See docs/tuning.md.")
    p.add_argument("--suite", default="default", help="built-in suite name or path to a .toml file (default: default)")
    p.add_argument("--methods", type=csv_arg("--methods", what="method names"), default=None,
                   help="comma-separated subset of the suite's methods (default: every one with a search range)")
    p.add_argument("--datasets", type=csv_arg("--datasets", what="dataset names"), default=None, help="comma-separated subset of the suite's datasets")
    p.add_argument("--requests", type=csv_arg("--requests", what="request labels"), default=None, help="comma-separated subset of the suite's requests (labels)")
    p.add_argument("--trials", type=int, default=DEFAULT_TRIALS,
                   help=f"finished trials per study (complete or pruned; default {DEFAULT_TRIALS}); a stored study "
                        "runs only the missing ones")
    p.add_argument("--objective", choices=OBJECTIVES, default="retrain-gap",
                   help="retrain-gap: avg_gap to the validation cells' own retrain references (default); "
                        "retrain-free: needs no retrained model (docs/tuning.md gives the formula)")
    p.add_argument("--cap", type=float, default=DEFAULT_CAP,
                   help=f"most example passes a trial may use, as a fraction of retraining's (default {DEFAULT_CAP})")
    p.add_argument("--validation-cells", type=int, default=None,
                   help=f"validation cells per study (default {DEFAULT_CLASS_VALIDATION_CELLS} for class requests: values "
                        f"must carry over to other classes; {DEFAULT_VALIDATION_CELLS} otherwise)")
    p.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler (default 0)")
    p.add_argument("--timeout", type=float, default=None,
                   help="stop starting new trials of a study after this many seconds (its finished trials count)")
    p.add_argument("--out", default=None,
                   help="overlay file to write or update (default: <results>/tuned-<suite>.toml)")
    add_data_and_device_args(p)
    p.add_argument("--allow-cpu", action="store_true",
                   help="also tune datasets the suite marks requires = \"cuda\" when no GPU is used (slow)")
    p.add_argument("--quiet", action="store_true", help="one line per study, none per trial")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unlearnbench.benchmarks.cli import data_root
    from unlearnbench.benchmarks.env import git_state
    from unlearnbench.benchmarks.harness import RunContext, resolve_device
    from unlearnbench.benchmarks.suite import load_suite
    from unlearnbench.benchmarks.validate import folder_arg
    from unlearnbench.benchmarks.tune import (DEFAULT_CLASS_VALIDATION_CELLS, DEFAULT_VALIDATION_CELLS, TuneError,
                                              prepare_validation, run_study, tune_lock, validation_cells,
                                              write_overlay)
    from unlearnbench.methods import create_method, method_class, search_space

    if args.trials < 1:
        raise TuneError(f"--trials must be >= 1, got {args.trials}")
    if not 0.0 < args.cap:
        raise TuneError(f"--cap must be > 0 (a fraction of retraining's passes, e.g. 0.5), got {args.cap}")
    if args.validation_cells is not None and args.validation_cells < 1:
        raise TuneError(f"--validation-cells must be >= 1, got {args.validation_cells}")
    results = folder_arg(args.results, "--results")
    cache_dir = folder_arg(args.cache_dir, "--cache-dir") if args.cache_dir is not None else None
    suite = load_suite(args.suite)
    cells = suite.cells(methods=args.methods, datasets=args.datasets, requests=args.requests)
    device = resolve_device(args.device)
    ctx = RunContext(results_dir=results, data_root=data_root(args), download=args.download, device=device,
                     cache_dir=cache_dir)
    out = Path(args.out) if args.out else Path(args.results) / f"tuned-{suite.name}.toml"
    commit, dirty = git_state()

    # the studies: (dataset, request, method) of the selected cells, in suite order
    studies, seen, skipped = [], set(), []
    for c in cells:
        key = (c.dataset.spec.display, c.dataset.model, c.request.label, c.method)
        if key in seen:
            continue
        seen.add(key)
        if not search_space(method_class(c.method)):
            skipped.append(f"{c.method} (no search range)")
            continue
        if c.dataset.requires == "cuda" and device.type != "cuda" and not args.allow_cpu:
            skipped.append(f"{c.dataset.spec.display} (needs a CUDA GPU; --allow-cpu tunes it here anyway)")
            continue
        studies.append(c)
    for s in dict.fromkeys(skipped):
        print(f"skipped: {s}", file=sys.stderr)
    if not studies:
        raise TuneError("no study to run: the selection holds no method with a search range")

    t_all = time.perf_counter()
    prepared: dict[tuple, list] = {}
    results = []
    with tune_lock(ctx.results_dir):
        for c in studies:
            d, r, m = c.dataset, c.request, c.method
            vkey = (d.spec.display, d.model, r.label)
            if vkey not in prepared:
                t0 = time.perf_counter()
                n_val = args.validation_cells or (DEFAULT_CLASS_VALIDATION_CELLS if r.kind == "class"
                                                  else DEFAULT_VALIDATION_CELLS)
                specs = validation_cells(suite, d, r, m, n_val, ctx)
                prepared[vkey] = [prepare_validation(s, ctx) for s in specs]
                print(f"{d.spec.display}/{d.model}/{r.label}: {len(specs)} validation cell(s) "
                      f"({', '.join(f'{s.request.label} seed {s.seed}' for s in specs)}) ready in "
                      f"{time.perf_counter() - t0:.1f} s (originals and retrain references, cached)", file=sys.stderr)
            vcs = prepared[vkey]
            reason = create_method(m).not_applicable(vcs[0].cd.split.kind, vcs[0].original)
            if reason:
                print(f"skipped: {d.spec.display}/{r.label}/{m}: {reason}", file=sys.stderr)
                continue

            def on_trial(t, label=f"{d.spec.display}/{r.label}/{m}") -> None:
                if not args.quiet:
                    v = "" if t.value is None else f" {t.value:.4f}"
                    why = t.user_attrs.get("pruned_by", "")
                    print(f"  {label} trial {t.number}: {t.state.name.lower()}{v}{f' ({why})' if why else ''} "
                          f"{ {k: _short(x) for k, x in t.params.items()} }", file=sys.stderr)

            res = run_study(suite=suite, dataset=d, request=r, method=m, cells=vcs, ctx=ctx, objective=args.objective,
                            n_trials=args.trials, cap=args.cap, seed=args.seed, timeout=args.timeout, commit=commit,
                            dirty=dirty, on_trial=on_trial)
            if not res.best_params:
                print(f"{d.spec.display}/{d.model}/{r.label}/{m}: no trial completed within the compute cap "
                      f"({res.trials}) in {res.wall_s:.1f} s: not written (more --trials, a larger --cap, or the "
                      "method cannot unlearn this cell within the cap)")
                continue
            results.append(res)
            write_overlay(out, suite.name, [res])  # after every study: a killed run keeps the finished ones
            params = ", ".join(f"{k}={_short(v)}" for k, v in sorted(res.best_params.items()))
            print(f"{d.spec.display}/{d.model}/{r.label}/{m}: {res.provenance['trials']} trials "
                  f"({res.trials.get('complete', 0)} complete, {res.trials.get('pruned', 0)} pruned) in "
                  f"{res.wall_s:.1f} s; best {args.objective} {res.best_value:.4f} (defaults "
                  f"{res.default_value:.4f}): {params}")
    print(f"tuned {len(results)} studies in {time.perf_counter() - t_all:.1f} s; overlay: {out} "
          f"(apply with: unlearnbench run --suite {args.suite} --tuned {out})")
    return 0


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
