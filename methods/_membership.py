"""The stop rule of ``distribution_ft`` and ``weight_perturbation``: does the forget set still look like
training data, or like unseen data of its kind? (private)

The rule must be one that a model retrained without the forget set passes and the original fails. A
probe compares the model's outputs on a sample of the forget set (``F``) with its outputs on a sample of
*unseen data of the same kind* (``U``), never the test split:

- ``random`` / ``points`` requests: ``U`` is a held-out sample with the forget sample's label mix
  (stratified per label, without replacement; a label with too few held-out images contributes what it
  has). Each example is scored with its own label.
- ``class`` requests: ``U`` is the held-out images *of the forgotten class* (``request.heldout_forgotten``):
  compared with other classes, a retrained model's forget set differs by class, not by membership
  (retrain's probe AUC against other classes was 0.80-0.91). Each example is scored with the class.
- other kinds (``backdoor``: the forget labels are the poisoned target): ``U`` is a uniform held-out
  sample; each unseen example is scored with the label of a forget example drawn for it (for backdoor
  requests: the target, so a clean image predicted as the target counts like a triggered one).

Statistics (one-sided: only "more member-like than unseen" fails):

- ``auc``: ROC AUC of the score ``log p_label`` (the model's log-probability of the scoring label),
  ``F`` (1) vs ``U`` (0); 0.5 = chance. For a random subset this is the negative loss of
  ``mia.loss_auc``; for a class, ``log p_c`` on training vs unseen images of c.
- ``tail`` (``q = 0.2``): ``mean(U < t) - mean(F < t)`` with ``t`` the lower ``q``-quantile of ``U``'s scores:
  how much rarer low scores are in the forget sample (a memorised set has almost none: 0.20, the maximum, on
  every mnist-sub1k cell of the original, against -0.10 to 0.07 for retrain). The AUC averages over the whole
  score range, where members and non-members are both confident; the tail is where they differ.
- ``gap``: ``rate(F) - rate(U)``, the fraction predicted as the scoring label (accuracy for random/points/
  class requests; for backdoor requests the fraction predicted as the target).
- ``class`` requests only, a second condition: the forgotten class's accuracy on ``F`` and on ``U`` is at
  most chance, ``1 / C`` (a model retrained without the class predicts it for almost none of its images:
  0.000 on every seeds-suite cell; the original, for almost all).
- ``backdoor`` requests decide on ``gap`` alone, ``rate(F) - rate(U)`` with the target as scoring label
  (how much more often triggered images are predicted as the target than unseen images are): the method
  cannot stamp the trigger on unseen images, and the trigger itself shifts the scores of a model that never
  learned it (a retrained model's AUC reached 0.60 and its tail deficit 0.17 on digits Blended), so the two
  score statistics are reported but do not decide. Retrain: 0.00 vs 0.07; the original: 1.00 vs 0.07.

Tolerances are calibrated from the data at every test, not fixed: ``U`` is split at random into two
disjoint parts ``A`` (``a = min(|F|, |U| // 2)`` examples) and ``B`` (the rest) ``CALIBRATION_SPLITS``
times (a seeded, fixed set of splits); the spread (standard deviation) of each statistic computed on
``A`` vs ``B`` is what it varies by between two unseen samples, scaled to the probe's
sizes by ``sqrt((1/|F| + 1/|U|) / (1/a + 1/b))`` (both statistics' variances go as ``1/n1 + 1/n2``), and
the tolerance is ``z`` times it (``z = 3``: a model whose forget set is unseen data fails one statistic with
probability about 0.13%, two about 0.3%; the methods test after every epoch, and a rule a retrained model
fails would keep them from stopping where retrain stands -- with ``z = 1.96`` retrain failed on 1 of the 21
CPU cells of the seeds suite, digits class seed 2: AUC 0.664 against 25 held-out images, 2.6 sd). The rule
**passes** when ``auc <= 0.5 + tol_auc`` and ``tail <= tol_tail`` (backdoor requests: ``gap <= tol_gap``) and
(class requests) both class accuracies are at most ``1 / C``. With fewer than two unseen examples nothing
can be tested and the rule passes (reported as ``tol = inf``).

Power is limited by the unseen sample: on ``digits`` (150 held-out images) the original's forget set
(0 errors in 129 on random 10%, seed 0) cannot be told from its held-out images (2 errors in 150; Fisher's
exact p = 0.29) by any test, so the methods never stop *before* their first epoch or chunk: the rule only
decides when to stop.

Cost: one prediction pass over ``F`` and ``U`` (and, for class requests when asked, a utility sample of
other-class held-out images for held-out accuracy); the sizes are capped (``max_forget``, ``max_unseen``,
``max_utility``; callers size them against their training work). Probe passes are counted in their own
:func:`~unlearnbench.methods.cost.count_work` block and reported (``probe_passes``, ``probe_seconds``).

``quantile_partners`` and ``match_third_party`` are ``distribution_ft``'s training-time pairing (its targets),
independent of the probe.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
from scipy.stats import rankdata

from unlearnbench.datasets import TensorData

from .cost import count_work
from .training import predict

LABEL_MATCHED_KINDS = ("random", "points")
CALIBRATION_SPLITS = 200
DEFAULT_Z = 3.0
DEFAULT_Q = 0.2


# --------------------------------------------------------------------- distribution_ft's training pairing


def match_labels(kind: str, third: TensorData, noise: bool) -> torch.Tensor | None:
    """The third-party labels a training partner must share, or None for uniform partners (class and
    backdoor requests: their labels carry the very thing to forget; noise has no labels)."""
    return third.y if kind in LABEL_MATCHED_KINDS and not noise else None


def match_third_party(forget_y: torch.Tensor, third_y: torch.Tensor | None, n_third: int,
                      generator: torch.Generator, min_pairs: int = 1) -> torch.Tensor:
    """Index ``[k * len(forget_y)]`` into the third-party set (k partners per forget example, k the least
    with ``k * len(forget_y) >= min_pairs``; row ``j`` partners forget example ``j % len(forget_y)``): a
    same-label partner where one exists (drawn without replacement while the class lasts, then
    cycling), else a uniformly random one."""
    device = forget_y.device
    k = max(1, -(-int(min_pairs) // max(1, forget_y.shape[0])))
    forget_y = forget_y.repeat(k)
    n = forget_y.shape[0]
    if n_third < 1:
        raise ValueError("the membership test needs at least one third-party example; the held-out split is empty")
    match = torch.randint(n_third, (n,), device=device, generator=generator)
    if third_y is None:
        return match
    for c in torch.unique(forget_y).tolist():
        f_idx = torch.nonzero(forget_y == c).flatten()
        t_idx = torch.nonzero(third_y == c).flatten()
        if t_idx.numel() == 0:
            continue
        reps = -(-f_idx.numel() // t_idx.numel())
        order = torch.cat([t_idx[torch.randperm(t_idx.numel(), device=device, generator=generator)]
                           for _ in range(reps)])
        match[f_idx] = order[: f_idx.numel()]
    return match


def quantile_partners(forget_logp: torch.Tensor, forget_y: torch.Tensor, third_logp: torch.Tensor,
                      third_y: torch.Tensor | None) -> torch.Tensor:
    """One partner per forget example by a monotone (rank) coupling with evenly spaced quantiles.

    For each forget label c: the pool is the third-party examples of label c where labels are matched
    (``third_y`` given and holding c), else the whole third-party set; scores are the log-probability
    of c (``*_logp`` are log-softmax rows of the original model). The forget example of rank i among
    the n of label c gets the pool example at score quantile (i + 1/2) / n, so the partners' scores
    are a stratified sample of the third-party distribution (no sampling noise beyond 1/n) and each
    forget example moves the least: the most confident gets the most confident partner."""
    device = forget_y.device
    n_third = third_logp.shape[0]
    match = torch.empty(forget_y.shape[0], dtype=torch.long, device=device)
    for c in torch.unique(forget_y).tolist():
        f_idx = torch.nonzero(forget_y == c).flatten()
        t_idx = torch.nonzero(third_y == c).flatten() if third_y is not None else f_idx[:0]
        if t_idx.numel() == 0:
            t_idx = torch.arange(n_third, device=device)
        n, m = f_idx.numel(), t_idx.numel()
        t_sorted = t_idx[torch.sort(third_logp[t_idx, c], stable=True).indices]
        q = ((torch.arange(n, device=device, dtype=torch.float64) + 0.5) * m / n).long().clamp_max(m - 1)
        f_sorted = f_idx[torch.sort(forget_logp[f_idx, c], stable=True).indices]
        match[f_sorted] = t_sorted[q]
    return match


def label_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log p_label`` per row, in float64 (fewer ties among confident predictions)."""
    return torch.log_softmax(logits.double(), dim=1).gather(1, labels[:, None]).squeeze(1)


# ------------------------------------------------------------------------------------------ statistics


def auc_of(member: torch.Tensor | np.ndarray, nonmember: torch.Tensor | np.ndarray) -> float:
    """ROC AUC of scores (larger = more member-like), ties counted half (Mann-Whitney); NaN if a side is empty."""
    m = np.asarray(member.detach().cpu() if isinstance(member, torch.Tensor) else member, dtype=np.float64)
    n = np.asarray(nonmember.detach().cpu() if isinstance(nonmember, torch.Tensor) else nonmember, dtype=np.float64)
    if m.size == 0 or n.size == 0:
        return float("nan")
    r = rankdata(np.concatenate([m, n]))
    return float((r[: m.size].sum() - m.size * (m.size + 1) / 2) / (m.size * n.size))


def tail_deficit(member: np.ndarray, nonmember: np.ndarray, q: float) -> float:
    """``mean(nonmember < t) - mean(member < t)`` with ``t`` the nonmember scores' lower ``q``-quantile (the
    value at sorted index ``floor(q * n)``): how much rarer low scores are among members than among
    non-members (about ``q`` for a memorised set with no low scores, 0 for exchangeable sets)."""
    if member.size == 0 or nonmember.size == 0:
        return float("nan")
    t = np.sort(nonmember)[min(nonmember.size - 1, int(math.floor(q * nonmember.size)))]
    return float((nonmember < t).mean() - (member < t).mean())


def null_spread(scores: np.ndarray, n_forget: int, q: float, generator: np.random.Generator,
                splits: int = CALIBRATION_SPLITS, hits: np.ndarray | None = None) -> tuple[float, float, float]:
    """Standard deviations of ``auc``, ``tail`` and (with ``hits``, 0/1 per unseen example) ``gap`` between two
    disjoint unseen samples, scaled to a probe of ``n_forget`` forget and ``len(scores)`` unseen examples (see
    the module docstring); ``inf`` when fewer than two unseen examples leave nothing to split."""
    n_u = scores.size
    a = min(int(n_forget), n_u // 2)
    b = n_u - a
    if a < 1 or b < 1 or n_forget < 1:
        return math.inf, math.inf, math.inf
    ranks = rankdata(scores)
    perm = np.argsort(generator.random((splits, n_u)), axis=1)
    in_a, in_b = perm[:, :a], perm[:, a:]
    aucs = (ranks[in_a].sum(1) - a * (a + 1) / 2) / (a * b)
    rb = np.sort(ranks[in_b], axis=1)
    t = rb[:, min(b - 1, int(math.floor(q * b)))][:, None]
    tails = (rb < t).mean(1) - (ranks[in_a] < t).mean(1)
    scale = math.sqrt((1.0 / n_forget + 1.0 / n_u) / (1.0 / a + 1.0 / b))
    sd_gap = math.nan
    if hits is not None:
        hit_a = hits[in_a].sum(1)
        sd_gap = float((hit_a / a - (hits.sum() - hit_a) / b).std() * scale)
    return float(aucs.std() * scale), float(tails.std() * scale), sd_gap


@dataclass(frozen=True)
class RuleResult:
    """One test of the stop rule (see the module docstring)."""

    auc: float
    tol_auc: float
    tail: float
    tol_tail: float
    forget_rate: float  # fraction of F predicted as its label
    unseen_rate: float  # fraction of U predicted as its scoring label
    class_limit: float | None  # class requests: the chance level 1/C both rates must not exceed; else None
    # accuracy with true labels on the utility sample (class requests, when asked for) or else on U (for a class
    # request without a utility sample: the forgotten class's held-out images)
    heldout_acc: float
    tol_gap: float = math.inf  # tolerance of gap = forget_rate - unseen_rate
    statistics: tuple[str, ...] = ("auc", "tail")  # which statistics decide (backdoor requests: ("gap",))

    @property
    def gap(self) -> float:
        return self.forget_rate - self.unseen_rate

    @property
    def auc_ok(self) -> bool:
        return not self.auc > 0.5 + self.tol_auc  # NaN (nothing to compare) passes

    @property
    def tail_ok(self) -> bool:
        return not self.tail > self.tol_tail

    @property
    def gap_ok(self) -> bool:
        return not self.gap > self.tol_gap

    @property
    def class_ok(self) -> bool:
        lim = self.class_limit
        return lim is None or (self.forget_rate <= lim and (math.isnan(self.unseen_rate) or self.unseen_rate <= lim))

    @property
    def passed(self) -> bool:
        """The forget set looks unseen: stop."""
        return all(getattr(self, f"{s}_ok") for s in self.statistics) and self.class_ok

    def info(self, prefix: str = "rule_") -> dict[str, float]:
        return {f"{prefix}pass": float(self.passed), f"{prefix}auc": self.auc, f"{prefix}tol_auc": self.tol_auc,
                f"{prefix}tail": self.tail, f"{prefix}tol_tail": self.tol_tail, f"{prefix}forget_rate": self.forget_rate,
                f"{prefix}unseen_rate": self.unseen_rate, f"{prefix}gap": self.gap, f"{prefix}tol_gap": self.tol_gap,
                f"{prefix}heldout_acc": self.heldout_acc}


# ------------------------------------------------------------------------------------------- the probe


def _sample(n: int, k: int, generator: torch.Generator, device) -> torch.Tensor:
    """A seeded sample of ``min(n, k)`` indices out of ``n``, sorted."""
    if n <= k:
        return torch.arange(n, device=device)
    return torch.sort(torch.randperm(n, device=device, generator=generator)[:k]).values


def _stratified(pool_y: torch.Tensor, forget_y: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Up to ``k`` pool indices with the label mix of ``forget_y`` (per label ``round(k * share)``, without
    replacement, capped by what the pool holds)."""
    device = pool_y.device
    out = []
    labels, counts = torch.unique(forget_y, return_counts=True)
    n_f = forget_y.shape[0]
    for c, m in zip(labels.tolist(), counts.tolist()):
        idx = torch.nonzero(pool_y == c).flatten()
        want = max(1, int(round(k * m / n_f)))
        if idx.numel() > want:
            idx = idx[torch.randperm(idx.numel(), device=device, generator=generator)[:want]]
        out.append(idx)
    return torch.sort(torch.cat(out)).values if out else pool_y.new_zeros(0, dtype=torch.long)


@dataclass
class Probe:
    """A fixed stop-rule probe for one request: the forget sample ``forget``, the unseen sample ``unseen``
    with the labels it is scored with, and (class requests) a utility sample of other-class held-out data.
    Built once per run (seeded); :meth:`test` runs it on a model. Counts its own passes and time."""

    forget: TensorData
    unseen: TensorData
    unseen_labels: torch.Tensor
    utility: TensorData | None  # class requests: other-class held-out sample (true labels); else None (use U)
    class_limit: float | None
    statistics: tuple[str, ...] = ("auc", "tail")
    z: float = DEFAULT_Z
    q: float = DEFAULT_Q
    batch_size: int = 1024
    seed: int = 0
    passes: int = 0
    seconds: float = 0.0
    tests: int = 0
    history: list = field(default_factory=list)

    @classmethod
    def for_request(cls, request, *, max_forget: int = 128, max_unseen: int = 256, max_utility: int = 128,
                    z: float = DEFAULT_Z, q: float = DEFAULT_Q, offset: int = 3) -> "Probe":
        """The probe of ``request`` (an :class:`~unlearnbench.methods.UnlearnRequest` with held-out data)."""
        gen = request.generator(offset)
        forget = request.forget
        forget = forget.subset(_sample(len(forget), max_forget, gen, forget.device))
        held = request.heldout
        if held is None:
            raise ValueError("the stop rule needs request.heldout (methods tagged needs_heldout get it)")
        utility, limit = None, None
        if request.kind == "class":
            pool = request.heldout_forgotten
            if pool is None:
                pool = TensorData(held.x[:0], held.y[:0], held.augment)
            unseen = pool.subset(_sample(len(pool), max_unseen, gen, pool.device))
            labels = torch.full_like(unseen.y, int(request.forget_class)) if request.forget_class is not None \
                else unseen.y
            utility = held.subset(_sample(len(held), max_utility, gen, held.device)) if max_utility > 0 else None
            limit = 1.0 / request.num_classes
        elif request.kind in LABEL_MATCHED_KINDS:
            unseen = held.subset(_stratified(held.y, forget.y, max_unseen, gen))
            labels = unseen.y
        else:
            unseen = held.subset(_sample(len(held), max_unseen, gen, held.device))
            pick = torch.randint(len(forget), (len(unseen),), device=forget.device, generator=gen)
            labels = forget.y[pick] if len(forget) else unseen.y
        stats = ("gap",) if request.kind == "backdoor" else ("auc", "tail")
        return cls(forget, unseen, labels, utility, limit, stats, z, q, request.recipe.eval_batch_size,
                   seed=int(request.seed) * 7919 + offset)

    @property
    def size(self) -> int:
        """Forward passes of one test (without the utility sample)."""
        return len(self.forget) + len(self.unseen)

    def test(self, model: nn.Module, utility: bool = False) -> RuleResult:
        """Run the probe on ``model`` (eval mode): one prediction pass over F and U (and the utility sample when
        ``utility`` and it exists)."""
        t0 = time.perf_counter()
        with count_work() as work:
            lf = predict(model, self.forget, self.batch_size)
            lu = predict(model, self.unseen, self.batch_size)
            lx = predict(model, self.utility, self.batch_size) if utility and self.utility is not None else None
        s_f = label_log_probs(lf, self.forget.y).cpu().numpy() if len(self.forget) else np.zeros(0)
        s_u = label_log_probs(lu, self.unseen_labels).cpu().numpy() if len(self.unseen) else np.zeros(0)
        h_f = (lf.argmax(1) == self.forget.y).double().cpu().numpy() if len(self.forget) else np.zeros(0)
        h_u = (lu.argmax(1) == self.unseen_labels).double().cpu().numpy() if len(self.unseen) else np.zeros(0)
        sd_auc, sd_tail, sd_gap = null_spread(s_u, len(self.forget), self.q, np.random.default_rng(self.seed),
                                              hits=h_u)
        if lx is not None:
            acc = float((lx.argmax(1) == self.utility.y).double().mean())
        elif self.utility is None and len(self.unseen):
            acc = float((lu.argmax(1) == self.unseen.y).double().mean())
        else:
            acc = float("nan")
        nan = float("nan")
        res = RuleResult(
            auc=auc_of(s_f, s_u), tol_auc=self.z * sd_auc, tail=tail_deficit(s_f, s_u, self.q), tol_tail=self.z * sd_tail,
            forget_rate=float(h_f.mean()) if h_f.size else nan, unseen_rate=float(h_u.mean()) if h_u.size else nan,
            class_limit=self.class_limit, heldout_acc=acc, tol_gap=self.z * sd_gap, statistics=self.statistics)
        self.passes += work.passes
        self.seconds += time.perf_counter() - t0
        self.tests += 1
        self.history.append(res)
        return res

    def cost_info(self, total_passes: float | None = None) -> dict[str, float]:
        """``probe_tests``, ``probe_passes``, ``probe_seconds`` (and ``probe_pass_frac`` of ``total_passes``)."""
        out = {"probe_tests": float(self.tests), "probe_passes": float(self.passes), "probe_seconds": self.seconds,
               "probe_forget": float(len(self.forget)), "probe_unseen": float(len(self.unseen))}
        if total_passes:
            out["probe_pass_frac"] = self.passes / float(total_passes)
        return out


def stop_rule(model: nn.Module, request, **probe_options) -> RuleResult:
    """The stop rule evaluated once on ``model`` for ``request`` (what the methods test; used by the tests
    to check that a retrained model passes it and the original fails it)."""
    return Probe.for_request(request, **probe_options).test(model, utility=True)

