"""PRUNE: unlearning as certified patching of a ReLU MLP (the model's head, or a whole MLP in input space).

Paper: Li, Wang, Yuan, Zhang et al., "PRUNE: A Patching Based Repair Framework for Certifiable Unlearning of
Neural Networks", arXiv 2505.06520 (2025); journal version Neural Networks 201:108897 (2026). Its released
code builds on REASSURE: Fu & Li, "Sound and Complete Neural Network Repair with Minimality and Locality
Guarantees", ICLR 2022.

Algorithm (the trained weights are never changed; patches are extra modules):
1. For a point x to forget, ``z = phi(x)`` (``space``: ``head`` = penultimate features, the head is patched;
   ``input`` = the normalised, flattened image, the whole MLP is patched); its linear region is where the
   patched MLP's hidden units keep z's on/off pattern: ``R = {z' : s_j a_j(z') >= 0}`` intersected with the
   box ``[lo, hi]``. The ``a_j`` (pre-activations) and the local affine form ``f = F1 z + F2`` come from
   batched autograd (``vmap(jacrev)``).
2. Spec: target ``t != y``; ``P f <= -epsilon`` with rows ``e_j - e_t`` (logit t beats every other one by
   epsilon on the whole region).
3. Affine patch ``p`` from LPs over R (scipy ``linprog``, HiGHS): ``minimal`` (min ``||p||_inf`` on R s.t.
   the spec) or ``reassure`` (REASSURE's shift in the coordinates of P).
4. Support network ``g`` (1 on R, sharpness ``gamma``), gated patch
   ``h = ReLU(p + K g - K) - ReLU(-p + K g - K)`` with ``K >= |p|`` on the box; patched model
   ``f + sum_k h_k`` (:class:`~unlearnbench.methods._prune_model.PatchedModel`).
5. Many points: KMeans over the points still predicted with their label; the real point nearest each
   centroid is the cluster's representative; one patch per cluster (target drawn for that cluster) whose
   support is the max over the supports of every member's region; repeat on the points still correct. (The
   released code sent every cluster to the first cluster's target: a bug, not reproduced -- each cluster
   draws its own.) Class requests are not clustered (below).

What a patch changes. A patch is constant over a whole linear region, so every input in a patched region
-- a retain, held-out or test point sharing a forget point's activation pattern -- gets the new prediction
too, and a soft support reaches neighbouring regions as well. Measured on the seeds suite (published
README): with sharp supports 0-1 of 360 digits test images changed on points requests, 3-6 on random 10%;
on mnist-sub1k random 10%, where the CNN's head (128 features, 64 hidden units) has few, large regions,
226-369 of 10,000. ``report()`` counts the retain, held-out and test points
whose prediction the patches changed (after timing, so ``unlearn`` never sees test data).

Reach, ``reach`` (a named choice; the paper's two claims need both):
- ``local``: sharp supports, ``gamma`` (1e4, per pre-activation unit): a patch acts on its own regions only
  and the certified set C(x) below is nearly all of R. It forgets exactly the patched training points: a
  class patched this way left the class's unseen test images at 0.91-0.94 accuracy.
- ``generalising``: support sharpness from the scale of the patched layer's pre-activations,
  ``gamma = gamma_scale / median |a_j(z)|`` (median over every hidden unit of the patched MLP and every
  retain and forget point; ``gamma_scale`` 1; gamma came to 0.85-0.88 on digits, 0.96-1.16 on mnist-sub1k):
  a support falls from 1 to 0 over about one typical pre-activation beyond its region's boundary, so patches
  reach the unseen images near the forgotten points. Fewer points are certified (the band 1/gamma is as wide
  as a typical pre-activation: 0-1% of a class on the seeds cells) and more unrelated predictions change;
  both are reported. On the seeds suite's digits class cells the forgotten class's test accuracy fell to
  0.05-0.14 (0-14 other-class test predictions changed), on mnist-sub1k only to 0.20-0.60.
- ``auto`` (default): ``generalising`` for ``class`` requests (class-level unlearning is about the class,
  seen or not), ``local`` for every other request (certified forgetting of the requested points).

Certificate (:func:`verify_certificate`): for a forget point x with region R and pattern s, the patched model
predicts ``t`` (its prediction at x, required != y) with margin ``epsilon/2`` on
``C(x) = {z in R : |a_j(z)| >= 1/gamma for all j in J(x)}``, ``J(x) = {j : |a_j(x)| >= 1/gamma}``. Proof the
code checks: (i) patches with a member of pattern s have ``g = 1`` on R, so they add their affine ``p`` there
exactly, and one LP per spec row bounds ``f + sum p`` over all of R; (ii) every other member pattern Q differs
from s in some unit j of its first differing layer with ``j in J(x)`` (checked), where Q's constraint is
violated by ``|a_j| >= 1/gamma`` on C(x), so its support term is 0, ``g_Q = 0`` and ``h = 0`` there, given
``K >= |p|`` on the box (checked; p is evaluated at ``clamp(z, lo, hi)``). So other patches contribute
exactly nothing on C(x): the code keeps supports from overlapping on C(x) rather than bounding their
contribution. C(x) is R minus a band of width ``1/gamma`` (pre-activation units) along the ReLU boundaries;
``x in C(x)`` always. LP answers carry HiGHS's tolerances (1e-7), far below the margin.

Choices the paper does not make (option that selects each):
- ``space``: ``head`` (default; images: the ReLU MLP head on frozen penultimate features, as REASSURE did for
  AlexNet; the box is the min/max of the retain + forget features) or ``input`` (MLP models only, the
  authors' own setting for their Purchase MLPs: the whole network after its normalisation, the box the valid
  pixel range [0, 1] through the normalisation, so the certificate holds for every valid image in the region).
  In ``input`` space the returned model's ``features`` is the normalised image (``forward == head(features)``
  holds, the feature width is the input's).
- Class requests, ``class_grouping``: ``points`` (default, as the authors' README says: class requests are
  not clustered -- every forget point's linear region gets a patch of its own, so with ``local`` reach every
  training image of the class is certified) or ``kmeans`` (as their code does: clusters and representatives,
  as for other requests).
- ``patch``: ``minimal`` (default; the abstract's "minimum patch") or ``reassure`` (scale-and-shift; with a
  one-sided spec its scale is 1, so it is a shift ``d`` with ``sum(d) = 0``).
- ``lp``: ``ranges`` (default): C-1 range LPs and the closed-form optimum -- the minimal patch is a constant
  shift, proof in ``_prune_lp``; ``joint``: the single dualised LP of METHODS.md section 1.4 (same optimum,
  returns an affine ``c z + d``; HiGHS interior point, far slower: for cross-checks).
- ``epsilon`` (0.01): strict margin; the released code allows ties (epsilon = 0).
- ``n_clusters`` (2, as the code) and ``kmeans_n_init`` (10, as the code); KMeans ``random_state`` from the
  run seed and the round.
- Rounds: repeat until forget accuracy <= ``target_forget_acc`` (0.0) or ``max_rounds`` (5) rounds (the
  code runs a fixed 2). A budget of E epochs allows at most ceil(E) rounds (a round makes one pass over
  the forget points).
- ``direct_max_points`` (10): a forget set of at most this many points (``points`` requests) has every
  point's region patched directly in the first round (one patch per distinct region, its own target), so
  every point is certified; in later rounds of a larger request, once at most this many points are still
  predicted with their label, each distinct region among them is patched directly.
- Targets: uniform among labels != the representative's label (code), drawn from ``numpy`` seeded by the run
  seed; for a directly patched region holding several points, among labels none of them has.
- ``certify_members`` (True; the code: False): a cluster patch's shift covers the regions of all its members
  (C-1 LPs per member region), so every member is certified, not only the representative -- while the
  covering LPs stay within ``member_lp_limit`` (20,000 per call; on the seeds suite's CPU cells an LP took
  8-10 ms on the shared 2-core machine, so covering stops within about 3 minutes; the random-10% cells needed
  855-1,269 covering LPs and 5-8 s in all, against 0.1-0.2 s without covering); past it, the remaining clusters
  are patched from their representative's region alone (``member_cover_truncated`` = 1).
- Support storage: a member region is stored as its sign pattern (m numbers) -- the same function as
  REASSURE's ``(A, b)`` support layer, derived from the original's weights -- so ``extra_bytes`` (what a
  deployment of this code stores: patterns, shifts, bounds, box) is about ``d + 1`` times smaller than
  storing each region as ``(A, b)``, which ``report()`` gives as ``reassure_bytes``.
- ``lp_workers`` (0 = one process per CPU core; 1 = in-process): LP work for many regions in parallel
  processes (in-process anyway when there are fewer than 8 jobs per extra worker); results do not depend on
  it.
- ``certify_max_points`` (0 = all): ``report()`` certifies a seeded random subset of the forget set of at most
  this size (an estimate of ``certified_fraction``, ``certify_points`` says how many); certifying costs about
  one LP per uncertified point and up to C-1 per certified one.

Work counted (``methods/cost.py``): a forward pass per point whose features (head space) or MLP outputs
(input space) are computed; ``work.lp_solves``, the linear programs solved in ``unlearn``. Verification LPs
run after timing (``certify_lp_count``).

Reported (``request.info``): ``generalising`` (1/0), ``gamma_used``, ``preact_median``, ``input_space`` (1/0),
``rounds``, ``patches``, ``support_regions``, ``lp_count``, ``lp_seconds``, ``lp_failures``, ``member_lps``,
``member_cover_truncated``, ``patch_linf_mean``, ``forget_acc_after``. After timing (``report()``):
``certified_fraction`` (``certify_points``, ``certify_seconds``, ``certify_lp_count``); ``flips_retain``,
``flips_heldout``, ``flips_test`` (class requests also split into ``*_forgotten_class`` and ``*_other``: test
or held-out images of the forgotten class vs of the other classes); ``patch_bytes`` and ``reassure_bytes``.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from unlearnbench.datasets import TensorData

from . import _prune_lp as lp
from ._prune_model import (SPACES, Patch, PatchedModel, hidden_sizes, input_box, linearise, pattern_of,
                           patched_layers, pre_activations, region_constraints, space_features)
from .base import Bounds, Method, MethodError, UnlearnRequest, categorical, int_range, log_range, param, register
from .cost import add_passes, add_work
from .models import ModelError, state_bytes
from .training import _batched_eval, eval_mode, predict, predict_features

PAPER = ("Li, Wang, Yuan, Zhang et al., \"PRUNE: A Patching Based Repair Framework for Certifiable Unlearning of "
         "Neural Networks\", arXiv 2505.06520, 2025; Neural Networks 201:108897, 2026")
REACHES = ("auto", "local", "generalising")

__all__ = ["Prune", "PatchedModel", "verify_certificate"]


# --------------------------------------------------------------------------------------------- helpers


def _features(model: nn.Module, points: TensorData | torch.Tensor, space: str = "head") -> torch.Tensor:
    """The points the patched MLP sees (``space``; a PatchedModel knows its own): float32, one counted forward
    pass per point (the features pass in head space; in input space the MLP itself is run on them)."""
    if isinstance(model, PatchedModel) or space == "head":
        return predict_features(model, points).float()
    x = points.x if isinstance(points, TensorData) else points
    add_passes(fwd=x.shape[0])
    with torch.no_grad(), eval_mode(model):
        return _batched_eval(lambda xb: space_features(model, xb, space), x, 1024).float()


def _lin64(model: PatchedModel | nn.Module, space: str = "head") -> list[nn.Linear]:
    """Float64 copies of the patched MLP's Linear layers."""
    layers = model.head.linears() if isinstance(model, PatchedModel) else patched_layers(model, space)
    return [copy.deepcopy(m).double().requires_grad_(False) for m in layers]


def _mismatch(pat: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """Number of units where each pattern row differs from each member row ``[N, n]`` (exact)."""
    return (pat.shape[1] - pat @ members.T) / 2


def _effective_affine(head, lin: dict[str, torch.Tensor], z64: torch.Tensor, i: int, active: torch.Tensor
                      ) -> tuple[np.ndarray, np.ndarray]:
    """``F1, F2`` of ``original head + sum of active patches`` on point i's region (float64)."""
    F1 = lin["F1"][i].clone()
    F2 = lin["out"][i] - F1 @ z64[i]
    for k in torch.nonzero(active, as_tuple=True)[0].tolist():
        patch = head.patches[k]
        F2 = F2 + patch.d.double()
        if patch.c is not None:
            F1 = F1 + patch.c.double()
    return F1.cpu().numpy(), F2.cpu().numpy()


def _active_patches(head, pattern64: torch.Tensor) -> torch.Tensor:
    """``[N, P]`` bool: patch k has a member region with exactly this pattern (its support is 1 there)."""
    P = len(head.patches)
    if P == 0:
        return torch.zeros(pattern64.shape[0], 0, dtype=torch.bool, device=pattern64.device)
    pats, owner = head.member_table()
    pats = pats.double()
    out = torch.zeros(pattern64.shape[0], P, dtype=torch.bool, device=pattern64.device)
    for s in range(0, pattern64.shape[0], 1024):
        same = _mismatch(pattern64[s:s + 1024], pats) < 0.5  # [chunk, n]
        counts = torch.zeros(same.shape[0], P, dtype=torch.float64, device=pattern64.device)
        out[s:s + 1024] = counts.index_add_(1, owner, same.double()) > 0.5
    return out


def _supports_disjoint(head, pre64: torch.Tensor, pattern64: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """``[N]`` bool: every member pattern Q != the point's pattern differs from it, in Q's first differing
    layer, at a unit j with ``|a_j(x)| >= 1/gamma`` (so g_Q = 0 on the certified set C(x))."""
    N = pattern64.shape[0]
    if len(head.patches) == 0:
        return torch.ones(N, dtype=torch.bool, device=pattern64.device)
    tau = 1.0 / float(head.gamma)
    pats = head.member_table()[0].double()
    strong = (pre64.abs() >= tau).double()
    ok = torch.ones(N, dtype=torch.bool, device=pattern64.device)
    for s in range(0, N, 1024):
        pat, st = pattern64[s:s + 1024], strong[s:s + 1024]
        decided = torch.zeros(pat.shape[0], pats.shape[0], dtype=torch.bool, device=pat.device)
        good = torch.ones_like(decided)
        start = 0
        for size in sizes:
            sl = slice(start, start + size)
            mism = _mismatch(pat[:, sl], pats[:, sl]) > 0.5
            ps = pat[:, sl] * st[:, sl]  # restricted to strong units
            strong_mism = (st[:, sl].sum(1, keepdim=True) - ps @ pats[:, sl].T) / 2 > 0.5
            first = mism & ~decided
            good = torch.where(first, strong_mism, good)
            decided |= mism
            start += size
        ok[s:s + 1024] = good.all(1)
    return ok


def verify_certificate(model: PatchedModel, points: TensorData | torch.Tensor, labels: torch.Tensor | None = None,
                       *, workers: int = 1, details: dict | None = None) -> torch.Tensor:
    """Per point, True iff the patched model's prediction at the point is certified on the point's region.

    Re-derives each point's linear region from the original head (``vmap(jacrev)``), finds the patches whose
    member regions include it, and checks (see the module docstring): the point lies in the feature box;
    every patch's ``K`` bounds its ``|p|`` on the box; at least one patch covers the region; every other
    member region's support is exactly 0 on the certified set C(x); and ``f + sum of covering patches``
    predicts the point's prediction ``t`` with margin ``epsilon/2`` on the whole region (C-1 LPs, HiGHS).
    With ``labels``, also requires ``t != label``. ``workers`` as ``Prune.lp_workers``.
    """
    if not isinstance(model, PatchedModel):
        raise TypeError(f"verify_certificate needs a PatchedModel (PRUNE's output), got {type(model).__name__}")
    head = model.head
    z = _features(model, points)
    N = z.shape[0]
    ok = torch.zeros(N, dtype=torch.bool)
    if N == 0 or len(head.patches) == 0:
        return ok
    with torch.no_grad():
        pred = head(z).argmax(1).cpu()
    ok = ((z >= head.lo) & (z <= head.hi)).all(1).cpu()
    if labels is not None:
        ok &= pred != labels.cpu()
    lo, hi = head.lo.double(), head.hi.double()
    k_ok = all(bool(Patch.bound(p.d, p.c, lo, hi) <= p.K.double()) for p in head.patches)
    if not k_ok:
        return torch.zeros(N, dtype=torch.bool)
    lin64 = _lin64(model)
    sizes = hidden_sizes(lin64)
    z64 = z.double()
    pre64 = pre_activations(z64, lin64)
    pat64 = pattern_of(pre64)
    active = _active_patches(head, pat64)
    ok &= active.any(1).cpu()
    ok &= _supports_disjoint(head, pre64, pat64, sizes).cpu()
    margin = float(head.epsilon) / 2
    lo_np, hi_np = lo.cpu().numpy(), hi.cpu().numpy()
    lps, secs = 0, 0.0
    idx_all = torch.nonzero(ok, as_tuple=True)[0]
    for s in range(0, len(idx_all), 1024):
        idx = idx_all[s:s + 1024].to(z.device)
        lin = linearise(z64[idx], lin64)
        jobs = []
        for r, i in enumerate(idx.tolist()):
            A, b = region_constraints(lin, z64[idx], r)
            F1, F2 = _effective_affine(head, lin, z64[idx], r, active[i])
            jobs.append({"A": A.cpu().numpy(), "b": b.cpu().numpy(), "lo": lo_np, "hi": hi_np, "F1": F1, "F2": F2,
                         "t": int(pred[i]), "margin": margin})
        results = lp.run_jobs(lp.verify_job, jobs, workers)
        for i, res in zip(idx.tolist(), results):
            ok[i] = res["ok"]
            lps += res["lps"]
            secs += res["seconds"]
    if details is not None:
        details.update(lp_count=lps, lp_seconds=secs)
    return ok


# ---------------------------------------------------------------------------------------------- method


@register("prune", tags=("needs_relu_head",), paper=PAPER,
          summary="PRUNE: certified REASSURE-style patches on a ReLU MLP (the head, or an MLP in input space); "
                  "original weights untouched")
@dataclass(frozen=True)
class Prune(Method):
    patch: str = param("minimal", "patch LP: minimal ||p||_inf on the region, or REASSURE's shift",
                       choices=("minimal", "reassure"))
    lp: str = param("ranges", "minimal patch via C-1 range LPs + closed form, or one dualised LP (slow)",
                    choices=("ranges", "joint"))
    epsilon: float = param(0.01, "strict spec margin: logit_t >= logit_j + epsilon on the region (code: 0)",
                           search=log_range(1e-3, 1.0))
    reach: str = param("auto", "support reach: local (sharp, gamma), generalising (gamma_scale / median "
                       "|pre-activation|), auto (generalising for class requests, else local)", choices=REACHES,
                       search=categorical(*REACHES))
    gamma: float = param(1e4, "local reach: support sharpness per pre-activation unit (code 0.1)",
                         search=log_range(1.0, 1e5))
    gamma_scale: float = param(1.0, "generalising reach: sharpness = gamma_scale / median |pre-activation|",
                               search=log_range(0.1, 10.0))
    space: str = param("head", "patch the head on frozen features, or (MLP models) the whole MLP in input space",
                       choices=SPACES)
    class_grouping: str = param("points", "class requests: points (every region its own patch, the authors' "
                                "README) or kmeans (clusters, as their code)", choices=("points", "kmeans"))
    n_clusters: int = param(2, "KMeans clusters (one representative and patch each) per round (code: 2)",
                           search=int_range(1, 8))
    kmeans_n_init: int = param(10, "KMeans restarts (code: 10)")
    direct_max_points: int = param(10, "at most this many points left: patch each region directly")
    target_forget_acc: float = param(0.0, "stop when forget accuracy (prediction == label) is at most this")
    max_rounds: int = param(5, "round limit (code: a fixed 2)", search=int_range(1, 10))
    certify_members: bool = param(True, "cluster patch covers every member's region (C-1 LPs per member; code: "
                                  "False)")
    member_lp_limit: int = param(20000, "certify_members: at most this many covering LPs per call, then "
                                 "representatives only", bounds=Bounds(0))
    lp_workers: int = param(0, "processes for LP work: 0 = one per CPU core, 1 = in-process")
    certify_max_points: int = param(0, "report(): certify a seeded random subset of this many forget points (0 = all)")

    def not_applicable(self, kind: str, model: nn.Module) -> str | None:
        reason = super().not_applicable(kind, model)
        if reason:
            return reason
        try:
            patched_layers(model, self.space)
        except ModelError as exc:
            return f"{self.name} (space={self.space}) cannot patch this model: {exc}"
        return None

    def _check(self) -> None:
        if self.epsilon < 0 or self.gamma <= 0 or self.gamma_scale <= 0:
            raise MethodError(f"prune: epsilon must be >= 0, gamma and gamma_scale > 0 (got {self.epsilon}, "
                              f"{self.gamma}, {self.gamma_scale})")
        if self.member_lp_limit < 0:
            raise MethodError(f"prune: member_lp_limit must be >= 0 (got {self.member_lp_limit})")
        if self.n_clusters < 1 or self.max_rounds < 1 or self.kmeans_n_init < 1:
            raise MethodError("prune: n_clusters, max_rounds and kmeans_n_init must be >= 1")
        if self.certify_members and self.lp != "ranges":
            raise MethodError("prune: certify_members needs lp = 'ranges' (the joint LP covers one region)")
        lp.resolve_workers(self.lp_workers)

    def resolved_reach(self, kind: str) -> str:
        """``local`` or ``generalising`` for a request kind (``auto``: generalising for class requests)."""
        if self.reach != "auto":
            return self.reach
        return "generalising" if kind == "class" else "local"

    def unlearn(self, request: UnlearnRequest) -> nn.Module:
        self._check()
        model = request.model
        model.eval()
        space = self.space
        lin64 = _lin64(model, space)
        zf = _features(model, request.forget, space)
        zr = _features(model, request.retain, space)
        zall = torch.cat([zr, zf]) if len(zr) else zf
        if space == "head":
            lo, hi = zall.min(0).values, zall.max(0).values
        else:
            lo, hi = (t.to(zf.device) for t in input_box(model, tuple(request.forget.x.shape[1:])))
        reach = self.resolved_reach(request.kind)
        preact_median = float("nan")
        gamma = self.gamma
        if reach == "generalising":
            with torch.no_grad():
                pre_all = torch.cat([pre_activations(zall[i:i + 8192].double(), lin64).abs().float()
                                     for i in range(0, len(zall), 8192)])
            preact_median = float(pre_all.median())
            del pre_all
            gamma = self.gamma_scale / max(preact_median, 1e-12)
        patched = PatchedModel(model, lo, hi, gamma, self.epsilon, space)
        head = patched.head
        yf = request.forget.y
        N = len(yf)
        z64 = zf.double()
        pat64 = pattern_of(pre_activations(z64, lin64))
        rng = np.random.default_rng(request.seed)
        rounds_cap = max(1, math.ceil(request.budget.epochs(self.max_rounds)))
        stats = {"lp_count": 0, "lp_seconds": 0.0, "lp_failures": 0, "rounds": 0, "member_lps": 0,
                 "member_cover_truncated": 0}
        lo_np, hi_np = lo.double().cpu().numpy(), hi.double().cpu().numpy()
        unclustered = request.kind == "class" and self.class_grouping == "points"
        for r in range(rounds_cap):
            still = self._still_correct(head, zf, yf)
            if N == 0 or len(still) / N <= self.target_forget_acc or len(still) == 0:
                break
            stats["rounds"] += 1
            if r == 0 and N <= self.direct_max_points:
                # a small request (e.g. ``points``): every point's region gets its own patch, so every point is
                # certified -- also those a neighbour's patch would happen to flip without a certificate
                groups = self._direct_groups(torch.arange(N), pat64, yf, rng, request.num_classes)
            elif unclustered or len(still) <= self.direct_max_points:
                # class requests are not clustered (the authors' README): every region still predicted
                # with its label gets a patch of its own
                groups = self._direct_groups(still, pat64, yf, rng, request.num_classes)
            else:
                groups = self._clusters(still, zf, yf, rng, request.num_classes, request.seed, r)
            self._patch_groups(groups, head, z64, pat64, lin64, lo_np, hi_np, stats)
        still = self._still_correct(head, zf, yf)
        add_work("lp_solves", stats["lp_count"])
        request.info.update({
            "generalising": float(reach == "generalising"), "gamma_used": float(gamma),
            "preact_median": preact_median, "input_space": float(space == "input"),
            "rounds": float(stats["rounds"]), "patches": float(len(head.patches)),
            "support_regions": float(sum(len(p.patterns) for p in head.patches)),
            "lp_count": float(stats["lp_count"]), "lp_seconds": float(stats["lp_seconds"]),
            "lp_failures": float(stats["lp_failures"]), "member_lps": float(stats["member_lps"]),
            "member_cover_truncated": float(stats["member_cover_truncated"]),
            "patch_linf_mean": float(np.mean([float(p.d.abs().max()) for p in head.patches])) if len(head.patches)
            else 0.0,
            "forget_acc_after": float(len(still) / N) if N else float("nan"),
        })
        return patched

    # -- rounds
    @staticmethod
    def _still_correct(head, zf: torch.Tensor, yf: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            pred = head(zf).argmax(1)
        return torch.nonzero(pred == yf, as_tuple=True)[0].cpu()

    @staticmethod
    def _draw_target(rng: np.random.Generator, forbidden: set[int], num_classes: int) -> int | None:
        allowed = [c for c in range(num_classes) if c not in forbidden]
        return int(rng.choice(allowed)) if allowed else None

    def _direct_groups(self, still: torch.Tensor, pat64: torch.Tensor, yf: torch.Tensor,
                       rng: np.random.Generator, num_classes: int) -> list[dict]:
        """One group per distinct region among the points ``still`` (first point = representative)."""
        groups: list[dict] = []
        seen: dict[bytes, int] = {}
        for i in still.tolist():
            key = pat64[i].cpu().numpy().tobytes()
            if key in seen:
                groups[seen[key]]["labels"].add(int(yf[i]))
                continue
            seen[key] = len(groups)
            groups.append({"rep": i, "members": [i], "labels": {int(yf[i])}})
        for g in groups:
            g["target"] = self._draw_target(rng, g["labels"], num_classes)
        return [g for g in groups if g["target"] is not None]

    def _clusters(self, still: torch.Tensor, zf: torch.Tensor, yf: torch.Tensor, rng: np.random.Generator,
                  num_classes: int, seed: int, rnd: int) -> list[dict]:
        from sklearn.cluster import KMeans

        X = zf[still].double().cpu().numpy()
        k = min(self.n_clusters, len(np.unique(X, axis=0)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            km = KMeans(n_clusters=k, n_init=self.kmeans_n_init, random_state=(seed * 1009 + rnd) % (2**31 - 1))
            labels = km.fit_predict(X)
        groups = []
        for c in range(k):
            mem = np.nonzero(labels == c)[0]
            if len(mem) == 0:
                continue
            dist = ((X[mem] - km.cluster_centers_[c]) ** 2).sum(1)
            rep = int(still[mem[int(np.argmin(dist))]])
            members = [int(still[j]) for j in mem]
            # one target per cluster, drawn for this cluster (not the first cluster's target for all)
            t = self._draw_target(rng, {int(yf[rep])}, num_classes)
            if t is not None:
                groups.append({"rep": rep, "members": members, "labels": {int(yf[rep])}, "target": t})
        return groups

    def _patch_groups(self, groups: list[dict], head, z64: torch.Tensor, pat64: torch.Tensor,
                      lin64: list[nn.Linear], lo_np: np.ndarray, hi_np: np.ndarray, stats: dict) -> None:
        reps = torch.tensor([g["rep"] for g in groups], dtype=torch.int64)
        if len(reps) == 0:
            return
        lin = linearise(z64[reps], lin64)
        active = _active_patches(head, pat64[reps])
        jobs = []
        for r, g in enumerate(groups):
            A, b = region_constraints(lin, z64[reps], r)
            F1, F2 = _effective_affine(head, lin, z64[reps], r, active[r])
            jobs.append({"A": A.cpu().numpy(), "b": b.cpu().numpy(), "lo": lo_np, "hi": hi_np, "F1": F1, "F2": F2,
                         "t": g["target"], "eps": self.epsilon, "form": self.patch, "lp": self.lp})
        results = lp.run_jobs(lp.patch_job, jobs, self.lp_workers)
        for g, res in zip(groups, results):
            stats["lp_count"] += res["lps"]
            stats["lp_seconds"] += res["seconds"]
            if not res["ok"]:
                stats["lp_failures"] += 1
                continue
            d = torch.as_tensor(res["d"], dtype=torch.float64)
            c = torch.as_tensor(res["c"], dtype=torch.float64) if res["c"] is not None else None
            if self.certify_members and len(g["members"]) > 1:
                if stats["member_lps"] >= self.member_lp_limit:
                    stats["member_cover_truncated"] = 1
                else:
                    d = self._cover_members(g, head, z64, pat64, lin64, lo_np, hi_np, res["r"], stats)
                    if d is None:
                        stats["lp_failures"] += 1
                        continue
            members = torch.unique(pat64[torch.tensor(g["members"])], dim=0)
            device = head.lo.device
            lo_t, hi_t = head.lo.double(), head.hi.double()
            K = Patch.safe_K(d.to(device), c.to(device) if c is not None else None, lo_t, hi_t)
            head.add(Patch(d, K, members.float(), g["target"], c))

    def _cover_members(self, g: dict, head, z64, pat64, lin64, lo_np, hi_np, r_rep: np.ndarray, stats: dict
                       ) -> torch.Tensor | None:
        """The shift meeting the spec on the regions of all the group's members (one region each)."""
        pats = pat64[torch.tensor(g["members"])]
        _, first = np.unique(pats.cpu().numpy(), axis=0, return_index=True)
        idx = torch.tensor(sorted(int(g["members"][j]) for j in first if g["members"][j] != g["rep"]))
        r = r_rep.copy()
        if len(idx):
            lin = linearise(z64[idx], lin64)
            active = _active_patches(head, pat64[idx])
            jobs = []
            for k in range(len(idx)):
                A, b = region_constraints(lin, z64[idx], k)
                F1, F2 = _effective_affine(head, lin, z64[idx], k, active[k])
                jobs.append({"A": A.cpu().numpy(), "b": b.cpu().numpy(), "lo": lo_np, "hi": hi_np, "F1": F1,
                             "F2": F2, "t": g["target"], "eps": self.epsilon, "form": self.patch, "lp": "ranges"})
            for res in lp.run_jobs(lp.patch_job, jobs, self.lp_workers):
                stats["lp_count"] += res["lps"]
                stats["member_lps"] += res["lps"]
                stats["lp_seconds"] += res["seconds"]
                if not res["ok"]:
                    return None
                r = np.maximum(r, res["r"])
        return torch.as_tensor(lp.shift_patch(r, g["target"], self.patch), dtype=torch.float64)

    # -- after timing
    def report(self, model: nn.Module, request: UnlearnRequest) -> dict[str, float]:
        """After timing: the certified fraction, the points whose prediction the patches changed (retain; with
        ``request.evaluation``, held-out and test), and what the patches take to store."""
        if not isinstance(model, PatchedModel):
            return {}
        t0 = time.perf_counter()
        forget = request.forget
        if 0 < self.certify_max_points < len(forget):
            gen = torch.Generator().manual_seed(int(request.seed))
            idx = torch.randperm(len(forget), generator=gen)[:self.certify_max_points].sort().values
            forget = forget.subset(idx.to(forget.device))
        det: dict = {}
        ok = verify_certificate(model, forget, forget.y, workers=self.lp_workers, details=det)
        frac = float(ok.float().mean()) if len(ok) else float("nan")
        out = {"certified_fraction": frac, "certify_points": float(len(ok)),
               "certify_seconds": time.perf_counter() - t0, "certify_lp_count": float(det.get("lp_count", 0))}
        out.update(flip_counts(model, request))
        out.update(storage(model))
        return out


def flip_counts(model: PatchedModel, request: UnlearnRequest) -> dict[str, float]:
    """Points whose prediction the patches changed (patched vs original model): the retain set, and with
    ``request.evaluation`` the whole held-out and test splits; for class requests also split into images of
    the forgotten class and of the others."""
    parts = {"retain": request.retain}
    after = request.evaluation
    if after is not None:
        parts.update({k: v for k, v in (("heldout", after.heldout), ("test", after.test)) if v is not None})
    out: dict[str, float] = {}
    bs = request.recipe.eval_batch_size
    for name, data in parts.items():
        if len(data) == 0:
            continue
        changed = predict(model, data, bs).argmax(1) != predict(model.original, data, bs).argmax(1)
        out[f"flips_{name}"] = float(changed.sum())
        if request.forget_class is not None and name != "retain":
            in_c = data.y == int(request.forget_class)
            out[f"flips_{name}_forgotten_class"] = float((changed & in_c).sum())
            out[f"flips_{name}_other"] = float((changed & ~in_c).sum())
    return out


def storage(model: PatchedModel) -> dict[str, float]:
    """``patch_bytes``: what this code stores beyond the original (sign patterns, shifts, bounds, box: the
    harness's ``extra_bytes``); ``reassure_bytes``: the same patches with every support region stored as
    REASSURE's ``(A, b)`` (m x (d + 1) numbers per region, in the patterns' dtype) instead of its sign pattern."""
    head = model.head
    patch_bytes = state_bytes(model) - state_bytes(model.original)
    d = int(head.lo.numel())
    pattern_bytes = sum(p.patterns.numel() * p.patterns.element_size() for p in head.patches)
    ab_bytes = sum(p.patterns.shape[0] * p.patterns.shape[1] * (d + 1) * p.patterns.element_size()
                   for p in head.patches)
    return {"patch_bytes": float(patch_bytes), "reassure_bytes": float(patch_bytes - pattern_bytes + ab_bytes),
            "original_bytes": float(state_bytes(model.original))}
