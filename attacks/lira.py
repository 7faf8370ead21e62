"""LiRA, the likelihood-ratio membership-inference attack (Carlini et al., "Membership Inference
Attacks From First Principles", IEEE S&P 2022), metric group ``mia.lira``.

Algorithm. K shadow models (metric option ``shadows``, default 16, even, at most 256) of the target's
architecture, each trained with the suite's recipe on a random half of a *pool*, so that every pool
example is IN for exactly K/2 shadows. For every example the statistic
``φ(x) = log p_y(x) − log Σ_{k≠y} p_k(x) = z_y − logsumexp_{k≠y} z_k`` (computed from the logits
``z`` in float64, never from rounded probabilities) is collected from each shadow; a Gaussian is
fitted to the IN values and one to the OUT values. The target model's φ is then scored by
- online: ``log N(φ; μ_in, σ_in²) − log N(φ; μ_out, σ_out²)``;
- offline: ``log Pr[Z < φ]``, ``Z ~ N(μ_out, σ_out²)`` (the paper's one-sided test);
- ``_fixed`` variants: the same with one global σ_in and σ_out instead of per-example ones.
Reported for each of the four: ROC AUC, balanced accuracy, TPR at 1% and at 0.1% FPR, on the forget
set ``D_f`` (label 1) versus unseen examples (label 0); larger scores = more member-like.

Choices the paper does not make (or that differ from its reference code), and what selects them:
- Pool = the training pool ∪ a uniform sample of the *test* set of size min(|D_t|, |train pool|)
  (fixed by the run seed). The unseen examples are those test examples. Not the held-out split:
  methods tagged ``needs_heldout`` use held-out data as their "unseen" reference and some optimise
  the forget set to look like it, so evaluating against it would grade them on their own objective;
  no method ever sees test data. Every shadow trains on half of the pool, which is not the target's
  training-set size; the test sample's cap makes them equal on subset recipes (mnist-sub1k: 1,000).
- Class requests: the unseen examples are the sampled test examples of the forgotten class (any
  other choice compares classes, not membership).
- Gaussian fits: mean and unbiased standard deviation (the reference code uses the median and the
  biased deviation). Global variance: the pooled within-example variance over the whole pool (the
  reference code's ``np.std`` of all IN values also counts the spread *between* examples). Every
  deviation is floored at 5% of the global one, so a degenerate per-example fit cannot dominate.
- Offline: one-sided, as the paper states (the reference code scores ``−log pdf``, two-sided).
- No query augmentation (the paper averages over mirrored/shifted queries): one query per example.
- Balanced accuracy: the best over thresholds, as the reference code reports it (optimistic: the
  threshold is chosen on the evaluated examples). TPR at FPR α: the largest TPR with FPR ≤ α; with
  fewer than 1/α unseen examples that is the TPR at zero false positives.

Cost and caching: shadows of a (dataset, data fingerprint, request's training data, model, recipe,
seed, K) are trained once, stored in the run context's model cache (one entry per shadow, keyed
like the harness's models plus K and the shadow index) together with their φ on the pool, and shared
by every method and request of that dataset and seed. Trainer: metric option ``trainer`` = ``auto``
| ``vmap`` | ``loop`` (see :mod:`unlearnbench.attacks.shadows`).

Per-example scores stored: ``mia.lira.{pool_index,labels,phi,online,offline,online_fixed,
offline_fixed,mu_in,sd_in,mu_out,sd_out}``.
"""

from __future__ import annotations

import os
import sys
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from scipy.special import log_ndtr
from sklearn.metrics import roc_auc_score, roc_curve

from unlearnbench.datasets import TensorData, hash_indices
from unlearnbench.methods.training import predict

from .base import EvalContext, MetricError, MetricResult, hash_str, register_metric, value
from .seam import CellHarness, ModelStore
from .shadows import balanced_memberships, load_shadow, resolve_mode, train_shadow_models

MAX_SHADOWS = 256
VARIANTS = ("online", "offline", "online_fixed", "offline_fixed")
SUMMARIES = ("auc", "balacc", "tpr@1%fpr", "tpr@0.1%fpr")
SD_FLOOR = 0.05  # of the global deviation


# ------------------------------------------------------------------------------ statistic


def lira_statistic(logits: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """``φ = z_y − logsumexp_{k≠y} z_k`` in float64 (= log p_y − log(1 − p_y), stable)."""
    z = logits.double()
    zy = z.gather(1, y[:, None]).squeeze(1)
    others = z.scatter(1, y[:, None], float("-inf"))
    return (zy - torch.logsumexp(others, dim=1)).cpu().numpy()


# ------------------------------------------------------------------------------ options


def metric_options(ctx: EvalContext, name: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """The suite's ``[metric_options."<name>"]`` merged over ``defaults``; unknown keys are an error."""
    given = dict(ctx.harness.options(name) or {}) if ctx.harness is not None else {}
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise MetricError(f"metric {name!r} has no option(s) {unknown}; it takes {sorted(defaults)}")
    return {**defaults, **given}


def shadow_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 2 or value % 2 or value > MAX_SHADOWS:
        raise MetricError(f"metric {name!r}: shadows must be an even integer in [2, {MAX_SHADOWS}], got {value!r}")
    return value


def harness_of(ctx: EvalContext, name: str) -> CellHarness:
    if ctx.harness is None:
        raise MetricError(f"metric {name!r} trains shadow models and needs ctx.harness (attacks/seam.py; the harness "
                          "sets it): run it through unlearnbench.benchmarks.harness.run_cell")
    return ctx.harness


# ------------------------------------------------------------------------------ shadow sets


@dataclass
class ShadowSet:
    key: str
    pool: TensorData  # training pool first, then the sampled test examples
    n_train: int
    test_index: np.ndarray  # indices into D_t of pool[n_train:]
    member: np.ndarray  # bool [K, N]
    seeds: list[int]
    shadow_keys: list[str]
    phi: np.ndarray  # float64 [K, N]
    mode: str
    make_model: Callable[[], nn.Module]
    cache: ModelStore
    device: torch.device

    @property
    def k(self) -> int:
        return len(self.seeds)

    def model(self, k: int) -> nn.Module:
        """Shadow ``k`` from the cache, on the device, in eval mode."""
        return cached_shadow(self.make_model, self.cache, self.shadow_keys[k])


def cached_shadow(make_model: Callable[[], nn.Module], cache: ModelStore, key: str) -> nn.Module:
    model = make_model()  # on the device already
    cache.load(key, model)
    model.eval()
    return model


_SETS: "OrderedDict[str, ShadowSet]" = OrderedDict()
_MEMO_SIZE = 2
TRAIN_CHUNK = {"vmap": 32, "loop": 1}


def _seed_list(seed: int, purpose: str, k: int) -> list[int]:
    rng = np.random.default_rng([int(seed) % (2**32), hash_str(purpose)])
    return [int(s) for s in rng.integers(1, 2**31 - 1, size=k)]


def shadow_set(ctx: EvalContext, k: int, trainer: str, name: str = "mia.lira") -> ShadowSet:
    """The K shadow models of this cell's (dataset, model, recipe, seed): from memory, the cache, or
    trained now (only the missing ones)."""
    h = harness_of(ctx, name)
    cache, device, recipe, make_model = h.cache, h.device, h.recipe, h.fresh_model
    seed = ctx.seed
    n_train = len(ctx.train)
    rng = np.random.default_rng([int(seed) % (2**32), hash_str("lira-pool-test-sample")])
    n_test = min(len(ctx.test), n_train)
    test_index = np.sort(rng.choice(len(ctx.test), n_test, replace=False))
    mode = resolve_mode(trainer, make_model(), device)
    ingredients = {**h.model_ingredients, "shadows": k, "pool": {"train": n_train, "test": hash_indices(test_index)},
                   "trainer": mode}
    set_key = cache.key("lirashadows", ingredients)
    memo = f"{cache.root}|{set_key}"
    if memo in _SETS:
        _SETS.move_to_end(memo)
        return _SETS[memo]

    pool = ctx.train.concat(ctx.test.subset(torch.as_tensor(test_index, device=device)))
    member = balanced_memberships(k, len(pool), np.random.default_rng([int(seed) % (2**32),
                                                                       hash_str(f"lira-membership-{k}")]))
    seeds = _seed_list(seed, f"lira-shadow-seeds-{k}", k)
    shadow_keys = [cache.key("shadow", {**ingredients, "index": i}) for i in range(k)]
    phi_path = cache.root / f"{set_key}.phi.npz"
    phi = None
    if phi_path.is_file():
        try:
            with np.load(phi_path, allow_pickle=False) as z:
                if z["phi"].shape == member.shape and np.array_equal(z["member"], member):
                    phi = z["phi"]
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:  # damaged: compute it again
            if isinstance(exc, OSError) and exc.errno is not None:
                raise
            print(f"warning: cached shadow statistics {phi_path} are unreadable ({type(exc).__name__}); "
                  "recomputing them", file=sys.stderr)
            phi = None
    if phi is None:
        missing = [i for i in range(k) if not cache.has(shadow_keys[i])]
        chunk = TRAIN_CHUNK[mode]
        for start in range(0, len(missing), chunk):
            part = missing[start:start + chunk]
            states = train_shadow_models(make_model, pool, member[part], recipe, [seeds[i] for i in part],
                                         device, mode=mode)
            for i, state in zip(part, states):
                cache.save(shadow_keys[i], load_shadow(make_model, state, device),
                           {"kind": "lira shadow", "index": i, "shadows": k, "trainer": mode,
                            "train_size": int(member[i].sum())})
        eval_bs = recipe.eval_batch_size
        phi = np.empty(member.shape, dtype=np.float64)
        for i in range(k):
            model = cached_shadow(make_model, cache, shadow_keys[i])
            phi[i] = lira_statistic(predict(model, pool, eval_bs), pool.y)
        tmp = phi_path.with_name(f".{phi_path.name}.tmp{os.getpid()}.npz")
        np.savez(tmp, phi=phi, member=member)
        os.replace(tmp, phi_path)
    ss = ShadowSet(set_key, pool, n_train, test_index, member, seeds, shadow_keys, phi, mode, make_model, cache,
                   device)
    _SETS[memo] = ss
    while len(_SETS) > _MEMO_SIZE:
        _SETS.popitem(last=False)
    return ss


def unseen_positions(ctx: EvalContext, ss: ShadowSet) -> np.ndarray:
    """Pool positions of the unseen (test) examples to compare D_f with; for a class request only
    those of the forgotten class."""
    pos = np.arange(ss.n_train, len(ss.pool))
    if ctx.split.forget_class is not None:
        y = ctx.test.y[torch.as_tensor(ss.test_index, device=ctx.device)].cpu().numpy()
        pos = pos[y == ctx.split.forget_class]
    return pos


def target_phi(ctx: EvalContext, ss: ShadowSet, positions: np.ndarray) -> np.ndarray:
    """The evaluated model's φ at pool positions (forget-set members come from ``ctx.logits('forget')``,
    test examples from ``ctx.logits('test')``, both cached by the context)."""
    forget_idx = ctx.split.forget_idx.cpu().numpy()
    out = np.empty(len(positions), dtype=np.float64)
    in_train = positions < ss.n_train
    if in_train.any():
        where = np.searchsorted(forget_idx, positions[in_train])
        if (where >= len(forget_idx)).any() or not np.array_equal(forget_idx[np.minimum(where, len(forget_idx) - 1)],
                                                                  positions[in_train]):
            raise MetricError("target_phi: training-pool positions outside the forget set were asked for")
        w = torch.as_tensor(where, device=ctx.device)
        out[in_train] = lira_statistic(ctx.logits("forget")[w], ctx.forget.y[w])
    if (~in_train).any():
        t = torch.as_tensor(ss.test_index[positions[~in_train] - ss.n_train], device=ctx.device)
        out[~in_train] = lira_statistic(ctx.logits("test")[t], ctx.test.y[t])
    return out


# ------------------------------------------------------------------------------ the test


@dataclass
class Fits:
    mu_in: np.ndarray
    sd_in: np.ndarray
    mu_out: np.ndarray
    sd_out: np.ndarray
    g_in: float  # global deviations
    g_out: float


def _moments(phi: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cnt = w.sum(0)
    if (cnt == 0).any():
        raise MetricError("a Gaussian fit has no shadow value for some example (membership not balanced)")
    mu = (phi * w).sum(0) / cnt
    var = (((phi - mu) ** 2) * w).sum(0) / np.maximum(cnt - 1, 1)
    return mu, var


def gaussian_fits(phi: np.ndarray, member: np.ndarray, columns: np.ndarray | None = None) -> Fits:
    """Per-example IN/OUT Gaussians of the shadows' φ (``[K, N]``), global deviations pooled over all N
    examples; per-example values returned for ``columns`` (default all)."""
    w_in = member.astype(np.float64)
    mu_in, var_in = _moments(phi, w_in)
    mu_out, var_out = _moments(phi, 1.0 - w_in)
    g_in, g_out = float(np.sqrt(var_in.mean())), float(np.sqrt(var_out.mean()))
    if columns is not None:
        mu_in, var_in, mu_out, var_out = mu_in[columns], var_in[columns], mu_out[columns], var_out[columns]
    floor_in, floor_out = max(SD_FLOOR * g_in, 1e-6), max(SD_FLOOR * g_out, 1e-6)
    return Fits(mu_in, np.maximum(np.sqrt(var_in), floor_in), mu_out, np.maximum(np.sqrt(var_out), floor_out),
                max(g_in, 1e-6), max(g_out, 1e-6))


def log_normal(x: np.ndarray, mu: np.ndarray, sd) -> np.ndarray:
    return -0.5 * ((x - mu) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi)


def lira_scores(phi_target: np.ndarray, fits: Fits) -> dict[str, np.ndarray]:
    """The four LiRA scores of the evaluated model's φ (larger = more member-like)."""
    out = {}
    for suffix, sd_in, sd_out in (("", fits.sd_in, fits.sd_out), ("_fixed", fits.g_in, fits.g_out)):
        out["online" + suffix] = (log_normal(phi_target, fits.mu_in, sd_in)
                                  - log_normal(phi_target, fits.mu_out, sd_out))
        out["offline" + suffix] = log_ndtr((phi_target - fits.mu_out) / sd_out)
    return out


def summarize(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """AUC, best-threshold balanced accuracy and TPR at 1% / 0.1% FPR (NaN without both classes)."""
    if len(np.unique(labels)) < 2:
        return {s: float("nan") for s in SUMMARIES}
    scores = np.nan_to_num(scores, nan=-np.inf)
    fpr, tpr, _ = roc_curve(labels, scores)
    return {"auc": float(roc_auc_score(labels, scores)), "balacc": float(np.max((tpr + 1.0 - fpr) / 2.0)),
            "tpr@1%fpr": float(tpr[fpr <= 0.01].max()), "tpr@0.1%fpr": float(tpr[fpr <= 0.001].max())}


LIRA_NAMES = tuple(f"mia.lira_{v}_{s}" for v in VARIANTS for s in SUMMARIES)
_VARIANT_TEXT = {"online": "online (IN and OUT Gaussians per example)", "offline": "offline (one-sided, OUT only)",
                 "online_fixed": "online with one global variance", "offline_fixed": "offline with one global variance"}
_SUMMARY_TEXT = {"auc": ("AUC", "ROC AUC"), "balacc": ("fraction", "best balanced accuracy over thresholds"),
                 "tpr@1%fpr": ("fraction", "true-positive rate at 1% false-positive rate"),
                 "tpr@0.1%fpr": ("fraction", "true-positive rate at 0.1% false-positive rate")}
LIRA_SAMPLE = ("D_f (1) vs unseen test examples of the LiRA pool (0): a uniform test sample, or for a class request "
               "its test examples of the forgotten class")


def _lira_value(v: str, s: str):
    unit, what = _SUMMARY_TEXT[s]
    return value(f"mia.lira_{v}_{s}", "score", "closest", unit,
                 f"LiRA {_VARIANT_TEXT[v]} likelihood-ratio test, {what}; the target is retrain's value",
                 sample=LIRA_SAMPLE, family="membership",
                 roc=("mia.lira.labels", f"mia.lira.{v}") if s == "auc" else None)


@register_metric("mia.lira", produces=tuple(_lira_value(v, s) for v in VARIANTS for s in SUMMARIES),
                 device_bound=True,
                 description="LiRA (Carlini et al. 2022), K shadows on halves of train pool + test sample; "
                             "online/offline, per-example/fixed variance; D_f (1) vs unseen test examples (0)")
def lira(ctx: EvalContext) -> MetricResult:
    opts = metric_options(ctx, "mia.lira", {"shadows": 16, "trainer": "auto"})
    k = shadow_count(opts["shadows"], "mia.lira")
    ss = shadow_set(ctx, k, opts["trainer"])
    pos = np.concatenate([ctx.split.forget_idx.cpu().numpy(), unseen_positions(ctx, ss)])
    labels = (pos < ss.n_train).astype(np.int8)
    phi_t = target_phi(ctx, ss, pos)
    fits = gaussian_fits(ss.phi, ss.member, pos)
    scores = lira_scores(phi_t, fits)
    values = {f"mia.lira_{v}_{s}": x for v in VARIANTS for s, x in summarize(scores[v], labels).items()}
    arrays = {"pool_index": pos, "labels": labels, "phi": phi_t, "mu_in": fits.mu_in, "sd_in": fits.sd_in,
              "mu_out": fits.mu_out, "sd_out": fits.sd_out, **scores}
    return MetricResult(values, {f"mia.lira.{n}": a for n, a in arrays.items()})
