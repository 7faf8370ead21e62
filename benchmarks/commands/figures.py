"""``unlearnbench figures``: paper figures (PNG + PDF + caption .txt) from a suite's stored results.

The drawing is ``reports/figures.py`` (pure functions of rows and per-example arrays); this command
reads the store and, for the per-class heatmap of class forgetting, the test labels and each run's
forgotten class: labels from the run's stored scores (``test_labels``) when present, else from the
dataset itself (embedded datasets need nothing; file datasets need ``--data-root``); the class from
the request's ``class`` parameter, else (drawn by the seed) by rebuilding the request as the harness did.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ._results import add_common, declarations, reference_methods, select


def add_parser(sub) -> None:
    p = sub.add_parser(
        "figures", help="draw the figures of stored results (PNG, PDF, caption)",
        description="Per (dataset, model, request, device): forget vs test accuracy, membership-inference bars, the "
                    "primary score against every cost value (Pareto fronts), ROC curves (log FPR), before/after bars "
                    "(e.g. backdoor ASR, when measured), per-class accuracy heatmap (class forgetting); per suite, a "
                    "critical-difference diagram of mean ranks (Friedman, Nemenyi). What each figure draws comes from "
                    "the values' declarations (docs/metrics.md). Files: "
                    "<out>/<dataset>_<model>_<request>_<device>/<figure>.{png,pdf,txt}, <out>/critical_difference.*.")
    add_common(p)
    p.add_argument("--out", default=None, help="output folder (default: figures/<suite>)")
    p.add_argument("--primary", default=None,
                   help="score for the Pareto plot and the ranks (default: the suite's, else avg_gap)")
    p.add_argument("--higher-is-better", action="store_true", default=None,
                   help="rank high values of the primary score first, overriding its declared direction")
    p.add_argument("--data-root", default=None,
                   help="dataset files, to read test labels for the per-class heatmap (env UNLEARNBENCH_DATA_ROOT)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unlearnbench.benchmarks.cli import default_data_root
    from unlearnbench.reports.figures import ClassInfo, render_all

    from unlearnbench.benchmarks.validate import folder_arg

    if args.out is not None:
        folder_arg(args.out, "--out")
    (sel,) = select(args)
    out = Path(args.out or Path("figures") / sel.name)
    primary = args.primary or (sel.suite.primary if sel.suite else "avg_gap")
    from unlearnbench.benchmarks.validate import stored_value_name

    stored_value_name(primary, [r.row() for r in sel.records], "--primary" if args.primary else
                      "the suite's primary score")
    scores, unreadable = _readable_scores(sel)
    by_id = {r.run_id: r for r in sel.records}
    splits_cache: dict[str, object] = {}
    notes: list[str] = []
    data_root = args.data_root or default_data_root()

    def splits_of(rec):
        key = repr(sorted(rec.config["dataset"].items()))
        if key not in splits_cache:
            splits_cache[key] = _load_splits(rec.config["dataset"], data_root, notes)
        return splits_cache[key]

    def class_info(group):
        recs = [by_id[i] for mr in group.rows for i in mr.run_ids if i in by_id]
        if not recs:
            return None
        stored = next((scores[r.run_id]["test_labels"] for r in recs if "test_labels" in scores.get(r.run_id, {})),
                      None)
        needs_data = stored is None or any(_given_class(r, None) is None for r in recs)
        splits = splits_of(recs[0]) if needs_data else None
        if stored is None and splits is None:
            return None
        labels = np.asarray(stored) if stored is not None else splits.test.y.numpy()
        names = tuple(splits.classes) if splits is not None else tuple(str(c) for c in range(int(labels.max()) + 1))
        forgotten = {}
        for r in recs:
            c = _given_class(r, names)
            if c is None and splits is not None:
                c = _drawn_class(r, splits, notes)
            forgotten[r.run_id] = c
        return ClassInfo(labels, names, forgotten)

    rows = [r.row() for r in sel.records]
    report = render_all(rows, scores, out, specs=declarations(rows), references=reference_methods(), primary=primary,
                        higher_is_better=args.higher_is_better,
                        method_order=list(sel.suite.methods) if sel.suite else None, class_info=class_info)
    for f in report.written:
        print(f"wrote {f.stem}.png/.pdf/.txt")
    for msg in unreadable + sorted(set(notes)) + report.skipped:
        print(f"note: {msg}", file=sys.stderr)
    print(f"{len(report.written)} figure(s) in {out}/")
    return 0


def _readable_scores(sel) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
    """Per-example arrays of every ok run; a run whose file cannot be read is left out of the figures that
    need them (its metrics still count) and named."""
    from unlearnbench.benchmarks.store import StoreError

    scores, unreadable = {}, []
    for r in sel.records:
        if r.status != "ok":
            continue
        try:
            scores[r.run_id] = sel.store.scores(r)
        except StoreError as exc:
            unreadable.append(f"{exc}; its per-example figures (ROC, per-class) skip it")
    return scores, unreadable


def _given_class(rec, names) -> int | None:
    """The forgotten class the record's request names (an index, or a class name when ``names`` is known)."""
    c = rec.config["request"]["params"].get("class")
    if isinstance(c, bool):
        return None
    if isinstance(c, int):
        return c
    if isinstance(c, str) and names is not None and c in names:
        return list(names).index(c)
    return None


def _drawn_class(rec, splits, notes: list[str]) -> int | None:
    """The class a seed drew (requests without ``class``): rebuild the request as the harness did."""
    from unlearnbench.datasets import DatasetError, build_request

    req = rec.config["request"]
    try:
        return build_request(splits, req["kind"], dict(req["params"]), int(rec.seed)).forget_class
    except DatasetError as exc:
        notes.append(f"forgotten class of {rec.request} seed {rec.seed} unknown ({exc})")
        return None


def _load_splits(ds: dict, data_root: str | None, notes: list[str]):
    """The dataset's splits for a stored dataset spec, or None (with a note) if it cannot be read."""
    from unlearnbench.datasets import DatasetError, DatasetSpec, build_splits

    try:
        spec = DatasetSpec(name=ds["name"], heldout=ds.get("heldout"), train_subset=ds.get("train_subset"),
                           options=tuple(sorted(ds.get("options", {}).items())), label=ds.get("label"))
        return build_splits(spec, data_root)
    except (DatasetError, OSError) as exc:
        notes.append(f"test labels of {ds.get('label') or ds['name']} unavailable ({exc})")
        return None
