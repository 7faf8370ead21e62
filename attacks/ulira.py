"""U-LiRA, the per-example unlearning membership-inference attack (Hayes, Shumailov, Triantafillou,
Khalifa, Papernot, "Inexact Unlearning Needs More Careful Evaluations to Avoid a False Sense of
Privacy", 2024), metric group ``mia.ulira``.

The game: was example x trained on and then removed by the *method*, or never trained on? Shadow
models are put in both worlds, per example a Gaussian is fitted to φ (LiRA's logit-scaled confidence,
:func:`unlearnbench.attacks.lira.lira_statistic`) in each, and the evaluated model's φ is scored by
the likelihood ratio. An attack accuracy / AUC of 0.5 is ideal; retraining reaches it by construction.

How the two worlds are built here (per cell):
- The target examples are T = D_f ∪ U, where U are unseen test examples of the LiRA pool
  (:mod:`unlearnbench.attacks.lira`): a uniform sample of size |D_f| (fixed by the run seed), or, for
  a class request, every pool test example of the forgotten class.
- The K shadows are LiRA's (same pool, same halves, same cache: option ``shadows``, default 8, shares
  the trained shadows with ``mia.lira`` when equal). Shadow k trained on S_k is handed to the method
  as ``cell_data.request(shadow_k, forget=S_k ∩ T, retain=S_k \\ T)`` (held-out data, for methods
  that need it, is the held-out split, which no shadow trained on; ``new_model`` is the shadow's own
  initialisation, its seed the shadow's seed), so every shadow forgets about as many examples as the
  target did, all of them from T.
- For x ∈ T, "unlearned" values are the φ(x) of the K/2 unlearned shadows that trained on x; "never
  seen" values those of the K/2 that did not (they too went through the method, for the other
  examples of T, just as the evaluated model did for examples other than x).
- The evaluated model is scored on D_f (label 1: unlearned) and U (label 0: never seen). For the
  ``reference`` role (the retrain model) the method is ``retrain``: the unlearned shadows are the
  shadows retrained on S_k \\ T, so the reference value measures the test's own noise.

Reported: ``mia.ulira_auc`` (ROC AUC of the log-likelihood ratio), ``mia.ulira_acc`` (balanced
accuracy at the likelihood-ratio threshold 0, the equal-prior Bayes decision: no threshold is fitted
on the evaluated examples), and the same two with a global variance per world (``_fixed``; steadier
with few shadows). Options: ``shadows`` (even, default 8), ``trainer`` (``auto`` | ``vmap`` |
``loop``), ``methods`` (list: compute for these methods only, NaN for the others; default: all).
Expensive by design -- K unlearning runs per cell, K retrainings for the reference -- so a suite
opts in by listing the metric. The shadows' φ after each method is cached in the model cache (shadow
by shadow, so an interrupted run resumes), keyed by the shadow set, the method and its
hyperparameters, the target examples and the budget.

Choices the paper does not make here: the halves design shared with LiRA (the paper trains separate
"include" and "exclude" shadows for a fixed forget set); one query per example; Gaussian fits as in
:mod:`unlearnbench.attacks.lira`.
"""

from __future__ import annotations

import os
import sys
import zipfile

import numpy as np
import torch

from unlearnbench.datasets import hash_indices
from unlearnbench.methods.training import predict

from .base import EvalContext, MetricError, MetricResult, register_metric, value
from .lira import (gaussian_fits, harness_of, lira_statistic, log_normal, metric_options, shadow_count, shadow_set,
                   target_phi, unseen_positions)
from .shadows import init_shadow

ULIRA_NAMES = ("mia.ulira_auc", "mia.ulira_acc", "mia.ulira_fixed_auc", "mia.ulira_fixed_acc")


def target_examples(ctx: EvalContext, ss) -> tuple[np.ndarray, np.ndarray]:
    """Pool positions of D_f and of the unseen examples U."""
    forget = ctx.split.forget_idx.cpu().numpy()
    unseen = unseen_positions(ctx, ss)
    if ctx.split.forget_class is None and len(unseen) > len(forget):
        rng = ctx.rng("ulira-unseen-sample")
        unseen = np.sort(rng.choice(unseen, len(forget), replace=False))
    return forget, unseen


def unlearned_shadow_phi(ctx: EvalContext, ss, method, targets: np.ndarray) -> np.ndarray:
    """φ on ``targets`` of every shadow after ``method`` unlearned S_k ∩ targets; ``[K, len(targets)]``."""
    h = harness_of(ctx, "mia.ulira")
    cache = h.cache
    key = cache.key("ulira", {"shadows": ss.key, "method": method.name, "params": method.hyperparameters(),
                              "targets": hash_indices(targets), "n_targets": len(targets), "kind": ctx.split.kind,
                              "forget_class": ctx.split.forget_class, "max_epochs": h.max_epochs})
    path = cache.root / f"{key}.npz"
    phi = np.full((ss.k, len(targets)), np.nan)
    done = np.zeros(ss.k, dtype=bool)
    if path.is_file():  # complete, or the shadows finished before an interrupted run
        try:
            with np.load(path, allow_pickle=False) as z:
                if z["phi"].shape == phi.shape:
                    phi, done = z["phi"].copy(), z["done"].copy()
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:  # damaged: compute it again
            if isinstance(exc, OSError) and exc.errno is not None:
                raise
            print(f"warning: cached U-LiRA statistics {path} are unreadable ({type(exc).__name__}); recomputing them",
                  file=sys.stderr)
            phi, done = np.full((ss.k, len(targets)), np.nan), np.zeros(ss.k, dtype=bool)
    if done.all():
        return phi
    pool = ss.pool
    device = h.device
    eval_bs = h.recipe.eval_batch_size
    target_data = pool.subset(torch.as_tensor(targets, device=device))
    in_targets = np.zeros(len(pool), dtype=bool)
    in_targets[targets] = True
    for k in np.flatnonzero(~done):
        model = ss.model(k)
        forget = np.flatnonzero(ss.member[k] & in_targets)
        retain = np.flatnonzero(ss.member[k] & ~in_targets)
        if len(forget) and len(retain):
            seed = ss.seeds[k]
            model = h.unlearn(method, model, forget=pool.subset(torch.as_tensor(forget, device=device)),
                              retain=pool.subset(torch.as_tensor(retain, device=device)), seed=seed,
                              new_model=lambda s=seed: init_shadow(h.fresh_model, s, device))
            model.eval()
        phi[k] = lira_statistic(predict(model, target_data, eval_bs), target_data.y)
        done[k] = True
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.npz")
        np.savez(tmp, phi=phi, done=done)
        os.replace(tmp, path)
    return phi


def _balanced_acc_at_zero(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = labels == 1, labels == 0
    if not pos.any() or not neg.any():
        return float("nan")
    return float(0.5 * ((scores[pos] > 0).mean() + (scores[neg] <= 0).mean()))


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, np.nan_to_num(scores, nan=-np.inf)))


_ULIRA_TEXT = {"mia.ulira_auc": ("AUC", "ROC AUC of the log-likelihood ratio"),
               "mia.ulira_acc": ("fraction", "balanced accuracy at the likelihood-ratio threshold 0"),
               "mia.ulira_fixed_auc": ("AUC", "ROC AUC with one global variance per world"),
               "mia.ulira_fixed_acc": ("fraction", "balanced accuracy at 0 with one global variance per world")}
ULIRA_SAMPLE = ("D_f (1: trained, then unlearned) vs unseen test examples of the LiRA pool (0): a uniform sample of "
                "size |D_f|, or for a class request every pool test example of the forgotten class")


@register_metric("mia.ulira", produces=tuple(
    value(n, "score", "closest", _ULIRA_TEXT[n][0], f"U-LiRA (Hayes et al. 2024), {_ULIRA_TEXT[n][1]}: shadows "
          "trained then unlearned by the same method vs shadows that never saw the example; 0.5 = ideal",
          sample=ULIRA_SAMPLE, family="membership",
          roc=("mia.ulira.labels", "mia.ulira.score" if "fixed" not in n else "mia.ulira.score_fixed")
          if n.endswith("auc") else None) for n in ULIRA_NAMES), device_bound=True,
                 description="U-LiRA (Hayes et al. 2024): shadows trained then unlearned by the method vs never "
                             "trained; D_f (1) vs unseen test examples (0); AUC and accuracy, 0.5 ideal")
def ulira(ctx: EvalContext) -> MetricResult:
    opts = metric_options(ctx, "mia.ulira", {"shadows": 8, "trainer": "auto", "methods": None})
    k = shadow_count(opts["shadows"], "mia.ulira")
    only = opts["methods"]
    if only is not None and (not isinstance(only, list) or not all(isinstance(m, str) for m in only)):
        raise MetricError(f"metric 'mia.ulira': methods must be a list of method names, got {only!r}")
    h = harness_of(ctx, "mia.ulira")
    method = h.method
    if h.role != "reference":
        if only is not None and method.name not in only:
            return MetricResult({n: float("nan") for n in ULIRA_NAMES})
    ss = shadow_set(ctx, k, opts["trainer"], name="mia.ulira")
    forget, unseen = target_examples(ctx, ss)
    targets = np.concatenate([forget, unseen])
    labels = np.concatenate([np.ones(len(forget), np.int8), np.zeros(len(unseen), np.int8)])
    phi_shadows = unlearned_shadow_phi(ctx, ss, method, targets)
    member = ss.member[:, targets]
    fits = gaussian_fits(phi_shadows, member)  # "in" = trained then unlearned, "out" = never trained
    phi_t = target_phi(ctx, ss, targets)
    score = log_normal(phi_t, fits.mu_in, fits.sd_in) - log_normal(phi_t, fits.mu_out, fits.sd_out)
    score_fixed = log_normal(phi_t, fits.mu_in, fits.g_in) - log_normal(phi_t, fits.mu_out, fits.g_out)
    values = {"mia.ulira_auc": _auc(score, labels), "mia.ulira_acc": _balanced_acc_at_zero(score, labels),
              "mia.ulira_fixed_auc": _auc(score_fixed, labels),
              "mia.ulira_fixed_acc": _balanced_acc_at_zero(score_fixed, labels)}
    arrays = {"pool_index": targets, "labels": labels, "phi": phi_t, "score": score, "score_fixed": score_fixed,
              "mu_unlearned": fits.mu_in, "sd_unlearned": fits.sd_in, "mu_unseen": fits.mu_out,
              "sd_unseen": fits.sd_out}
    return MetricResult(values, {f"mia.ulira.{n}": a for n, a in arrays.items()})
