"""The seed papers' claims, each checked against stored results: a pure function of run rows
(``RunRecord.row()`` dicts, or an ``unlearnbench export`` file's rows) and the metric declarations.

For each claim of the three seed papers (PRUNE; prediction-distribution fine-tuning; weight perturbation)
it lists the cells it was checked on, the method's numbers beside retrain's (means over seeds; the newest
record per cell), a verdict -- ``holds``, ``does not hold`` or ``not measured here`` -- and the rule used for
the verdict. A claim holds when its rule holds on every cell it applies to (each cell's line says whether
it does there); it is "not measured here" when no stored cell can check it (no such request, or the value
is not measured on this device, e.g. peak memory on the CPU). The rules are this benchmark's reading of the
claims (the papers give no thresholds); the tolerances are stated with each.

Values are found through their declarations (``unlearnbench.attacks.declaration``): membership attacks are
the values of family ``membership`` with unit ``AUC``; the backdoor attack success rate is the ``backdoor``
score declared with a ``before`` value; storage, time and work are the ``cost`` values of those families.
Only rows with status ``ok`` and the methods' default or hand-set hyperparameters count (tuned rows are
rows of their own in the leaderboard and are left out here).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from .ranking import latest_rows, method_key, num

HOLDS, FAILS, UNMEASURED = "holds", "does not hold", "not measured here"
REFERENCE = "retrain"
MEMBERSHIP_TOL = 0.05  # |MIA AUC − retrain's| at most this: within the AUC's sampling noise on ~100-image forget sets
ACC_TOL = 0.05  # |forget accuracy − retrain's| at most this
CLASS_TOL = 0.1  # forgotten-class test accuracy at most retrain's + this (1/C for 10 classes)
ASR_TOL = 0.05  # attack success rate at most retrain's + this
STORAGE_FRAC = 0.1  # "lightweight": extra bytes at most this fraction of the original model's
COMPETITIVE = 2.0  # "competitive": time at most this multiple of the median of the other unlearning methods
SPEEDUP = 15.0  # weight perturbation's claimed speed-up over retraining


@dataclass
class CellCheck:
    cell: str  # "dataset / model / request"
    n: int  # seeds
    text: str  # the numbers, method vs retrain
    ok: bool | None  # None: not measurable on this cell


@dataclass
class Claim:
    method: str
    paper: str
    claim: str
    rule: str
    checks: list[CellCheck] = field(default_factory=list)
    note: str = ""

    @property
    def verdict(self) -> str:
        measured = [c for c in self.checks if c.ok is not None]
        if not measured:
            return UNMEASURED
        return HOLDS if all(c.ok for c in measured) else FAILS

    @property
    def summary(self) -> str:
        measured = [c for c in self.checks if c.ok is not None]
        if not measured:
            return self.verdict
        good = sum(bool(c.ok) for c in measured)
        return f"{self.verdict} ({good} of {len(measured)} cells)"


PAPERS = {
    "prune": "Li, Wang, Yuan, Zhang et al., PRUNE (arXiv 2505.06520, 2025; Neural Networks 201:108897, 2026)",
    "distribution_ft": "Chen, Huang, Li et al., Fast yet versatile machine unlearning for deep neural networks "
                       "(Neural Networks 190:107648, 2025)",
    "weight_perturbation": "Chen, Wang, Huang, Lightweight machine unlearning in neural network (arXiv 2111.05528, "
                           "2021)",
}


# ---------------------------------------------------------------------------------------------- cells


class Cell:
    """The rows of one (dataset, model, request, device) cell, per method (newest record per seed, ok only)."""

    def __init__(self, key: tuple, rows: list[dict[str, Any]]):
        self.key = key
        self.label = f"{key[0]} / {key[1]} / {key[2]}" + (f" ({key[3]})" if key[3] not in ("", "cpu") else "")
        self.by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            self.by_method[method_key(r)].append(r)
        cfg = (rows[0].get("config") or {}) if rows else {}
        req = cfg.get("request") or {}
        self.kind = str(req.get("kind") or str(key[2]).split("-")[0])

    def n(self, method: str) -> int:
        return len(self.by_method.get(method, []))

    def mean(self, method: str, name: str) -> float:
        vals = [num(r.get(name)) for r in self.by_method.get(method, [])]
        vals = [v for v in vals if not math.isnan(v)]
        return sum(vals) / len(vals) if vals else float("nan")

    def names(self, method: str) -> set[str]:
        out: set[str] = set()
        for r in self.by_method.get(method, []):
            out.update(k for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        return out


def cells_of(rows: Iterable[dict[str, Any]]) -> list[Cell]:
    rows, _ = latest_rows(rows)
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("status") != "ok":
            continue
        env = r.get("env") or {}
        groups[(r["dataset"], r["model"], r["request"], str(env.get("device_type") or ""))].append(r)
    return [Cell(k, groups[k]) for k in sorted(groups)]


def _f(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _g(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


# --------------------------------------------------------------------------------------- the checks


def _membership_names(cell: Cell, method: str, spec_of: Callable[[str], Any]) -> list[str]:
    out = []
    for name in sorted(cell.names(method) & cell.names(REFERENCE)):
        spec = spec_of(name)
        if spec is not None and spec.kind == "score" and spec.family == "membership" and spec.unit == "AUC":
            out.append(name)
    return out


def _backdoor_asr(cell: Cell, method: str, spec_of: Callable[[str], Any]) -> tuple[str, str] | None:
    """(the backdoor score declared lower-is-better with a ``before`` value, that before value's name)."""
    for name in sorted(cell.names(method)):
        spec = spec_of(name)
        if spec is not None and spec.kind == "score" and spec.family == "backdoor" and spec.direction == "lower" \
                and spec.before:
            return name, spec.before
    return None


def _check_membership(cell: Cell, m: str, spec_of) -> CellCheck | None:
    names = _membership_names(cell, m, spec_of)
    if not names or not cell.n(REFERENCE):
        return None
    parts, ok = [], True
    for name in names:
        a, b = cell.mean(m, name), cell.mean(REFERENCE, name)
        good = abs(a - b) <= MEMBERSHIP_TOL
        ok &= good
        parts.append(f"{name} {_f(a)} vs retrain {_f(b)} (original {_f(cell.mean('original', name))})")
    return CellCheck(cell.label, cell.n(m), "; ".join(parts), ok)


def _check_subset(cell: Cell, m: str, spec_of) -> CellCheck | None:
    """Random / points requests: forget accuracy and membership AUCs within tolerance of retrain's."""
    if cell.kind not in ("random", "points") or not cell.n(m) or not cell.n(REFERENCE):
        return None
    fa, fr = cell.mean(m, "forget_acc"), cell.mean(REFERENCE, "forget_acc")
    mem = _check_membership(cell, m, spec_of)
    ok = abs(fa - fr) <= ACC_TOL and (mem is None or bool(mem.ok))
    text = f"forget_acc {_f(fa)} vs retrain {_f(fr)} (original {_f(cell.mean('original', 'forget_acc'))})"
    if mem is not None:
        text += "; " + mem.text
    return CellCheck(cell.label, cell.n(m), text, ok)


def _check_class(cell: Cell, m: str, spec_of) -> CellCheck | None:
    """Class requests: the forgotten class's unseen test images recognised at most CLASS_TOL more often than by
    retrain; the other classes' test accuracy shown beside."""
    if cell.kind != "class" or not cell.n(m) or not cell.n(REFERENCE):
        return None
    a, b = cell.mean(m, "test_acc_forgotten_class"), cell.mean(REFERENCE, "test_acc_forgotten_class")
    if math.isnan(a):
        return None
    ok = a <= b + CLASS_TOL
    text = (f"test_acc_forgotten_class {_f(a)} vs retrain {_f(b)} (original "
            f"{_f(cell.mean('original', 'test_acc_forgotten_class'))}); test_acc_rest {_f(cell.mean(m, 'test_acc_rest'))}"
            f" vs retrain {_f(cell.mean(REFERENCE, 'test_acc_rest'))}")
    return CellCheck(cell.label, cell.n(m), text, ok)


def _claims_prune(cells: list[Cell], spec_of) -> list[Claim]:
    m = "prune"
    cert = Claim(m, PAPERS[m], "certified forgetting of the requested points",
                 "every forget point predicted other than its label (forget_acc = 0) and certified on its linear "
                 "region (prune.certified_fraction = 1, re-verified after timing) on points requests")
    for c in cells:
        if c.kind == "points" and c.n(m):
            fa, cf = c.mean(m, "forget_acc"), c.mean(m, "prune.certified_fraction")
            cert.checks.append(CellCheck(c.label, c.n(m), f"forget_acc {_f(fa)}, prune.certified_fraction {_f(cf)}",
                                         None if math.isnan(cf) else (fa == 0.0 and cf >= 1.0)))
    other = [c for c in cells if c.kind != "points" and c.n(m) and not math.isnan(c.mean(m, "prune.certified_fraction"))]
    if other:
        cert.note = "Beyond points requests (not part of the rule): prune.certified_fraction " + "; ".join(
            f"{c.label} {_f(c.mean(m, 'prune.certified_fraction'))}" for c in other) + "."

    cls = Claim(m, PAPERS[m], "class-level unlearning",
                f"on class requests the forgotten class's unseen test images are predicted as it at most {CLASS_TOL} "
                "more often than by retrain (test_acc_forgotten_class; retrain never saw the class)")
    for c in cells:
        chk = _check_class(c, m, spec_of)
        if chk is not None:
            flips = c.mean(m, "prune.flips_test_other")
            if not math.isnan(flips):
                chk.text += f"; other-class test predictions changed: {_g(flips)}"
            cls.checks.append(chk)

    store = Claim(m, PAPERS[m], "lightweight extra storage",
                  f"extra_bytes (what a deployment stores beyond the original: patches, sign patterns, box) at most "
                  f"{STORAGE_FRAC:.0%} of the original model's bytes (prune.original_bytes)")
    for c in cells:
        if c.n(m):
            eb, ob = c.mean(m, "extra_bytes"), c.mean(m, "prune.original_bytes")
            ok = None if math.isnan(eb) or math.isnan(ob) or ob <= 0 else eb <= STORAGE_FRAC * ob
            ab = c.mean(m, "prune.reassure_bytes")
            store.checks.append(CellCheck(c.label, c.n(m), f"extra_bytes {_g(eb)} = {_f(eb / ob * 100, 1) if ob else 'n/a'}% "
                                          f"of {_g(ob)}; as REASSURE's (A, b): {_g(ab)}", ok))

    eff = Claim(m, PAPERS[m], "efficiency and memory competitive with baselines",
                f"time_s at most {COMPETITIVE:g}x the median time_s of the other unlearning methods on the cell (not "
                "original or retrain), and likewise peak_mem_mib where it is measured (CUDA only)")
    for c in cells:
        if not c.n(m):
            continue
        others = [k for k in c.by_method if k not in (m, REFERENCE, "original") and not k.endswith("(tuned)")]
        if not others:
            eff.checks.append(CellCheck(c.label, c.n(m), "no other unlearning method on this cell", None))
            continue
        parts, ok = [], True
        for name, unit in (("time_s", "s"), ("peak_mem_mib", "MiB")):
            mine = c.mean(m, name)
            theirs = sorted(c.mean(k, name) for k in others if not math.isnan(c.mean(k, name)))
            if math.isnan(mine) or not theirs:
                parts.append(f"{name} not measured")
                continue
            med = theirs[len(theirs) // 2] if len(theirs) % 2 else 0.5 * (theirs[len(theirs) // 2 - 1] + theirs[len(theirs) // 2])
            ok &= mine <= COMPETITIVE * med
            parts.append(f"{name} {_g(mine)} {unit} vs median {_g(med)} {unit} of {', '.join(others)}")
        measured = not all(p.endswith("not measured") for p in parts)
        eff.checks.append(CellCheck(c.label, c.n(m), "; ".join(parts), ok if measured else None))

    mia = Claim(m, PAPERS[m], "resistance to membership inference",
                f"every membership-inference AUC measured on the cell (declared family membership, unit AUC) within "
                f"{MEMBERSHIP_TOL} of retrain's")
    for c in cells:
        if c.n(m):
            chk = _check_membership(c, m, spec_of)
            if chk is not None:
                mia.checks.append(chk)
    return [cert, cls, store, eff, mia]


def _claims_dft(cells: list[Cell], spec_of) -> list[Claim]:
    m = "distribution_ft"
    bd = Claim(m, PAPERS[m], "unlearns backdoor triggers",
               f"on backdoor requests the attack success rate (the backdoor score declared with a before value: "
               f"backdoor.asr) at most retrain's + {ASR_TOL}, down from the original's")
    for c in cells:
        if c.kind != "backdoor" or not c.n(m):
            continue
        found = _backdoor_asr(c, m, spec_of)
        if found is None:
            bd.checks.append(CellCheck(c.label, c.n(m), "no backdoor attack measured", None))
            continue
        name, before = found
        a, b, o = c.mean(m, name), c.mean(REFERENCE, name), c.mean(m, before)
        ok = None if math.isnan(a) or math.isnan(b) else (a <= b + ASR_TOL and (math.isnan(o) or a < o))
        bd.checks.append(CellCheck(c.label, c.n(m), f"{name} {_f(a)} (before: {before} {_f(o)}) vs retrain {_f(b)}; "
                                   f"clean test_acc {_f(c.mean(m, 'test_acc'))} vs retrain "
                                   f"{_f(c.mean(REFERENCE, 'test_acc'))}", ok))
    cls = Claim(m, PAPERS[m], "unlearns whole classes",
                f"on class requests the forgotten class's unseen test images are predicted as it at most {CLASS_TOL} "
                "more often than by retrain (test_acc_forgotten_class)")
    sub = Claim(m, PAPERS[m], "unlearns subsets",
                f"on random and points requests forget_acc within {ACC_TOL} of retrain's and every membership-inference "
                f"AUC within {MEMBERSHIP_TOL} of retrain's")
    for c in cells:
        for claim, fn in ((cls, _check_class), (sub, _check_subset)):
            chk = fn(c, m, spec_of)
            if chk is not None:
                claim.checks.append(chk)
    store = Claim(m, PAPERS[m], "needs no extra storage", "extra_bytes = 0 (no stored training updates or added "
                  "modules)")
    fast = Claim(m, PAPERS[m], "is fast", "faster than retraining on the cell: speedup_vs_retrain > 1 (wall time, "
                 "comparable timings) and passes_vs_retrain > 1 (example passes)")
    for c in cells:
        if not c.n(m):
            continue
        eb = c.mean(m, "extra_bytes")
        store.checks.append(CellCheck(c.label, c.n(m), f"extra_bytes {_g(eb)}", None if math.isnan(eb) else eb == 0))
        fast.checks.append(_speed_check(c, m, 1.0))
    return [bd, cls, sub, store, fast]


def _speed_check(c: Cell, m: str, factor: float) -> CellCheck:
    sp, pv = c.mean(m, "speedup_vs_retrain"), c.mean(m, "passes_vs_retrain")
    measured = [x for x in (sp, pv) if not math.isnan(x)]
    ok = None if not measured else all(x > factor if factor == 1.0 else x >= factor for x in measured)
    x = lambda v: "n/a" if math.isnan(v) else f"{_g(v)}x"  # noqa: E731
    text = (f"speedup_vs_retrain {x(sp)} (time_s {_g(c.mean(m, 'time_s'))} s vs retrain "
            f"{_g(c.mean(m, 'retrain_time_s'))} s); passes_vs_retrain {x(pv)}")
    return CellCheck(c.label, c.n(m), text, ok)


def _claims_wp(cells: list[Cell], spec_of) -> list[Claim]:
    m = "weight_perturbation"
    fast = Claim(m, PAPERS[m], f"{SPEEDUP:g}x faster than retraining",
                 f"speedup_vs_retrain >= {SPEEDUP:g} (wall time) and passes_vs_retrain >= {SPEEDUP:g} (example passes) "
                 "on the cell")
    gone = Claim(m, PAPERS[m], "removes the forget data's contribution",
                 f"as retrain: on random and points requests forget_acc within {ACC_TOL} and every membership AUC within "
                 f"{MEMBERSHIP_TOL} of retrain's; on class requests the forgotten class's test accuracy at most "
                 f"retrain's + {CLASS_TOL}")
    for c in cells:
        if not c.n(m):
            continue
        fast.checks.append(_speed_check(c, m, SPEEDUP))
        chk = _check_subset(c, m, spec_of) or _check_class(c, m, spec_of)
        if chk is not None:
            gone.checks.append(chk)
    return [fast, gone]


def claims(rows: Iterable[dict[str, Any]], spec_of: Callable[[str], Any] | Mapping[str, Any] | None = None
           ) -> list[Claim]:
    """Every claim of the three seed papers, checked on the rows (see the module docstring)."""
    if spec_of is None:
        from unlearnbench.attacks import declaration as spec_of  # noqa: N813 - the registry's lookup
    elif isinstance(spec_of, Mapping):
        table = spec_of
        spec_of = table.get
    cells = cells_of(rows)
    return _claims_prune(cells, spec_of) + _claims_dft(cells, spec_of) + _claims_wp(cells, spec_of)


# ------------------------------------------------------------------------------------------- output


def render(checks: Sequence[Claim], *, title: str = "Claims of the seed papers", source: str = "") -> str:
    """Markdown: a summary table (method, claim, verdict) and, per claim, its rule and per-cell numbers."""
    out = [f"# {title}", ""]
    if source:
        out += [source, ""]
    out += ["Each claim is checked on the stored cells it applies to: the method's means over seeds beside "
            "retrain's (the reference every gap is measured against) and the original's. A claim holds when its "
            "rule holds on every such cell; the rules are this benchmark's reading of the papers' claims (the papers "
            "state no thresholds). Generated by `unlearnbench claims` (reports/claims.py).", "",
            "| method | claim | verdict | cells |", "|---|---|---|---|"]
    for cl in checks:
        out.append(f"| `{cl.method}` | {cl.claim} | **{cl.summary}** | {len(cl.checks)} |")
    out.append("")
    method = None
    for cl in checks:
        if cl.method != method:
            method = cl.method
            out += [f"## `{method}`", "", f"{cl.paper}.", ""]
        out += [f"### {cl.claim}: {cl.summary}", "", f"Rule: {cl.rule}.", ""]
        if not cl.checks:
            out += ["No stored cell checks this claim (no such request, or the method was not run on one).", ""]
        for chk in cl.checks:
            mark = {True: "holds", False: "does not hold", None: "not measured"}[chk.ok]
            out.append(f"- {chk.cell} (n = {chk.n}): {chk.text} — {mark}")
        if cl.note:
            out += ["", cl.note]
        out.append("")
    return "\n".join(out).rstrip() + "\n"
