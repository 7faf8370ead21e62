"""The membership test behind the stop rules of ``distribution_ft`` and ``weight_perturbation`` (private).

Question asked: can the model's outputs tell the forget set apart from unseen third-party data?

- **Matching.** Each forget example is matched (seeded, fixed for the run) to random third-party
  examples *of the same label* when its labels are ordinary samples of the data (``random`` and ``points`` requests) and the
  third-party set holds that label (a class-stratified comparison: the forget set's label mix is
  kept); otherwise to uniformly random third-party examples: class forgetting (the harness removed
  the forgotten class from the held-out data), backdoor forgetting (the forget labels are the
  poisoned target label), noise (no labels).
- **Score** (a choice; the papers name no test): the log-probability the model gives to the *forget
  example's label*, on the forget example and on its matched third-party example. For a random
  subset this is the negative loss of ``mia.loss_auc`` on a class-matched held-out sample; for a
  forgotten class c it is ``log p_c`` on class-c images vs other images, which the true-label loss
  cannot see (an original model's loss is as low on held-out images of other classes as on its
  training images of c); for backdoor forgetting it is the log-probability of the target label on
  triggered vs clean images.
- **Small forget sets** (a single point) are compared with several partners each, at least
  ``min_pairs`` third-party examples in all (callers use 1,000), so the AUC is not a coin flip.
- **Statistic.** ROC AUC (scikit-learn), forget = 1, matched third-party = 0: 0.5 is chance, above it
  the forget set looks member-like. ``indistinguishable`` is the one-sided rule both stop rules use:
  AUC <= 0.5 + tol. An AUC below 0.5 - tol means the forget set already looks *less* member-like than
  unseen data; more training would push it further, so that also stops (and is reported).

``quantile_partners`` is the training-time pairing of ``distribution_ft`` (one partner per forget example,
by rank); the test draws its partners independently of it.

Cost: one prediction pass over the probe (the forget set, or a seeded sample of 2,000 of it, and the
distinct matched partners: at least ``min_pairs`` pairs, at most the whole third-party set); callers
run it once per epoch or chunk, never per step (it synchronises with the host).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from sklearn.metrics import roc_auc_score

from unlearnbench.datasets import TensorData

from .training import predict


LABEL_MATCHED_KINDS = ("random", "points")


def match_labels(kind: str, third: TensorData, noise: bool) -> torch.Tensor | None:
    """The third-party labels to match on, or None for uniform partners (see the module docstring)."""
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


@dataclass(frozen=True)
class MembershipTest:
    auc: float  # forget (1) vs matched third-party (0); 0.5 = chance
    third_acc: float  # accuracy on the third-party partners (meaningful for held-out data only)


@dataclass(frozen=True)
class Probe:
    """A fixed membership test: forget examples (all, or a seeded sample of ``max_forget``) and their
    matched third-party partners (only those are predicted)."""

    forget: TensorData
    partners: TensorData  # the distinct third-party partners
    where: torch.Tensor  # pair row -> index into ``partners``
    labels: torch.Tensor  # pair row -> the label it is scored with (its forget example's)
    batch_size: int = 1024

    @classmethod
    def build(cls, forget: TensorData, third: TensorData, third_labels: torch.Tensor | None,
              generator: torch.Generator, *, min_pairs: int = 1000, max_forget: int = 2000,
              batch_size: int = 1024) -> "Probe":
        if len(forget) > max_forget:
            forget = forget.subset(torch.sort(torch.randperm(len(forget), device=forget.device,
                                                             generator=generator)[:max_forget]).values)
        match = match_third_party(forget.y, third_labels, len(third), generator, min_pairs=min_pairs)
        used, where = torch.unique(match, return_inverse=True)
        k = match.shape[0] // len(forget)
        return cls(forget, third.subset(used), where, forget.y.repeat(k), batch_size)

    def test(self, model: nn.Module) -> MembershipTest:
        """AUC of the forget label's log-probability, forget examples (1) vs their partners (0), and the
        partners' accuracy: one prediction pass over the probe's forget examples and partners."""
        logits_t = predict(model, self.partners, self.batch_size)
        s_f = label_log_probs(predict(model, self.forget, self.batch_size), self.forget.y)
        s_t = label_log_probs(logits_t[self.where], self.labels)
        acc = (logits_t.argmax(1) == self.partners.y).double().mean()
        return MembershipTest(auc_of(s_f, s_t), float(acc))


def auc_of(member: torch.Tensor, nonmember: torch.Tensor) -> float:
    """ROC AUC of scores (larger = more member-like); one host transfer."""
    scores = torch.cat([member, nonmember]).cpu().numpy()
    labels = np.concatenate([np.ones(member.shape[0]), np.zeros(nonmember.shape[0])])
    if member.shape[0] == 0 or nonmember.shape[0] == 0:
        return float("nan")
    return float(roc_auc_score(labels, scores))


def indistinguishable(auc: float, tol: float) -> bool:
    """The stop rule: the forget set no longer looks more member-like than unseen data (AUC <= 0.5 + tol)."""
    return auc <= 0.5 + tol
