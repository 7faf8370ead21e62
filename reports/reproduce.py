"""Reproducibility diffs: compare re-measured metrics with stored ones, within per-metric tolerances.

``unlearnbench reproduce`` re-runs stored cells from their recorded configs (fresh model cache, same
device type, nothing written to the store) and hands both sets of values to :func:`compare`; this
module is the pure part: tolerances, the ``--cells`` filter, the comparison and the diff table.

Tolerances (absolute, ``|re-run − stored| <= tol``) come from, highest precedence first: the
``--tolerance`` TOML file, the suite's ``[tolerances]`` table, then :data:`BUILTIN`. A key is a
metric name or a glob (``"cell.*"``, ``"mia.lira_*"``); an exact name beats a glob, a longer glob beats
a shorter one, and ``default`` applies to the rest (1e-6 if no layer sets it). ``inf`` means "not
compared": timing and memory are never compared (wall time, speed-up and the resident-set peak vary
from run to run on any device).

What to expect:

- **CPU, same CPU type and thread count:** bit-exact. The CPU path is fp32 with
  ``torch.use_deterministic_algorithms(True)``; shuffling, initialisation and attack samples are
  seeded. The re-run uses the thread count the record states (``env.cpu_threads``): the reduction
  order of CPU matmuls depends on it (measured on the default suite: re-running 2-thread records with
  ``--threads 1`` changed values in 11 of 24 cells), and on the instruction set the kernels dispatch
  to (AVX2 vs AVX-512), so another CPU type may differ in the last bits. Any difference on the same
  machine type is a bug (a nondeterministic method should be tagged ``nondeterministic`` with its
  reason), or a code change since the run (the command notes a different or dirty commit).
- **CUDA:** not bit-exact, even on the same GPU model. Training runs under bf16 autocast (about 3
  significant digits per operation), TF32 matmuls and ``cudnn.benchmark``, which may pick a different
  convolution algorithm in each process; scatter/index-add kernels use atomics whose summation order
  varies. Differences compound over epochs, so a re-run lands near the stored value, not on it.
  Use a tolerance file with statistical tolerances (e.g. ``default = 0.02`` for accuracies,
  ``"mia.*" = 0.03``), and compare on the same GPU model (the command warns when the device name
  differs).
- **Across devices (CPU vs GPU, or another GPU model):** a different computation (precision,
  kernels), so only statistical agreement is meaningful; a cell's key includes the device type, and
  re-running a CUDA record on the CPU needs ``--device cpu`` and loose tolerances.
- **Across code versions:** the record names its commit; a re-run on another commit compares the
  code as well as the numbers, so the command reports a commit difference before the diff.
"""

from __future__ import annotations

import fnmatch
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from unlearnbench.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_TOLERANCE = 1e-6
INF = float("inf")
# Never compared unless a suite or a tolerance file says otherwise: wall times, speed-ups and memory peaks.
# Names ending in ``_s`` or ``seconds`` are wall times by convention (``time_s``, ``cell.total_s``,
# ``prune.lp_seconds``).
BUILTIN: dict[str, float] = {"time_s": INF, "speedup_vs_retrain": INF, "peak_mem_mib": INF, "*_s": INF,
                             "*seconds": INF, "cell.*": INF}
FILTER_KEYS = ("suite", "dataset", "model", "request", "method", "seed", "status", "device")


class ReproduceError(UserError, ValueError):
    """A malformed tolerance file or cell filter; the message names the problem."""


def _is_glob(key: str) -> bool:
    return any(ch in key for ch in "*?[")


@dataclass(frozen=True)
class Tolerances:
    """Merged tolerance layers (later layers win key by key); see the module docstring."""

    table: dict[str, float] = field(default_factory=dict)

    @classmethod
    def merge(cls, *layers: Mapping[str, float], not_reproducible: Iterable[str] = ()) -> "Tolerances":
        """``not_reproducible``: names whose declaration says a re-run cannot give them again (wall times,
        memory peaks, where a time was measured): not compared unless a layer says otherwise."""
        merged: dict[str, float] = dict(BUILTIN)
        merged.update({str(n): INF for n in not_reproducible})
        for layer in layers:
            merged.update({str(k): float(v) for k, v in (layer or {}).items()})
        return cls(merged)

    def __call__(self, metric: str) -> float:
        if metric in self.table and not _is_glob(metric):
            return self.table[metric]
        globs = sorted((k for k in self.table if _is_glob(k) and fnmatch.fnmatchcase(metric, k)),
                       key=lambda k: (-len(k), k))
        if globs:
            return self.table[globs[0]]
        return self.table.get("default", DEFAULT_TOLERANCE)


def load_tolerance_file(text: str, where: str = "<tolerances>") -> dict[str, float]:
    """A TOML file of ``metric-or-glob = absolute tolerance`` (top level, or under ``[tolerances]``)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ReproduceError(f"{where}: not valid TOML: {exc}") from exc
    table = data.get("tolerances", data) if isinstance(data.get("tolerances"), dict) else data
    out = {}
    for k, v in table.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)) or v < 0:
            raise ReproduceError(f"{where}: tolerance {k!r} must be a non-negative number (or inf), got {v!r}")
        out[k] = float(v)
    return out


# ------------------------------------------------------------------------------------ selecting cells


def cell_label(row: Mapping[str, Any]) -> str:
    """``dataset/model/request/method/seedN``, as the run command names a cell."""
    return f"{row['dataset']}/{row['model']}/{row['request']}/{row['method']}/seed{row['seed']}"


def _field(row: Mapping[str, Any], key: str) -> str:
    if key == "device":
        return str((row.get("env") or {}).get("device_type", ""))
    return str(row.get(key, ""))


def parse_cell_filter(expr: str) -> Callable[[Mapping[str, Any]], bool]:
    """``--cells`` syntax: comma-separated terms that must all hold. A term ``key=pattern`` matches a
    field (keys: suite, dataset, model, request, method, seed, status, device) against a glob, with
    ``|`` between alternatives (``method=retrain|original``); a term without ``=`` is a glob on the
    cell label ``dataset/model/request/method/seedN`` (``digits/*/class-3/*/seed0``)."""
    terms = [t.strip() for t in expr.split(",") if t.strip()]
    if not terms:
        raise ReproduceError(f"empty --cells filter {expr!r}")
    checks: list[Callable[[Mapping[str, Any]], bool]] = []
    for term in terms:
        if "=" in term:
            key, _, pat = (s.strip() for s in term.partition("="))
            if key not in FILTER_KEYS:
                raise ReproduceError(f"--cells: unknown key {key!r} in {term!r}; use one of {', '.join(FILTER_KEYS)} "
                                     "or a glob on the cell label (dataset/model/request/method/seedN)")
            alts = [a for a in pat.split("|") if a]
            if not alts:
                raise ReproduceError(f"--cells: {term!r} has no value")
            checks.append(lambda r, k=key, a=tuple(alts): any(fnmatch.fnmatchcase(_field(r, k), p) for p in a))
        else:
            checks.append(lambda r, p=term: fnmatch.fnmatchcase(cell_label(r), p))
    return lambda row: all(c(row) for c in checks)


def select_rows(rows: Iterable[Mapping[str, Any]], filters: Iterable[str] | None) -> list[Mapping[str, Any]]:
    """Rows matching any of the filters (all rows when there is none)."""
    preds = [parse_cell_filter(f) for f in (filters or [])]
    return [r for r in rows if not preds or any(p(r) for p in preds)]


# ------------------------------------------------------------------------------------ comparing


@dataclass(frozen=True)
class Diff:
    cell: str
    metric: str
    stored: Any
    rerun: Any
    tolerance: float
    verdict: str  # ok | mismatch | not compared | new

    @property
    def failed(self) -> bool:
        return self.verdict == "mismatch"

    @property
    def delta(self) -> float:
        try:
            return abs(float(self.rerun) - float(self.stored))
        except (TypeError, ValueError):
            return float("nan")


def _same(a: float, b: float, tol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= tol


def compare(cell: str, stored: Mapping[str, Any], rerun: Mapping[str, Any], tolerances: Tolerances) -> list[Diff]:
    """Compare a stored run with its re-run. ``stored``/``rerun`` carry ``status`` and the metric values
    (a ``RunRecord.row()`` has both). A status change, a metric missing from the re-run, or a value
    beyond its tolerance is a mismatch; a value the stored run lacks is reported as ``new``."""
    out: list[Diff] = []
    s_status, r_status = stored.get("status", "ok"), rerun.get("status", "ok")
    if s_status != r_status:
        why = str(rerun.get("reason") or "").strip().splitlines()
        out.append(Diff(cell, "status", s_status, f"{r_status}" + (f" ({why[0]})" if why else ""), 0.0, "mismatch"))
        return out
    out.append(Diff(cell, "status", s_status, r_status, 0.0, "ok"))
    s_metrics = {k: v for k, v in stored.items() if k not in _NOT_METRICS}
    r_metrics = {k: v for k, v in rerun.items() if k not in _NOT_METRICS}
    for name in sorted(set(s_metrics) | set(r_metrics)):
        tol = tolerances(name)
        if name not in r_metrics:
            out.append(Diff(cell, name, s_metrics[name], None, tol, "mismatch"))
        elif name not in s_metrics:
            out.append(Diff(cell, name, None, r_metrics[name], tol, "new"))
        elif math.isinf(tol):
            out.append(Diff(cell, name, s_metrics[name], r_metrics[name], tol, "not compared"))
        else:
            ok = _same(float(s_metrics[name]), float(r_metrics[name]), tol)
            out.append(Diff(cell, name, s_metrics[name], r_metrics[name], tol, "ok" if ok else "mismatch"))
    return out


_NOT_METRICS = {"cell_key", "suite", "dataset", "model", "request", "method", "seed", "status", "config_hash",
                "reason", "run_id", "scores_file", "created_at", "config", "hashes", "env"}


def _fmt(v: Any) -> str:
    if v is None:
        return "(missing)"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def diff_table(diffs: Iterable[Diff], show: str = "mismatches") -> str:
    """A plain-text table of the diffs (``show``: ``mismatches`` or ``all``)."""
    rows = [d for d in diffs if show == "all" or d.failed]
    head = ("cell", "metric", "stored", "re-run", "|diff|", "tolerance", "verdict")
    body = [(d.cell, d.metric, _fmt(d.stored), _fmt(d.rerun),
             "" if math.isnan(d.delta) else f"{d.delta:.3g}", f"{d.tolerance:g}", d.verdict.upper()
             if d.failed else d.verdict) for d in rows]
    if not body:
        return ""
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(tuple("-" * w for w in widths))] + [line(r) for r in body]) + "\n"


def summary(diffs: Iterable[Diff]) -> tuple[str, bool]:
    """(one-line summary, passed)."""
    diffs = list(diffs)
    cells = {d.cell for d in diffs}
    bad = [d for d in diffs if d.failed]
    bad_cells = {d.cell for d in bad}
    compared = sum(1 for d in diffs if d.verdict in ("ok", "mismatch") and d.metric != "status")
    skipped = sum(1 for d in diffs if d.verdict == "not compared")
    new = sum(1 for d in diffs if d.verdict == "new")
    text = (f"{len(cells)} cell(s), {compared} value(s) compared, {skipped} not compared (timing/memory)"
            + (f", {new} new value(s) not in the store" if new else "") + ": "
            + (f"{len(bad)} MISMATCH(ES) in {len(bad_cells)} cell(s)" if bad else "all reproduced"))
    return text, not bad
