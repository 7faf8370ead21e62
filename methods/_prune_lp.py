"""PRUNE's linear programs (numpy + scipy HiGHS only; no torch, so worker processes start light).

A linear region of the ReLU head is ``R = {z : A z <= b, lo <= z <= hi}`` (hidden-unit sign constraints plus
the feature box, the box given to HiGHS as variable bounds). The spec for target ``t`` is
``P f(z) <= -eps`` with rows ``e_j - e_t`` (j != t); on ``R`` the head is affine, ``f(z) = F1 z + F2``.

- :func:`region_max`: ``max_{z in R} v.z`` for several objectives ``v`` (one small LP each), optionally
  stopping at the first value above a threshold (the certificate check).
- :func:`shift_patch`: the constant patch from the ranges ``r_j = max_R (f_j - f_t) + eps``:
  ``minimal`` (the optimum of ``min ||p||_inf on R s.t. spec``; see below) or ``reassure`` (REASSURE's
  shift in the coordinates of ``P`` completed by its orthogonal complement ``1/sqrt(C)``; its scale factor
  is 1 for a one-sided spec, so the patch is a shift).
- :func:`joint_minimal_lp`: the same minimal patch as one LP, robust constraints dualised (METHODS.md §1.4):
  variables ``c (C x d)``, ``d (C)``, ``H``, one multiplier vector per robust row.

Why the minimal patch is a constant shift: for any patch ``p`` with ``sup_R |p_k| <= H`` meeting the spec,
``g_j(z) := f_j(z) - f_t(z) + eps <= p_t(z) - p_j(z) <= 2H`` for every ``z in R``, so
``H >= max_j sup_R g_j / 2``; the constant ``d_t = H*, d_j = min(0, H* - r_j)`` with
``H* = max(0, max_j r_j) / 2`` meets the spec and has ``||d||_inf = H*``. So the joint LP's optimum equals
``H*`` (``tests/test_prune.py`` checks this), and C-1 small range LPs replace one LP with ``(3C-1)(m+2d)``
multipliers, which is orders of magnitude slower.

LP work for many regions runs in worker processes (:func:`run_jobs`); ``workers=1`` runs in-process.
Results do not depend on the number of workers (each LP is solved independently, in job order).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Sequence

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog

# HiGHS on these small dense LPs (d variables, m rows, box as bounds) is faster without presolve.
_LP_OPTIONS = {"presolve": False}


class LPError(RuntimeError):
    """HiGHS did not return an optimal solution for a region LP."""


def region_max(A: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray, V: np.ndarray,
               const: np.ndarray | None = None, stop_above: float | None = None) -> tuple[np.ndarray, int, bool]:
    """``max_{z in R} V[i].z + const[i]`` for each row, in order.

    With ``stop_above``, rows are solved until one exceeds it (the rest are NaN). Returns
    (values, LPs solved, all optimal). A row whose LP fails is NaN and makes ``all optimal`` False.
    """
    V = np.atleast_2d(np.asarray(V, dtype=np.float64))
    const = np.zeros(len(V)) if const is None else np.asarray(const, dtype=np.float64)
    bounds = np.stack([lo, hi], axis=1)
    out = np.full(len(V), np.nan)
    ok = True
    n = 0
    for i, v in enumerate(V):
        res = linprog(-v, A_ub=A, b_ub=b, bounds=bounds, method="highs", options=_LP_OPTIONS)
        n += 1
        if res.status != 0:
            ok = False
            break
        out[i] = -res.fun + const[i]
        if stop_above is not None and out[i] > stop_above:
            break
    return out, n, ok


def box_max(V: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``max_{lo <= z <= hi} V[i].z`` in closed form (an upper bound of the region maximum)."""
    return np.maximum(V * lo, V * hi).sum(axis=1)


def spec_rows(F1: np.ndarray, F2: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows ``j != t`` of ``P f``: (indices j, linear parts F1_j - F1_t, constants F2_j - F2_t)."""
    js = np.array([j for j in range(F1.shape[0]) if j != t], dtype=np.int64)
    return js, F1[js] - F1[t], F2[js] - F2[t]


def shift_patch(r: np.ndarray, t: int, form: str) -> np.ndarray:
    """The constant patch ``d`` with ``d_j - d_t <= -r_j`` for all j != t (``r[t]`` is ignored)."""
    r = np.asarray(r, dtype=np.float64).copy()
    r[t] = -np.inf
    need = np.maximum(r, 0.0)
    need[t] = 0.0
    d = np.zeros_like(r)
    if form == "minimal":
        H = need.max() / 2.0
        d[t] = H
        others = np.arange(len(r)) != t
        d[others] = np.minimum(0.0, H - r[others])
    elif form == "reassure":
        # P completed by the all-ones row: P_i d = -max(0, r_i) for spec rows, sum(d) = 0.
        d[t] = need.sum() / len(r)
        others = np.arange(len(r)) != t
        d[others] = d[t] - need[others]
    else:
        raise ValueError(f"unknown patch form {form!r}; use 'minimal' or 'reassure'")
    return d


def joint_minimal_lp(A: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray, F1: np.ndarray, F2: np.ndarray,
                     t: int, eps: float) -> tuple[np.ndarray, np.ndarray, float]:
    """The minimal ``||p||_inf`` affine patch ``p(z) = c z + d`` on R as one LP (HiGHS interior point).

    Robust row ``max_{z in R} u(c).z + w <= rhs`` becomes ``A'^T lam = u(c), b'^T lam + w <= rhs, lam >= 0``
    with ``A' = [A; I; -I]``, ``b' = [b; hi; -lo]``. Returns (c, d, H).
    """
    m, dim = A.shape
    C = F1.shape[0]
    Ap = sp.vstack([sp.csr_matrix(A), sp.identity(dim), -sp.identity(dim)]).tocsr()
    bp = np.concatenate([b, hi, -lo])
    M = Ap.shape[0]
    ApT = Ap.T.tocoo()
    rows = [j for j in range(C) if j != t]
    n_rob = len(rows) + 2 * C
    off_d, off_H, off_l = C * dim, C * dim + C, C * dim + C + 1
    nv = off_l + n_rob * M
    er: list[np.ndarray] = []
    ec: list[np.ndarray] = []
    ev: list[np.ndarray] = []
    beq: list[np.ndarray] = []
    ur: list[np.ndarray] = []
    uc: list[np.ndarray] = []
    uv: list[np.ndarray] = []
    bub: list[float] = []
    ar = np.arange(dim)

    def robust(k: int, r0: int, lin: list[tuple[int, float]], rhs_eq: np.ndarray, ub_terms: list[tuple[int, float]],
               rhs_ub: float) -> None:
        lam = off_l + k * M
        er.append(ApT.row + r0); ec.append(ApT.col + lam); ev.append(ApT.data)
        for block, coef in lin:  # - coef * c_block on the left-hand side
            er.append(ar + r0); ec.append(block * dim + ar); ev.append(np.full(dim, -coef))
        beq.append(rhs_eq)
        ur.append(np.full(M, k)); uc.append(np.arange(lam, lam + M)); uv.append(bp)
        for col, coef in ub_terms:
            ur.append(np.array([k])); uc.append(np.array([col])); uv.append(np.array([coef]))
        bub.append(rhs_ub)

    k = 0
    for j in rows:  # spec: A'^T lam = (F1_j - F1_t + c_j - c_t)^T, b'^T lam + F2_j - F2_t + d_j - d_t <= -eps
        robust(k, k * dim, [(j, 1.0), (t, -1.0)], F1[j] - F1[t], [(off_d + j, 1.0), (off_d + t, -1.0)],
               -eps - (F2[j] - F2[t]))
        k += 1
    for kk in range(C):  # size: A'^T mu = s c_k^T, b'^T mu + s d_k - H <= 0
        for s in (1.0, -1.0):
            robust(k, k * dim, [(kk, s)], np.zeros(dim), [(off_d + kk, s), (off_H, -1.0)], 0.0)
            k += 1
    Aeq = sp.csr_matrix((np.concatenate(ev), (np.concatenate(er), np.concatenate(ec))), shape=(k * dim, nv))
    Aub = sp.csr_matrix((np.concatenate(uv), (np.concatenate(ur), np.concatenate(uc))), shape=(k, nv))
    cost = np.zeros(nv)
    cost[off_H] = 1.0
    bounds = np.full((nv, 2), np.inf)
    bounds[:, 0] = -np.inf
    bounds[off_H, 0] = 0.0
    bounds[off_l:, 0] = 0.0
    res = linprog(cost, A_ub=Aub, b_ub=np.array(bub), A_eq=Aeq, b_eq=np.concatenate(beq), bounds=bounds,
                  method="highs-ipm")
    if res.status != 0:
        raise LPError(f"joint minimal-patch LP failed: {res.message}")
    x = res.x
    return x[:off_d].reshape(C, dim), x[off_d:off_H].copy(), float(x[off_H])


# ------------------------------------------------------------------------------------------- jobs


def patch_job(job: dict[str, Any]) -> dict[str, Any]:
    """Solve one region's patch. Job keys: A, b, lo, hi, F1, F2 (effective affine form on the region, other
    active patches included), t, eps, form ('minimal' | 'reassure'), lp ('ranges' | 'joint')."""
    t0 = time.perf_counter()
    A, b, lo, hi, F1, F2, t = job["A"], job["b"], job["lo"], job["hi"], job["F1"], job["F2"], int(job["t"])
    js, V, const = spec_rows(F1, F2, t)
    out: dict[str, Any] = {"ok": False, "c": None, "d": None, "r": None, "H": math.nan, "lps": 0}
    try:
        if job["form"] == "minimal" and job["lp"] == "joint":
            c, d, H = joint_minimal_lp(A, b, lo, hi, F1, F2, t, float(job["eps"]))
            out.update(ok=True, c=c, d=d, H=H, lps=1)
        else:
            vals, n, ok = region_max(A, b, lo, hi, V, const)
            out["lps"] = n
            if ok:
                r = np.full(F1.shape[0], -np.inf)
                r[js] = vals + float(job["eps"])
                d = shift_patch(r, t, job["form"])
                out.update(ok=True, d=d, r=r, H=float(np.abs(d).max()))
    except LPError:
        pass
    out["seconds"] = time.perf_counter() - t0
    return out


def dual_bound(A: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray, lam: np.ndarray, v: np.ndarray) -> float:
    """Weak duality: for any ``lam >= 0``, ``max_{z in R} v.z <= b.lam + sum_i max(r_i lo_i, r_i hi_i)`` with
    ``r = v - A^T lam`` (the box handled exactly). Sound for every ``lam >= 0``, tight at the optimal one."""
    r = v - A.T @ lam
    return float(b @ lam + np.maximum(r * lo, r * hi).sum())


def verify_job(job: dict[str, Any]) -> dict[str, Any]:
    """Check ``max_R (f_j - f_t) <= -margin`` for all j != t. Rows are taken most-likely-violated first (box
    bound); a row is proven without an LP when the box bound or the dual bound from the multipliers of an
    LP already solved on this region shows it; otherwise one LP; the first violated row ends the check.
    Job keys: A, b, lo, hi, F1, F2 (effective affine form on the region), t, margin."""
    t0 = time.perf_counter()
    A, b, lo, hi, F1, F2, t = job["A"], job["b"], job["lo"], job["hi"], job["F1"], job["F2"], int(job["t"])
    margin = float(job["margin"])
    _, V, const = spec_rows(F1, F2, t)
    bound = box_max(V, lo, hi) + const
    order = np.argsort(-bound, kind="stable")
    bounds = np.stack([lo, hi], axis=1)
    lams: list[np.ndarray] = []
    ok, n, worst = True, 0, -math.inf
    for j in order:
        if bound[j] <= -margin or any(dual_bound(A, b, lo, hi, lam, V[j]) + const[j] <= -margin for lam in lams):
            continue
        res = linprog(-V[j], A_ub=A, b_ub=b, bounds=bounds, method="highs", options=_LP_OPTIONS)
        n += 1
        if res.status != 0:
            ok = False
            break
        value = -res.fun + const[j]
        worst = max(worst, value)
        if value > -margin:
            ok = False
            break
        lams.append(np.maximum(0.0, -np.asarray(res.ineqlin.marginals)))
    return {"ok": bool(ok), "lps": n, "worst": worst, "seconds": time.perf_counter() - t0}


def resolve_workers(workers: int) -> int:
    """``workers`` as a count: 0 means one per CPU core (at most 16)."""
    if workers < 0:
        raise ValueError(f"lp_workers must be >= 0 (0 = one per CPU core), got {workers}")
    if workers == 0:
        try:
            n = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            n = os.cpu_count() or 1
        return max(1, min(16, n))
    return workers


def _context():
    # fork is cheap and workers only touch numpy/scipy; elsewhere spawn (the job functions are importable).
    if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _die_with_parent(parent: int) -> None:
    """Worker initializer: the worker ends when the process that made the pool ends, however it ends (a
    SIGKILL'd parent cannot shut its pool down; without this its workers would sleep forever). Linux:
    ``prctl(PR_SET_PDEATHSIG, SIGKILL)``; everywhere: a watcher thread that polls the parent's PID."""
    import signal
    import threading

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):  # pragma: no cover - no libc prctl
            pass
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run_jobs(fn: Callable[[dict[str, Any]], dict[str, Any]], jobs: Sequence[dict[str, Any]], workers: int = 1,
             min_jobs_per_worker: int = 8) -> list[dict[str, Any]]:
    """``[fn(job) for job in jobs]``, in worker processes when ``workers`` > 1 and there is enough work
    (at least ``min_jobs_per_worker`` jobs per extra worker); the order of results is the order of jobs."""
    n_workers = min(resolve_workers(workers), max(1, len(jobs) // max(1, min_jobs_per_worker)))
    if n_workers <= 1:
        return [fn(job) for job in jobs]
    chunk = max(1, len(jobs) // (4 * n_workers))
    with ProcessPoolExecutor(max_workers=n_workers, mp_context=_context(), initializer=_die_with_parent,
                             initargs=(os.getpid(),)) as pool:
        return list(pool.map(fn, jobs, chunksize=chunk))
