"""Paper figures from stored results: pure functions of run rows, per-example score arrays and the
declarations of the stored values (handed in by the CLI). What a figure draws is decided by each value's
declaration (kind, direction, unit, family, roc, before), never by its name.

Per (suite, dataset, model, request, device) group, into ``<out>/<dataset>_<model>_<request>_<device>/``:

- ``forget_vs_test``: forget accuracy against test accuracy per method (mean ± 95% CI over seeds), the
  retrain reference as a black star with guide lines;
- ``mia_bars``: every shown score of the family ``membership`` as horizontal bars per method, with
  retrain's value as a line (and chance, 0.5, for values in the unit ``AUC``);
- ``cost_pareto``: the rank value (the primary score, or its gap to retrain) against every cost value
  declared lower-is-better that differs between methods, one panel each, its x scale chosen by the
  value's unit (:data:`UNIT_SCALES`; empty panels, e.g. CPU memory, are dropped), with the Pareto front;
- ``roc_<value>``: ROC curves (log-scale false-positive rate) of every shown value whose declaration
  names its per-example (labels, scores) arrays (``roc``), where the run stored them, TPR averaged over
  seeds;
- ``before_after_<value>``: a value whose declaration names the same quantity before unlearning
  (``before``, e.g. backdoor ASR) after unlearning per method, with the before value and retrain's as
  lines;
- ``class_accuracy``: per-class test accuracy (methods x classes) for class forgetting, from the stored
  per-example ``test_correct`` and the test labels.

Per suite, into ``<out>/``: ``critical_difference``, the mean ranks of the ranked methods over the
suite's cells with the Friedman test and the Nemenyi critical difference (:mod:`.ranking`; Demšar 2006).

Each figure is written as ``.png`` and ``.pdf`` plus a ``.txt`` caption. Rendering uses
:class:`matplotlib.figure.Figure` with the Agg canvas (no pyplot state: the diagram drawn by
scikit-posthocs is drawn on this module's axes), fixed sizes and DPI, and metadata without dates, so the
files are byte-identical for identical inputs on the same matplotlib version.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .leaderboard import Group, MethodRow, Stat, build, fmt_num, sanitize
from .ranking import MISSING_RULE, CellRanks, block_label

DPI = 150
PNG_META = {"Software": None}
PDF_META = {"Creator": None, "Producer": None, "CreationDate": None, "ModDate": None}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "d", "8", "H")
REF_COLOR = "black"
ORIGINAL_COLOR = "0.45"


@dataclass(frozen=True)
class FigureFile:
    stem: Path  # <stem>.png, <stem>.pdf, <stem>.txt
    caption: str


@dataclass
class FigureReport:
    written: list[FigureFile]
    skipped: list[str]


def _mpl():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return Figure, FigureCanvasAgg


@contextlib.contextmanager
def _style_context():
    """seaborn's whitegrid/paper style and fixed fonts, for the figures only (rcParams restored after)."""
    import matplotlib
    import seaborn as sns

    with contextlib.ExitStack() as stack:
        stack.enter_context(sns.axes_style("whitegrid"))
        stack.enter_context(sns.plotting_context("paper", font_scale=1.15))
        stack.enter_context(matplotlib.rc_context({"pdf.fonttype": 42, "font.family": "DejaVu Sans",
                                                   "axes.titleweight": "bold", "legend.frameon": True}))
        yield


def save(fig, stem: Path, caption: str) -> FigureFile:
    """Write ``stem``.png/.pdf (deterministic metadata) and the caption ``stem``.txt."""
    _, Canvas = _mpl()
    Canvas(fig)
    stem.parent.mkdir(parents=True, exist_ok=True)
    path = lambda ext: stem.parent / f"{stem.name}.{ext}"  # noqa: E731 (names may contain dots)
    fig.savefig(path("png"), dpi=DPI, metadata=PNG_META)
    fig.savefig(path("pdf"), dpi=DPI, metadata=PDF_META)
    path("txt").write_text(caption.rstrip() + "\n", encoding="utf-8")
    return FigureFile(stem, caption)


def method_styles(methods: Sequence[str], reference: str, original: str) -> dict[str, dict[str, Any]]:
    """A fixed colour and marker per method (by position in the given order), retrain black star,
    original grey cross."""
    import seaborn as sns

    others = [m for m in methods if m not in (reference, original)]
    # the qualitative palettes without their greys (grey marks the original model)
    pal = ([c for i, c in enumerate(sns.color_palette("tab10", 10)) if i != 7] if len(others) <= 9 else
           [c for i, c in enumerate(sns.color_palette("tab20", 20)) if i not in (14, 15)])
    styles = {m: {"color": pal[i % len(pal)], "marker": MARKERS[i % len(MARKERS)], "size": 7} for i, m in
              enumerate(others)}
    styles[original] = {"color": ORIGINAL_COLOR, "marker": "X", "size": 8}
    styles[reference] = {"color": REF_COLOR, "marker": "*", "size": 14}
    return styles


def _label(mr: MethodRow) -> str:
    return f"{mr.method} (reference)" if mr.is_reference else mr.method


def _mean_ci(s: Stat | None) -> tuple[float, float]:
    if s is None or s.n == 0:
        return float("nan"), float("nan")
    return s.mean, (0.0 if math.isnan(s.ci) else s.ci)


def _ok(rows: Iterable[MethodRow]) -> list[MethodRow]:
    return [r for r in rows if r.n]


def _where(g: Group) -> str:
    return f"{g.dataset} / {g.model} / {g.request} ({g.device})"


def _title(what: str, g: Group, width: int = 60) -> str:
    """Two or more short lines (what, then where), so a long request label never runs off the figure."""
    import textwrap

    return "\n".join([what] + textwrap.wrap(_where(g), width, break_on_hyphens=False))


def _caption(g: Group, what: str, ref: str, skipped_methods: list[str], ci: bool = True) -> str:
    """The caption: suite and cell, what is drawn, the statistics, how retrain is marked (``ref``), what is
    missing, and the provenance. No date beyond the runs' own, so it is as reproducible as the figure."""
    n = sorted({r.n for r in g.rows if r.n})
    seeds = f"n = {n[0]} seed(s) per method" if len(n) == 1 else f"n = {'-'.join(map(str, (n[0], n[-1])))} seeds"
    stats = (f"Means over seeds ({seeds}); whiskers are 95% confidence intervals (Student t)." if ci else
             f"{seeds[0].upper()}{seeds[1:]}.")
    text = f"Suite {g.suite}, {_where(g)}. {what} {stats} {ref}"
    if skipped_methods:
        text += " Not shown (not applicable or failed): " + ", ".join(skipped_methods) + "."
    return text + " Provenance: " + "; ".join(p for p in g.provenance if p.split(" ")[0] in
                                                ("commit", "device", "precision", "torch", "runs")) + "."


def _missing(g: Group) -> list[str]:
    return [f"{r.method} ({'failed' if r.state == 'failed' else 'not applicable'})" for r in g.rows if not r.n]


def _legend_outside(fig, ax_or_handles, labels=None, ncol: int = 1):
    if labels is None:
        handles, labels = ax_or_handles.get_legend_handles_labels()
    else:
        handles = ax_or_handles
    # deduplicate, keep order
    seen, h2, l2 = set(), [], []
    for h, lab in zip(handles, labels):
        if lab not in seen and not lab.startswith("_"):
            seen.add(lab)
            h2.append(h)
            l2.append(lab)
    return fig.legend(h2, l2, loc="outside right upper", ncol=ncol, fontsize="small", title="method",
                      title_fontsize="small")


def _fig(width: float, height: float):
    Figure, _ = _mpl()
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


# ------------------------------------------------------------------------------------ figures


def forget_vs_test(g: Group, styles, out: Path) -> FigureFile | str:
    rows = [r for r in _ok(g.rows) if "forget_acc" in r.stats and "test_acc" in r.stats]
    if not rows:
        return f"{_where(g)}: no forget_acc/test_acc values: skipped forget_vs_test"
    fig = _fig(7.5, 4.8)
    ax = fig.add_subplot()
    for r in rows:
        x, xe = _mean_ci(r.stats["test_acc"])
        y, ye = _mean_ci(r.stats["forget_acc"])
        st = styles[r.method]
        ax.errorbar(x, y, xerr=xe, yerr=ye, fmt=st["marker"], color=st["color"], ms=st["size"], capsize=2.5,
                    elinewidth=1, label=_label(r), zorder=4 if r.is_reference else 3,
                    mec="white" if not r.is_reference else "black", mew=0.6)
        if r.is_reference:
            ax.axvline(x, color=REF_COLOR, ls=":", lw=1, zorder=1)
            ax.axhline(y, color=REF_COLOR, ls=":", lw=1, zorder=1)
    ax.margins(0.08)
    lo, hi = ax.get_xlim()
    ax.set_xlim(max(lo, -0.02), min(hi, 1.02))
    lo, hi = ax.get_ylim()
    ax.set_ylim(max(lo, -0.02), min(hi, 1.02))
    ax.set_xlabel("test accuracy (test_acc)")
    ax.set_ylabel("forget accuracy (forget_acc)")
    ax.set_title(_title(f"Forget vs test accuracy", g), fontsize="medium")
    _legend_outside(fig, ax)
    cap = _caption(g, "Forget accuracy (forget_acc, accuracy on D_f) against test accuracy (test_acc, on D_t) per "
                      "method; the best method sits on the retrain star (dotted guide lines).",
                   "The retrain reference is the black star.", _missing(g))
    return save(fig, out / "forget_vs_test", cap)


def membership_cols(g: Group) -> list[str]:
    """The cell's membership-inference values: shown scores whose declared family is ``membership``."""
    return [c for c in g.score_cols if g.specs.get(c) is not None and g.specs[c].family == "membership"]


def mia_bars(g: Group, styles, out: Path, reference: str) -> FigureFile | str:
    cols = membership_cols(g)
    rows = _ok(g.rows)
    if not cols or not rows:
        return f"{_where(g)}: no membership-inference values: skipped mia_bars"
    ncol = min(3, len(cols))
    nrow = math.ceil(len(cols) / ncol)
    h = max(2.6, 0.32 * len(rows) + 1.4)
    fig = _fig(4.3 * ncol + 0.6, h * nrow)
    ref = next((r for r in rows if r.is_reference), None)
    labels = [_label(r) for r in rows]
    for i, c in enumerate(cols):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        means = [_mean_ci(r.stats.get(c))[0] for r in rows]
        cis = [_mean_ci(r.stats.get(c))[1] for r in rows]
        ypos = np.arange(len(rows))
        ax.barh(ypos, np.nan_to_num(means), xerr=np.nan_to_num(cis), color=[styles[r.method]["color"] for r in rows],
                edgecolor="black", linewidth=0.4, capsize=2, error_kw={"elinewidth": 0.8})
        if ref is not None and c in ref.stats:
            ax.axvline(ref.stats[c].mean, color=REF_COLOR, ls="--", lw=1.3, label=f"{reference} value")
        if g.specs[c].unit == "AUC":
            ax.axvline(0.5, color="0.6", ls=":", lw=1, label="chance (0.5)")
        ax.set_yticks(ypos)
        ax.set_yticklabels(labels if i % ncol == 0 else [])
        ax.invert_yaxis()
        ax.set_xlabel(c)
        ax.set_title(c, fontsize="medium")
        lo = min([0.0] + [m - e for m, e in zip(means, cis) if not math.isnan(m)])
        hi = max([1.0] + [m + e for m, e in zip(means, cis) if not math.isnan(m)])
        ax.set_xlim(lo, hi * 1.02)
        if i == 0:
            handles, texts = ax.get_legend_handles_labels()
            fig.legend(handles, texts, loc="outside lower center", ncol=len(texts), fontsize="small")
    fig.suptitle(_title(f"Membership inference", g), fontsize="medium", fontweight="bold")
    cap = _caption(g, "Membership-inference values (" + ", ".join(cols) + ": the values declared in the family "
                      "'membership') per method as bars; the dashed line is retrain's value (the target: a method "
                      "should match it, not minimise it); the dotted line marks chance (0.5) for AUCs.",
                   "Retrain's value is the dashed black line.", _missing(g))
    return save(fig, out / "mia_bars", cap)


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Non-dominated points (both coordinates lower is better), sorted by the first coordinate."""
    pts = sorted(p for p in points if all(math.isfinite(v) for v in p))
    front, best = [], float("inf")
    for x, y in pts:
        if y < best:
            front.append((x, y))
            best = y
    return front


# The x scale of a cost panel, by the value's declared unit (any other unit: log).
UNIT_SCALES = {"s": "log", "passes": "log", "FLOPs": "log", "MiB": "linear", "bytes": "symlog"}


def cost_scale(unit: str) -> str:
    return UNIT_SCALES.get(unit, "log")


def cost_pareto(g: Group, styles, out: Path, primary: str) -> FigureFile | str:
    """The cell's rank value (the primary score, or its gap to retrain) against every cost value declared
    with direction ``lower`` that has a value, one panel each (scale by unit); a cost that is the same for
    every method is named in the caption instead of drawn."""
    col = g.rank_column
    rows = [r for r in _ok(g.rows) if col and col in r.stats and r.stats[col].n]
    if not rows:
        return f"{_where(g)}: no ranked {primary} values: skipped cost_pareto"
    higher = g.rank_higher
    axes, constant = [], []
    for c in g.cost_axes:
        xs = {round(r.stats[c].mean, 12) for r in rows if r.stats.get(c) is not None and r.stats[c].n}
        if len(xs) > 1:
            axes.append(c)
        elif xs:
            constant.append(f"{c} = {fmt_num(next(iter(xs)), 'cost')}")
    if not axes:
        return f"{_where(g)}: no cost value that differs between methods: skipped cost_pareto"
    ncol = min(3, len(axes))
    nrow = math.ceil(len(axes) / ncol)
    fig = _fig(4.0 * ncol + 1.8, 3.9 * nrow + 0.5)
    scales = []
    for i, c in enumerate(axes):
        spec = g.specs[c]
        scale = cost_scale(spec.unit)
        ax = fig.add_subplot(nrow, ncol, i + 1)
        pts = []
        for r in rows:
            x, _ = _mean_ci(r.stats.get(c))
            y, ye = _mean_ci(r.stats[col])
            if math.isnan(x):
                continue
            st = styles[r.method]
            ax.errorbar(x, y, yerr=ye, fmt=st["marker"], color=st["color"], ms=st["size"], capsize=2, elinewidth=0.8,
                        label=_label(r), zorder=4 if r.is_reference else 3,
                        mec="white" if not r.is_reference else "black", mew=0.6)
            if not r.is_ref_row:
                pts.append((x, -y if higher else y))
        front = [(x, -y if higher else y) for x, y in _pareto(pts)]
        if len(front) > 1:
            fx, fy = zip(*front)
            ax.step(fx, fy, where="post", color="0.5", lw=1, ls="--", zorder=2, label="Pareto front")
        xs = [_mean_ci(r.stats.get(c))[0] for r in rows]
        xs = [x for x in xs if not math.isnan(x)]
        if scale == "log" and min(xs) <= 0:  # zero cost (the no-op) on a log axis: linear around zero
            scale = "symlog"
        if scale == "symlog":
            pos = [x for x in xs if x > 0]
            lin = 10.0 ** math.floor(math.log10(min(pos))) if pos else 1.0  # a power of ten: 0, lin, 10 lin, ...
            ax.set_xscale("symlog", linthresh=lin)
            hi = max(10 * lin, 2.0 * max(xs))
            ax.set_xlim(min(-0.3 * lin, 1.5 * min(xs)), hi)
            lo_dec = int(round(math.log10(lin)))  # ticks at 0 and every decade from lin up: none inside (0, lin)
            ax.set_xticks([0.0] + [10.0 ** k for k in range(lo_dec, math.floor(math.log10(hi)) + 1)])
            ax.xaxis.set_minor_locator(__import__("matplotlib.ticker", fromlist=["NullLocator"]).NullLocator())
        else:
            ax.set_xscale(scale)
        if scale == "linear":
            from matplotlib.ticker import MaxNLocator

            mid, span = (max(xs) + min(xs)) / 2, max(max(xs) - min(xs), 0.02 * abs(max(xs)), 1e-9)
            ax.set_xlim(mid - 0.7 * span, mid + 0.7 * span)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
            ax.ticklabel_format(axis="x", useOffset=False, style="plain")
        scales.append(f"{c} ({spec.unit or 'no unit'}, {scale})")
        ax.set_xlabel(f"{c} ({spec.unit})" if spec.unit else c)
        ax.set_ylabel(f"{col} ({'higher' if higher else 'lower'} is better)" if i % ncol == 0 else "")
        if scale == "log":
            ax.margins(x=0.1)
        ax.margins(y=0.1)
        if all(_mean_ci(r.stats[col])[0] >= 0 for r in rows):  # a CI of a non-negative value: not far below 0
            ax.set_ylim(bottom=max(ax.get_ylim()[0], -0.02))
    handles, labels = [], []
    for ax in fig.axes:
        h, lab = ax.get_legend_handles_labels()
        handles += h
        labels += lab
    _legend_outside(fig, handles, labels)
    fig.suptitle(_title(f"Cost vs {col}", g), fontsize="medium", fontweight="bold")
    better = "higher" if higher else "lower"
    cap = _caption(g, f"The rank value ({col}, {better} is better) against every cost value declared lower-is-better "
                      "that differs between methods, one panel each, on a scale chosen by its unit (" +
                      "; ".join(scales) + "; symlog is linear near zero, used where a method costs 0). The dashed "
                      "step line is the Pareto front of the methods (reference rows excluded): no method is both "
                      "cheaper and better ranked. Times were measured on a shared machine only if the provenance says "
                      "so." + (" The same for every method, not drawn: " + ", ".join(constant) + "." if constant else "")
                   + (" Not measured in this cell: " + ", ".join(c for c in g.nan_cols if c in g.specs and
                                                                 g.specs[c].kind == "cost") + "."
                      if any(c in g.specs and g.specs[c].kind == "cost" for c in g.nan_cols) else ""),
                   "The retrain reference is the black star.", _missing(g))
    return save(fig, out / "cost_pareto", cap)


def _roc(labels: np.ndarray, scores: np.ndarray, grid: np.ndarray) -> np.ndarray | None:
    from sklearn.metrics import roc_curve

    labels = np.asarray(labels).astype(int)
    if labels.min(initial=1) == labels.max(initial=0):
        return None
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf, posinf=np.finfo(np.float64).max,
                      neginf=np.finfo(np.float64).min)
    fpr, tpr, _ = roc_curve(labels, s, drop_intermediate=False)
    return np.interp(grid, fpr, tpr)


def roc_sources(g: Group, arrays: Mapping[str, np.ndarray]) -> dict[str, tuple[str, str]]:
    """Which stored arrays are the per-example labels and scores behind which shown value: the ``roc``
    of each value's declaration, where the run stored both arrays. Returns {value name: (labels key,
    scores key)}."""
    out: dict[str, tuple[str, str]] = {}
    for c in g.score_cols:
        spec = g.specs.get(c)
        if spec is not None and spec.roc and all(k in arrays for k in spec.roc):
            out[c] = (spec.roc[0], spec.roc[1])
    return out


def roc_curves(g: Group, styles, out: Path, scores: Mapping[str, Mapping[str, np.ndarray]],
               original: str = "original") -> list[FigureFile | str]:
    rows = _ok(g.rows)
    sources: dict[str, tuple[str, str]] = {}
    for r in rows:
        for rid in r.run_ids[:1]:
            for n, src in roc_sources(g, scores.get(rid, {})).items():
                sources.setdefault(n, src)
    if not sources:
        return [f"{_where(g)}: no stored per-example scores behind a declared ROC: skipped roc"]
    results: list[FigureFile | str] = []
    for name in sorted(sources):
        lk, sk = sources[name]
        negs = [int((np.asarray(scores[rid][lk]) == 0).sum()) for r in rows for rid in r.run_ids
                if lk in scores.get(rid, {})]
        lo = max(1.0 / max(min(negs), 1), 1e-4)
        grid = np.logspace(math.log10(lo), 0, 200)
        fig = _fig(7.5, 5.0)
        ax = fig.add_subplot()
        ax.plot(grid, grid, color="0.6", ls=":", lw=1, label="chance")
        drawn = 0
        for r in rows:
            curves = [c for c in (_roc(scores[rid][lk], scores[rid][sk], grid) for rid in r.run_ids
                                  if lk in scores.get(rid, {}) and sk in scores.get(rid, {})) if c is not None]
            if not curves:
                continue
            st = styles[r.method]
            ax.plot(grid, np.mean(curves, axis=0), color=st["color"], lw=2.6 if r.is_reference else 1.4,
                    ls="--" if r.method == original else "-",
                    label=f"{_label(r)} (n={len(curves)})", zorder=4 if r.is_reference else 3)
            drawn += 1
        if not drawn:
            results.append(f"{_where(g)}: {name}: no usable scores: skipped roc")
            continue
        ax.set_xscale("log")
        ax.set_xlim(lo, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("false-positive rate (log scale)")
        ax.set_ylabel("true-positive rate")
        ax.set_title(_title(f"ROC ({name})", g), fontsize="medium")
        _legend_outside(fig, ax)
        cap = _caption(g, f"ROC curves behind {name}, from the stored per-example scores ({sk}; members, label 1, "
                          f"against non-members, label 0, as {lk} marks them), TPR averaged over seeds at fixed "
                          "false-positive rates on a log axis; the dotted diagonal is chance. A method should track "
                          "the retrain curve.", "The retrain reference is the thick black line.", _missing(g),
                       ci=False)
        results.append(save(fig, out / f"roc_{sanitize(name)}", cap))
    return results


def before_after_cols(g: Group) -> list[str]:
    """Shown scores whose declaration names the same quantity on the original model (``before``)."""
    return [c for c in g.score_cols if g.specs.get(c) is not None and g.specs[c].before]


def before_after(g: Group, styles, out: Path, original: str, reference: str) -> list[FigureFile | str]:
    """Per value with a declared ``before`` (e.g. backdoor ASR): the value after unlearning per method as bars,
    the original model's value (before) and retrain's as lines."""
    rows = _ok(g.rows)
    results: list[FigureFile | str] = []
    orig = next((r for r in rows if r.method == original), None)
    ref = next((r for r in rows if r.is_reference), None)
    for name in before_after_cols(g):
        spec = g.specs[name]
        before, where = float("nan"), ""
        vals = [r.stats[spec.before].mean for r in rows if r.stats.get(spec.before) and r.stats[spec.before].n]
        if vals:  # the original model's value, recorded beside every run
            before, where = float(np.mean(vals)), spec.before
        elif orig is not None and orig.stats.get(name) and orig.stats[name].n:
            before, where = orig.stats[name].mean, f"{name} of {original}"
        fig = _fig(7.5, max(2.8, 0.32 * len(rows) + 1.4))
        ax = fig.add_subplot()
        means = [_mean_ci(r.stats.get(name))[0] for r in rows]
        cis = [_mean_ci(r.stats.get(name))[1] for r in rows]
        ypos = np.arange(len(rows))
        ax.barh(ypos, np.nan_to_num(means), xerr=np.nan_to_num(cis), color=[styles[r.method]["color"] for r in rows],
                edgecolor="black", linewidth=0.4, capsize=2)
        if not math.isnan(before):
            ax.axvline(before, color="tab:red", ls="-", lw=1.6, label="before unlearning")
        if ref is not None and ref.stats.get(name) and ref.stats[name].n:
            ax.axvline(ref.stats[name].mean, color=REF_COLOR, ls="--", lw=1.3, label=f"{reference} (after)")
        ax.set_yticks(ypos)
        ax.set_yticklabels([_label(r) for r in rows])
        ax.invert_yaxis()
        if spec.unit == "fraction":
            ax.set_xlim(0, 1.05)
        ax.set_xlabel(f"{name} after unlearning" + (f" ({spec.unit})" if spec.unit else ""))
        ax.set_ylabel("method")
        ax.set_title(_title(f"{name}: before and after unlearning", g), fontsize="medium")
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize="small")
        better = {"higher": "Higher is better", "lower": "Lower is better",
                  "closest": "Closest to retrain is better"}.get(spec.direction, "No direction is declared")
        cap = _caption(g, f"{name} ({spec.definition}) after unlearning per method (bars); the red line is its value "
                          f"before unlearning ({where or 'not recorded'}), the dashed line retrain's. {better}; "
                          "retrain's value is what a model never trained on the forget set shows.",
                       "Retrain's value is the dashed black line.", _missing(g))
        results.append(save(fig, out / f"before_after_{sanitize(name)}", cap))
    return results


@dataclass(frozen=True)
class ClassInfo:
    """What the per-class heatmap needs beyond the stored scores: the test labels, the class names, and
    the forgotten class of each run (run_id -> index; a class drawn by the seed differs per seed)."""

    labels: np.ndarray
    names: tuple[str, ...]
    forgotten: Mapping[str, int]


def per_class_accuracy(correct: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Test accuracy per class from the per-example ``test_correct`` of one run (NaN for an absent class)."""
    correct, labels = np.asarray(correct, dtype=np.float64), np.asarray(labels)
    return np.array([correct[labels == c].mean() if (labels == c).any() else np.nan for c in range(num_classes)])


def class_heatmap(g: Group, out: Path, scores: Mapping[str, Mapping[str, np.ndarray]],
                  info: ClassInfo | None) -> FigureFile | str:
    """Methods x classes; one panel (mean over seeds) when every seed forgot the same class, else one
    panel per seed, each with its own forgotten class boxed in red."""
    if info is None:
        return (f"{_where(g)}: test labels unavailable (not stored with the scores, and not read from the dataset; "
                "the figures command reads them, with --data-root for file datasets): skipped class_accuracy")
    k = len(info.names)
    per_seed: dict[int, dict[str, np.ndarray]] = {}  # seed -> method -> per-class accuracy
    forgot: dict[int, int | None] = {}
    for r in _ok(g.rows):
        for seed, rid in zip(r.seeds_ok, r.run_ids):
            correct = scores.get(rid, {}).get("test_correct")
            if correct is None or len(correct) != len(info.labels):
                continue
            per_seed.setdefault(seed, {})[r.method] = per_class_accuracy(correct, info.labels, k)
            if info.forgotten.get(rid) is not None:
                forgot.setdefault(seed, info.forgotten[rid])
    if not per_seed:
        return f"{_where(g)}: no stored per-example test_correct: skipped class_accuracy"
    classes = {forgot.get(seed) for seed in per_seed}
    if len(classes) == 1:  # the same forgotten class in every seed: average the seeds
        panels = [("mean over seeds", next(iter(classes)), {
            m: np.nanmean([per_seed[sd][m] for sd in per_seed if m in per_seed[sd]], axis=0)
            for m in {m for d in per_seed.values() for m in d}})]
    else:
        panels = [(f"seed {sd}", forgot.get(sd), per_seed[sd]) for sd in sorted(per_seed)]
    import seaborn as sns
    from matplotlib.patches import Rectangle

    rows = [r for r in _ok(g.rows) if any(r.method in acc for _, _, acc in panels)]
    annotate = k <= 20
    width = min(2.2 + 0.62 * k, 16) + 1.2
    height = max(2.6, 0.34 * len(rows) + 1.6)
    fig = _fig(width, height * len(panels) if len(panels) > 1 else height)
    for i, (what, idx, acc) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, i + 1)
        mat = np.array([acc.get(r.method, np.full(k, np.nan)) for r in rows])
        sns.heatmap(mat, ax=ax, vmin=0, vmax=1, cmap="viridis", annot=annotate, fmt=".2f", annot_kws={"fontsize": 7},
                    cbar_kws={"label": "test accuracy"}, linewidths=0.3, linecolor="white",
                    xticklabels=list(info.names), yticklabels=[_label(r) for r in rows])
        if idx is not None and 0 <= idx < k:
            ax.add_patch(Rectangle((idx, 0), 1, len(rows), fill=False, edgecolor="red", lw=2.2, clip_on=False))
        where = f"forgotten: {info.names[idx]}, red box" if idx is not None and 0 <= idx < k else "forgotten: unknown"
        ax.set_xlabel(f"class ({where}; {what})")
        ax.set_ylabel("method")
        ax.tick_params(axis="x", rotation=45 if max(len(c) for c in info.names) > 3 else 0)
        ax.tick_params(axis="y", rotation=0)
        if i == 0:
            ax.set_title(_title("Per-class test accuracy", g), fontsize="medium")
    how = ("mean over seeds" if len(panels) == 1 else
           "one panel per seed, because the seed drew a different class to forget in each")
    cap = _caption(g, f"Per-class test accuracy ({how}; from the stored per-example test_correct and the test "
                      "labels) per method; the forgotten class is boxed in red. Retrain's row (first) is the target: "
                      "zero on the forgotten class, unchanged elsewhere.", "The retrain reference is the first row.",
                   _missing(g), ci=False)
    return save(fig, out / "class_accuracy", cap)


# ------------------------------------------------------------------------------------ all of them


def critical_difference(cr: CellRanks, styles, out: Path, stem: str = "critical_difference") -> FigureFile | str:
    """The critical-difference diagram of a suite (Demšar 2006): mean ranks over the blocks on an axis, the
    Nemenyi critical difference as a bar, and thick lines joining methods the post-hoc cannot tell apart
    (all of them when the Friedman test does not reject). Drawn by scikit-posthocs'
    ``critical_difference_diagram`` on this module's own figure."""
    if not cr.methods or not cr.tested:
        return f"suite {cr.suite}: no critical-difference diagram: {cr.reason or 'no ranked methods'}"
    import pandas as pd
    import scikit_posthocs as sp

    sig = pd.DataFrame([[1.0 if a == b or not cr.differs(a, b) else cr.pairwise_p[(a, b)] for b in cr.methods]
                        for a in cr.methods], index=cr.methods, columns=cr.methods)
    Figure, _ = _mpl()
    k = len(cr.methods)
    fig = Figure(figsize=(9.0, 2.2 + 0.28 * k), dpi=DPI)  # labels sit outside the axes: fixed margins
    ax = fig.add_subplot()
    fig.subplots_adjust(left=0.24, right=0.76, top=1 - 0.9 / (2.2 + 0.28 * k), bottom=0.03)
    sp.critical_difference_diagram(pd.Series(cr.mean_rank), sig, ax=ax, alpha=cr.alpha,
                                   label_fmt_left="{label} ({rank:.2f})", label_fmt_right="({rank:.2f}) {label}",
                                   color_palette={m: styles[m]["color"] for m in cr.methods},
                                   label_props={"fontsize": "small"}, elbow_props={"lw": 1})
    ax.grid(False)
    ax.set_xlim(1, max(k, 2))
    ax.xaxis.set_major_locator(__import__("matplotlib.ticker", fromlist=["MaxNLocator"]).MaxNLocator(integer=True))
    x0 = 1 + 0.02 * (k - 1)  # the critical difference as a bar above the axis, from the best end
    ax.plot([x0, x0 + cr.cd], [1.3, 1.3], color="black", lw=1.6, solid_capstyle="butt")
    for x in (x0, x0 + cr.cd):
        ax.plot([x, x], [1.15, 1.45], color="black", lw=1.2)
    ax.text(x0 + cr.cd / 2, 1.55, f"CD = {cr.cd:.2f}", ha="center", va="bottom", fontsize="small")
    ax.set_ylim(top=2.0)
    col = cr.by.column
    fig.suptitle(f"Mean rank by {col} over {len(cr.blocks)} cells (suite {cr.suite}); Friedman p = {cr.p:.2g}",
                 fontsize="medium", fontweight="bold")
    verdict = ("the ranks differ (p < α), so the Nemenyi post-hoc applies" if cr.significant else
               "no difference between the methods is detected (p ≥ α), so every method is joined to every other")
    dropped = ""
    if cr.dropped_methods:
        dropped += " Methods dropped (a value in too few blocks): " + ", ".join(
            f"{m} ({n} of {total} blocks)" for m, n, total in cr.dropped_methods) + "."
    if cr.dropped_blocks:
        dropped += " Blocks dropped (a kept method has no value): " + ", ".join(
            f"{block_label(b)} (no {', '.join(missing)})" for b, missing in cr.dropped_blocks) + "."
    cap = (f"Suite {cr.suite}: critical-difference diagram (Demšar 2006). Blocks are the {len(cr.blocks)} (dataset, "
           f"model, request, device, seed) cells; within each, the {len(cr.methods)} ranked methods are ranked by "
           f"{col} ({'higher' if cr.by.higher else 'lower'} is better; 1 = best, ties share the average rank); the "
           "axis shows each method's mean rank (best on the left). Reference rows (original, retrain) are not ranked. "
           f"Friedman χ² = {cr.statistic:.3g}, p = {cr.p:.2g}: {verdict}. The bar marked CD is the Nemenyi critical "
           f"difference ({cr.cd:.3g} at α = {cr.alpha:g}); a thick horizontal line joins methods whose Nemenyi p is at "
           f"least α (cannot be told apart). Rule for missing values: {MISSING_RULE}.{dropped}")
    return save(fig, out / stem, cap)


def render_all(rows: Iterable[dict[str, Any]], scores: Mapping[str, Mapping[str, np.ndarray]], out_dir: Path, *,
               specs: Mapping[str, Any] | Callable | None = None, references: Sequence[str] | None = None,
               primary: str = "avg_gap", higher_is_better: bool | None = None, reference: str = "retrain",
               original: str = "original", method_order: Sequence[str] | None = None,
               class_info: Callable[[Group], ClassInfo | None] | None = None) -> FigureReport:
    """Every figure for every group, and a critical-difference diagram per suite. ``scores`` maps run_id ->
    the run's per-example arrays; ``specs``, ``references``, ``higher_is_better``: as for
    :func:`.leaderboard.build` (the declarations decide what each figure draws); ``class_info(group)`` gives
    the test labels and forgotten classes for class-forgetting heatmaps (None: the heatmap is skipped with a
    note)."""
    rows = list(rows)
    lb = build(rows, primary=primary, specs=specs, higher_is_better=higher_is_better, references=references,
               method_order=method_order, reference=reference)
    report = FigureReport([], [])
    out_dir = Path(out_dir)
    with _style_context():
        # one colour and marker per method across every figure: suite order, then by name
        order = {m: i for i, m in enumerate(method_order or ())}
        every = sorted({r.method for g in lb.groups for r in g.rows}, key=lambda m: (order.get(m, len(order)), m))
        styles = method_styles(every, reference, original)
        for g in lb.groups:
            out = out_dir / sanitize(f"{g.dataset}_{g.model}_{g.request}_{g.device}")
            results: list[FigureFile | str] = [forget_vs_test(g, styles, out), mia_bars(g, styles, out, reference),
                                               cost_pareto(g, styles, out, primary)]
            results += roc_curves(g, styles, out, scores, original)
            results += (before_after(g, styles, out, original, reference) or
                        [f"{_where(g)}: no value declares a before-unlearning counterpart: skipped before_after"])
            if g.request_kind == "class":
                results.append(class_heatmap(g, out, scores, class_info(g) if class_info else None))
            for r in results:
                (report.skipped if isinstance(r, str) else report.written).append(r)
        for cr in lb.suites:
            stem = "critical_difference" if len(lb.suites) == 1 else f"critical_difference_{sanitize(cr.suite)}"
            r = critical_difference(cr, styles, out_dir, stem)
            (report.skipped if isinstance(r, str) else report.written).append(r)
    return report
