"""Population membership-inference attacks (METRICS.md, "Membership inference").

``mia.loss_auc``, ``mia.conf_auc``, ``mia.entropy_auc``, ``mia.mentropy_auc``: ROC AUC (scikit-learn)
of a per-example score separating the forget set ``D_f`` (label 1) from an equal-size uniform sample
of the test set ``D_t`` (label 0), oriented so that larger = more member-like. When ``D_f`` is larger
than ``D_t`` an equal-size sample of ``D_f`` is used instead. The samples depend on the run seed only,
so a method and its retrain reference are scored on the same examples.

``mia.svc_efficacy`` (SalUn / Unlearn-Sparse convention): an SVC (RBF, C=3, gamma='auto') trained on
the true-label confidence ``p_y(x)`` of a uniform retain sample of size |D_t| (members, 1) versus D_t
(non-members, 0); the value is the fraction of D_f predicted non-member. Its target is the retrain
value, not 100%. When the retain set is smaller than D_t (subset recipes: 1,800 retain vs 10,000
test images), both classes are uniform samples of size |D_r|: the convention's two classes are equal
in size, and an SVC fitted on a 1:5 imbalance would call every example a non-member.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from sklearn.svm import SVC

from .base import EvalContext, MetricResult, register_metric


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


def member_sample(ctx: EvalContext) -> tuple[np.ndarray, np.ndarray]:
    """Indices into D_f and D_t of the two equal-size samples (fixed by the run seed)."""
    nf, nt = len(ctx.forget), len(ctx.test)
    rng = ctx.rng("mia-population-sample")
    if nf <= nt:
        return np.arange(nf), np.sort(rng.choice(nt, nf, replace=False))
    return np.sort(rng.choice(nf, nt, replace=False)), np.arange(nt)


def population_auc(ctx: EvalContext, score_fn) -> tuple[float, dict[str, np.ndarray]]:
    fi, ti = member_sample(ctx)
    fi_t = torch.as_tensor(fi, device=ctx.device)
    ti_t = torch.as_tensor(ti, device=ctx.device)
    s_mem = score_fn(ctx.logits("forget")[fi_t], ctx.forget.y[fi_t])
    s_non = score_fn(ctx.logits("test")[ti_t], ctx.test.y[ti_t])
    scores = np.concatenate([s_mem, s_non])
    labels = np.concatenate([np.ones(len(s_mem), np.int8), np.zeros(len(s_non), np.int8)])
    auc = float(roc_auc_score(labels, scores)) if len(s_mem) and len(s_non) else float("nan")
    return auc, {"scores": scores, "labels": labels, "forget_index": fi, "test_index": ti}


def _population(name: str, score_fn, what: str):
    @register_metric(name, produces=(name,), description=f"ROC AUC of {what}, D_f (1) vs an equal-size D_t sample (0)")
    def metric(ctx: EvalContext) -> MetricResult:
        auc, arrays = population_auc(ctx, score_fn)
        return MetricResult({name: auc}, {f"{name}.{k}": v for k, v in arrays.items()})

    return metric


loss_auc = _population("mia.loss_auc", score_loss, "the negative loss")
conf_auc = _population("mia.conf_auc", score_conf, "the true-label confidence")
entropy_auc = _population("mia.entropy_auc", score_entropy, "the negative prediction entropy")
mentropy_auc = _population("mia.mentropy_auc", score_mentropy, "the negative modified entropy (Song & Mittal)")


@register_metric("mia.svc_efficacy", produces=("mia.svc_efficacy",),
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
