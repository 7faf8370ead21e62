"""Population membership-inference attacks (docs/metrics.md, "Membership inference").

``mia.loss_auc``, ``mia.conf_auc``, ``mia.entropy_auc``, ``mia.mentropy_auc``: ROC AUC (scikit-learn)
of a per-example score separating the forget set ``D_f`` (label 1) from *matched non-members*
(label 0), oriented so that larger = more member-like. Matched means drawn from the distribution
``D_f`` came from, never trained on, and never shown to a method:

- ``random`` and ``points`` requests: the test split ``D_t`` (D_f is a uniform sample of the pool);
- ``class``: the test images of the forgotten class (comparing a forgotten class with all classes
  measures the class, not membership: a perfect retrain reads about 0.05 that way). Only the test
  split: the held-out split is where methods draw their unseen data from, and some optimise the
  forget set to look like it;
- ``backdoor``: the test images whose true class is not the target, with the trigger stamped on and
  relabelled to the target, exactly as the poisoned training images were.

Sample sizes: when the matched pool is at least as large as ``D_f``, a uniform sample of it of size
|D_f| (fixed by the run seed); when it is smaller (a forgotten class of the 8x8 digits: about 130
training images, 36 test images), all of D_f against all of the pool (ROC AUC does not depend on
the ratio of the two sizes; dropping members would only add noise). The samples depend on the run
seed only, so a method and its retrain reference are scored on the same examples. Retrain should
read about 0.5 on every request kind; the original reads above it where it memorised.

``mia.svc_efficacy`` (SalUn / Unlearn-Sparse convention, kept as published): an SVC (RBF, C=3,
gamma='auto') trained on the true-label confidence ``p_y(x)`` of a uniform retain sample of size
|D_t| (members, 1) versus D_t (non-members, 0); the value is the fraction of D_f predicted
non-member. Its non-members are the whole test split on every request kind (the convention; on a
class request retrain reads near 1.0 because the forgotten class is simply predicted with low
confidence). Its target is the retrain value, not 100%. When the retain set is smaller than D_t
(subset recipes: 1,800 retain vs 10,000 test images), both classes are uniform samples of size
|D_r|: the convention's two classes are equal in size, and an SVC fitted on a 1:5 imbalance would
call every example a non-member.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from sklearn.svm import SVC

from unlearnbench.datasets import TensorData

from .base import EvalContext, MetricError, MetricResult, register_metric, register_part, value


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.double(), dim=1)


def score_loss(logits: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Negative cross-entropy: larger = lower loss = more member-like."""
    return _log_probs(logits).gather(1, y[:, None]).squeeze(1).cpu().numpy()


def score_conf(logits: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    return _log_probs(logits).exp().gather(1, y[:, None]).squeeze(1).cpu().numpy()


def score_entropy(logits: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Negative prediction entropy (confident predictions look like members)."""
    lp = _log_probs(logits)
    return (lp.exp() * lp).sum(1).cpu().numpy()


def score_mentropy(logits: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Negative modified entropy of Song & Mittal (2021):
    Mentr = -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)."""
    z = logits.double()
    lse = torch.logsumexp(z, dim=1, keepdim=True)
    lp = z - lse
    p = lp.exp()
    # log(1 - p_i): log1p(-p_i) is accurate wherever p_i <= 1/2, i.e. for every class but the top one;
    # for the top class it is logsumexp of the other logits minus logsumexp of all (exact even when
    # 1 - p_i underflows in float64)
    log1mp = torch.log1p(-p)
    top = z.argmax(1, keepdim=True)
    rest = torch.logsumexp(z.scatter(1, top, float("-inf")), dim=1, keepdim=True)
    log1mp = log1mp.scatter(1, top, rest - lse)
    lpy = lp.gather(1, y[:, None]).squeeze(1)
    term_y = -torch.expm1(lpy) * lpy  # (1 - p_y) log p_y
    others = (p * log1mp).scatter(1, y[:, None], 0.0).sum(1)  # sum over i != y
    mentr = -term_y - others
    return (-mentr).cpu().numpy()


MATCHED_SAMPLE = ("D_f (1) vs matched non-members (0): test images for random/points requests; test images of "
                  "the forgotten class for class requests; triggered non-target-class test images relabelled to the "
                  "target for backdoor requests; an equal-size sample of them when they outnumber D_f, else all of "
                  "both")


def matched_test_index(ctx: EvalContext) -> torch.Tensor:
    """Indices into D_t of the matched non-member pool of this request (see the module docstring)."""
    test, kind = ctx.test, ctx.split.kind
    if kind == "class":
        if ctx.split.forget_class is None:
            raise MetricError("a class request without a forgotten class: cannot match non-members")
        return torch.nonzero(test.y == ctx.split.forget_class).flatten()
    if kind == "backdoor":
        target = int(ctx.split.extra["trigger"]["target"])
        return torch.nonzero(test.y != target).flatten()
    return torch.arange(len(test), device=test.y.device)


@register_part("triggered_test", when=lambda ctx: ctx.split.kind == "backdoor")
def triggered_test(ctx: EvalContext) -> TensorData:
    """Backdoor requests: the non-target-class test images, triggered and relabelled like D_f."""
    from .backdoor import apply_trigger

    spec = ctx.split.extra["trigger"]
    data = ctx.test.subset(matched_test_index(ctx))
    return TensorData(apply_trigger(data.x, spec), torch.full_like(data.y, int(spec["target"])), data.augment)


def matched_nonmembers(ctx: EvalContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(indices into D_t, logits, labels) of the matched non-member pool (see the module docstring)."""
    idx = matched_test_index(ctx)
    if ctx.split.kind == "backdoor":
        return idx, ctx.logits("triggered_test"), ctx.part("triggered_test").y
    return idx, ctx.logits("test")[idx], ctx.test.y[idx]


def member_sample(ctx: EvalContext, n_matched: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions in D_f and in the matched pool of the two samples (fixed by the run seed)."""
    nf = len(ctx.forget)
    if nf <= n_matched:
        return np.arange(nf), np.sort(ctx.rng("mia-population-sample").choice(n_matched, nf, replace=False))
    return np.arange(nf), np.arange(n_matched)


def population_auc(ctx: EvalContext, score_fn) -> tuple[float, dict[str, np.ndarray]]:
    idx, logits_m, y_m = matched_nonmembers(ctx)
    fi, ti = member_sample(ctx, len(idx))
    fi_t = torch.as_tensor(fi, device=ctx.device)
    ti_t = torch.as_tensor(ti, device=ctx.device)
    s_mem = score_fn(ctx.logits("forget")[fi_t], ctx.forget.y[fi_t])
    s_non = score_fn(logits_m[ti_t], y_m[ti_t])
    scores = np.concatenate([s_mem, s_non])
    labels = np.concatenate([np.ones(len(s_mem), np.int8), np.zeros(len(s_non), np.int8)])
    auc = float(roc_auc_score(labels, scores)) if len(s_mem) and len(s_non) else float("nan")
    return auc, {"scores": scores, "labels": labels, "forget_index": fi, "test_index": idx.cpu().numpy()[ti]}


def _population(name: str, score_fn, what: str):
    @register_metric(name, produces=(value(
        name, "score", "closest", "AUC", f"ROC AUC of {what} (larger = more member-like), D_f (label 1) against "
        "matched non-members (label 0); 0.5 = indistinguishable; the target is retrain's value",
        sample=MATCHED_SAMPLE, family="membership", roc=(f"{name}.labels", f"{name}.scores")),),
        description=f"population MIA: ROC AUC of {what}, D_f vs matched non-members")
    def metric(ctx: EvalContext) -> MetricResult:
        auc, arrays = population_auc(ctx, score_fn)
        return MetricResult({name: auc}, {f"{name}.{k}": v for k, v in arrays.items()})

    return metric


loss_auc = _population("mia.loss_auc", score_loss, "the negative loss")
conf_auc = _population("mia.conf_auc", score_conf, "the true-label confidence")
entropy_auc = _population("mia.entropy_auc", score_entropy, "the negative prediction entropy")
mentropy_auc = _population("mia.mentropy_auc", score_mentropy, "the negative modified entropy (Song & Mittal)")


@register_metric("mia.svc_efficacy", produces=(value(
    "mia.svc_efficacy", "score", "closest", "fraction",
    "SalUn's MIA-efficacy: an SVC (RBF, C=3, gamma='auto') on the true-label confidence, fitted on a retain sample "
    "(members) vs the test split (non-members), the fraction of D_f it predicts non-member; the target is "
    "retrain's value, not 1", sample="fit: a uniform retain sample of size |D_t| (1) vs D_t (0), both of size "
    "|D_r| when the retain set is smaller; applied to D_f. SalUn convention on every request kind (no matching)",
    family="membership"),),
                 description="SalUn SVC on p_y: retain sample (1) vs D_t (0); fraction of D_f predicted non-member")
def svc_efficacy(ctx: EvalContext) -> MetricResult:
    nt, nr = len(ctx.test), len(ctx.retain)
    n = min(nt, nr)
    rng = ctx.rng("mia-svc-retain-sample")
    ri = np.sort(rng.choice(nr, n, replace=False))
    ri_t = torch.as_tensor(ri, device=ctx.device)
    conf_r = score_conf(ctx.logits("retain")[ri_t], ctx.retain.y[ri_t])
    conf_t = score_conf(ctx.logits("test"), ctx.test.y)
    if n < nt:  # balance the classes with a uniform D_t sample of size |D_r|
        conf_t = conf_t[np.sort(ctx.rng("mia-svc-test-sample").choice(nt, n, replace=False))]
    conf_f = score_conf(ctx.logits("forget"), ctx.forget.y)
    x = np.concatenate([conf_r, conf_t])[:, None]
    y = np.concatenate([np.ones(len(conf_r)), np.zeros(len(conf_t))])
    clf = SVC(C=3, gamma="auto", kernel="rbf")
    clf.fit(x, y)
    pred = clf.predict(conf_f[:, None])
    value = float(np.mean(pred == 0)) if len(pred) else float("nan")
    return MetricResult({"mia.svc_efficacy": value}, {"mia.svc_efficacy.forget_pred_member": pred.astype(np.int8),
                                                      "mia.svc_efficacy.forget_conf": conf_f})
