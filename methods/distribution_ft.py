"""Prediction-distribution fine-tuning.

Chen Kongyang, Huang Yao, Li Zhipeng et al., "Fast yet versatile machine unlearning for deep neural
networks", Neural Networks 190:107648, 2025.

Idea (abstract): fine-tune the trained model until the distribution of its predictions on the
forget data matches its predictions on unseen third-party data; no stored training updates; one
procedure for backdoor triggers, whole classes and subsets.

Algorithm (variant ``kl``, the default): targets ``p_t = softmax(f0(x_t))`` are the original model's
predictions on the third-party images (computed once, eval mode, no augmentation); each forget
example gets one third-party partner (below). Each step takes a forget batch ``x_f`` with its
partners' targets and a retain batch ``(x_r, y_r)`` and minimises
``KL(p_t || softmax(f(x_f))) + retain_weight * CE(f(x_r), y_r)`` (one forward of the concatenated
batch; the retain cross-entropy uses the recipe's label smoothing). Variant ``adversarial``: a small
discriminator learns forget outputs (1) from the partners' outputs (0); each step it takes one Adam
step, then the model takes one step on ``BCE(D(forget outputs), 0) + retain_weight * CE(retain)``.
After every epoch but the last, the stop rule of ``methods/_membership.py`` runs (both variants): a
probe of at most ``probe_forget`` forget images and ``probe_unseen`` unseen images *of the same kind*
(held-out images with the forget sample's label mix for random/points requests, held-out images of the
forgotten class for class requests, uniform held-out images for backdoor requests), two one-sided
statistics (the AUC of the scoring label's log-probability, and how much rarer low scores are in the
forget sample than in the unseen one) with tolerances calibrated from the spread between two disjoint
unseen samples (``z`` null standard deviations), and for class requests the forgotten class's accuracy
at most chance (1 / C). Training stops when the rule passes, or at the epoch limit. A model retrained
without the forget set passes this rule and the original fails it wherever their membership differs
measurably (``tests/test_seed_methods.py`` checks both on every CPU cell of the seeds suite).

Choices the paper does not make (we could read only its abstract), with the option selecting each:
- The loss: ``variant`` = ``kl`` (KL alignment, as in the first author's federated paper, arXiv
  2404.03659) or ``adversarial`` (discriminator alignment).
- Third-party data: ``source`` = ``heldout`` (the held-out split, never trained on or evaluated; for
  class forgetting the harness removes the forgotten class) or ``noise`` (uniform random images of the
  data's shape, as many as the forget set, at least 1,000; targets are the original's outputs on them).
  The stop rule always compares with held-out data (noise is not data of the forget set's kind); without
  held-out data there is nothing to compare with, and the run goes to the epoch limit.
- The pool a training partner comes from: images of the same label for ``random``/``points`` requests
  (a forgotten subset ends up predicted like unseen images of its own classes); the whole third-party
  set for ``class`` and ``backdoor`` requests (their labels carry the very thing to forget) and noise.
  (The stop rule's comparison set is a different thing: for a class it is unseen images *of* the class.)
- The pairing, ``pairing``: ``quantile`` (default: per label, the forget examples ranked by the
  original's log-probability of their label get the pool examples at evenly spaced quantiles of the
  same score, in the same order, fixed for the run: the targets are a stratified sample of the
  third-party outputs and each example moves the least), ``fixed`` (a random partner, fixed for the
  run) or ``random`` (fresh random partners every step, the literal reading of "paired batches"; its
  optimum is the *mean* third-party prediction, so forget outputs become flat rather than distributed
  like third-party outputs). In our tuning on the memorising MNIST subset, ``fixed`` cost test accuracy
  (a few confidently wrong partners act like label noise) where ``quantile`` cost almost none.
- Optimisation: ``lr_scale`` x the recipe's peak lr with the schedule ``schedule`` over the epoch limit
  (default onecycle: warm-up, then decay; an early stop cuts it; a constant lr from the first step
  jolts the converged original); the recipe's optimizer, momentum, weight decay, batch
  size (forget and retain batches both) and augmentation.
- Epoch = one pass over the forget set, repeated up to 2,000 samples when it is smaller (so one
  point, or 100, still gets enough steps between two tests, and one test of at most 384 forward passes
  costs at most 384 / 8,000 = 4.8% of the epoch's example passes: 2,000 forget and 2,000 retain
  samples, forward and backward); paired retain batches come from an endless shuffled stream; limit
  ``epochs`` (10: the same 20,000 forget samples as the 20 epochs of 1,000 before this rule); the
  harness's budget caps it further.
- Stop rule (``methods/_membership.py``): tested after each epoch but the last, never before the first
  (on ``digits`` the original's forget set cannot be told from 150 held-out images by any test, so a rule
  allowed to stop at once would return the original unchanged); ``z`` its tolerance in null standard
  deviations (3: a retrained model fails about 0.3% of tests); probe sizes ``probe_forget`` and
  ``probe_unseen``. The rule on the returned model is evaluated after timing (``report()``, free).
- Adversarial variant: discriminator input ``disc_input`` = ``label_sorted`` (the probability of the
  forget label, then the softmax sorted in decreasing order; the third-party partner is scored with its
  forget example's label) or ``sorted`` (the sorted softmax alone, which cannot see class forgetting:
  a confident wrong class looks like a confident right one); an MLP with one hidden layer of
  ``disc_hidden`` ReLU units, Adam at ``disc_lr``, pre-trained for ``disc_warmup`` steps on the
  original's outputs before the model moves; the model's loss is the non-saturating GAN loss. Its
  discriminator AUC is reported (``disc_auc``), not used to stop.

Reported (``request.info``): ``epochs`` and ``steps`` run; ``rule_fired`` (1 if the stop rule ended the
run before the epoch limit, 0 if it ran to the limit); the last in-run test (``rule_pass``, ``rule_auc``,
``rule_tol_auc``, ``rule_tail``, ``rule_tol_tail``, ``rule_forget_rate``, ``rule_unseen_rate``); the
probe's cost (``probe_tests``, ``probe_passes``, ``probe_seconds``, ``probe_pass_frac`` of all the
call's example passes). After timing (``report()``): the rule on the returned model (``final_rule_*``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from unlearnbench.datasets import TensorData

from ._membership import Probe, auc_of, match_labels, match_third_party, quantile_partners
from .base import POSITIVE, Bounds, Method, MethodError, UnlearnRequest, linear_range, log_range, param, register
from .cost import count_work
from .training import cycle, fit, forward, predict

MIN_EPOCH = 2000  # forget samples per epoch at least: a smaller forget set is repeated within an epoch
PAPER = ("Chen Kongyang, Huang Yao, Li Zhipeng et al., \"Fast yet versatile machine unlearning for deep neural "
         "networks\", Neural Networks 190:107648, 2025")


@register("distribution_ft", tags=("needs_heldout",), paper=PAPER,
          summary="fine-tune until forget-set predictions are distributed like predictions on unseen "
                  "third-party data (Chen et al. 2025)")
@dataclass(frozen=True)
class DistributionFT(Method):
    variant: str = param("kl", "alignment loss: kl (to the original's third-party predictions) or adversarial "
                         "(fool a discriminator)", choices=("kl", "adversarial"))
    source: str = param("heldout", "third-party data: heldout (the held-out split) or noise (uniform random images)",
                        choices=("heldout", "noise"))
    pairing: str = param("quantile", "target of each forget example: quantile (a fixed partner by rank at evenly "
                         "spaced quantiles), fixed (a fixed random partner) or random (fresh each step); "
                         "partners share the label on random/points requests", choices=("quantile", "fixed", "random"))
    epochs: float = param(10.0, "epoch limit, in passes over the forget set (repeated up to 2,000 samples)",
                          search=log_range(1.0, 30.0))
    lr_scale: float = param(0.3, "peak learning rate as a multiple of the recipe's peak lr",
                            search=log_range(0.03, 3.0))
    schedule: str = param("onecycle", "lr schedule over the epoch limit (warm-up then decay; an early stop cuts it)",
                          choices=("onecycle", "constant", "cosine", "linear"))
    retain_weight: float = param(1.0, "lambda: weight of the retain-set cross-entropy", search=log_range(0.1, 10.0))
    z: float = param(3.0, "stop rule: tolerance of each statistic in standard deviations of its spread between "
                     "two unseen samples", search=linear_range(1.5, 4.0), bounds=POSITIVE)
    probe_forget: int = param(128, "stop rule: forget images per test (a seeded sample, fixed for the run)",
                              bounds=Bounds(1))
    probe_unseen: int = param(256, "stop rule: unseen (held-out) images per test", bounds=Bounds(2))
    disc_input: str = param("label_sorted", "adversarial: discriminator input, label_sorted ([p_label, sorted "
                            "softmax]) or sorted (sorted softmax)", choices=("label_sorted", "sorted"))
    disc_hidden: int = param(64, "adversarial: hidden ReLU units of the discriminator")
    disc_lr: float = param(1e-3, "adversarial: Adam learning rate of the discriminator")
    disc_warmup: int = param(200, "adversarial: discriminator steps on the original's outputs before the model moves")

    def _probe(self, request: UnlearnRequest) -> Probe | None:
        if request.heldout is None or len(request.heldout) == 0:
            return None
        return Probe.for_request(request, max_forget=self.probe_forget, max_unseen=self.probe_unseen,
                                 max_utility=0, z=self.z)

    def unlearn(self, request: UnlearnRequest) -> nn.Module:
        if self.probe_forget < 1 or self.probe_unseen < 2 or self.z <= 0:
            raise MethodError("distribution_ft needs probe_forget >= 1, probe_unseen >= 2 and z > 0")
        with count_work() as total:
            model, probe = self._unlearn(request)
        if probe is not None:
            request.info.update(probe.cost_info(total.passes))
        return model

    def _unlearn(self, request: UnlearnRequest) -> tuple[nn.Module, Probe | None]:
        model = request.model
        forget = request.forget
        noise = self.source == "noise"
        if not noise and (request.heldout is None or len(request.heldout) == 0):
            raise MethodError("distribution_ft with source='heldout' needs request.heldout (the harness supplies it "
                              "to methods tagged needs_heldout); or use source='noise'")
        third = noise_images(forget, request.generator(7)) if noise else request.heldout
        device = request.device
        labels = match_labels(request.kind, third, noise)
        eval_bs = request.recipe.eval_batch_size
        probe = self._probe(request)
        third_logp = torch.log_softmax(predict(model, third, eval_bs).double(), dim=1)  # f0 on the third party
        targets = third_logp.exp().float()
        if self.pairing == "quantile":
            forget_logp = torch.log_softmax(predict(model, forget, eval_bs).double(), dim=1)
            partner = quantile_partners(forget_logp, forget.y, third_logp, labels)
        else:  # "fixed"; "random" uses it only for the adversarial variant's discriminator AUC
            partner = match_third_party(forget.y, labels, len(third), request.generator(2))

        recipe = dataclasses.replace(request.recipe, lr=request.recipe.lr * self.lr_scale, schedule=self.schedule)
        retain_stream = cycle(request.retain, recipe.batch_size, request.generator(4), augment=recipe.augment)
        pick_gen = request.generator(5)
        n_third = len(third)
        smoothing = recipe.label_smoothing

        def step_targets(idx: torch.Tensor) -> torch.Tensor:
            """Third-party target distributions for a batch of forget indices."""
            if self.pairing != "random":
                return targets[partner[idx]]
            return targets[torch.randint(n_third, (idx.shape[0],), device=device, generator=pick_gen)]

        def split_forward(m: nn.Module, xf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            xr, yr = next(retain_stream)
            out = forward(m, torch.cat([xf, xr]))
            return out[: xf.shape[0]], out[xf.shape[0]:], yr

        disc = None
        if self.variant == "kl":
            def loss_fn(m: nn.Module, xf: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
                out_f, out_r, yr = split_forward(m, xf)
                kl = F.kl_div(torch.log_softmax(out_f.float(), dim=1), step_targets(idx), reduction="batchmean")
                return kl + self.retain_weight * F.cross_entropy(out_r, yr, label_smoothing=smoothing)
        else:
            disc = Discriminator(request.num_classes + (self.disc_input == "label_sorted"), self.disc_hidden).to(device)
            disc_opt = torch.optim.Adam(disc.parameters(), lr=self.disc_lr)
            feat = lambda p, y: disc_features(p, y, self.disc_input)  # noqa: E731
            f0_forget = torch.softmax(predict(model, forget, eval_bs), dim=1)
            warm_gen = request.generator(6)
            bs = recipe.batch_size
            for _ in range(self.disc_warmup):  # the discriminator first learns the original's outputs
                i = torch.randint(len(forget), (bs,), device=device, generator=warm_gen)
                disc_step(disc, disc_opt, feat(f0_forget[i], forget.y[i]), feat(step_targets(i), forget.y[i]))

            def loss_fn(m: nn.Module, xf: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
                out_f, out_r, yr = split_forward(m, xf)
                y_f = forget.y[idx]
                f_feat = feat(torch.softmax(out_f.float(), dim=1), y_f)
                disc_step(disc, disc_opt, f_feat.detach(), feat(step_targets(idx), y_f))
                fool = F.binary_cross_entropy_with_logits(disc(f_feat), torch.zeros_like(f_feat[:, 0]))
                return fool + self.retain_weight * F.cross_entropy(out_r, yr, label_smoothing=smoothing)

        def test(epoch: int) -> bool:
            if probe is None:
                return False
            res = probe.test(model)
            request.info.update(res.info("rule_"))
            return res.passed

        # one epoch = one pass over the forget set, repeated up to MIN_EPOCH samples when it is smaller
        # (labels carry the forget index, which selects each example's target)
        order = torch.arange(len(forget), device=device).repeat(max(1, -(-MIN_EPOCH // len(forget))))
        data = TensorData(forget.x[order], order, forget.augment)
        stats = fit(model, data, recipe, seed=request.seed, epochs=self.epochs, loss_fn=loss_fn,
                    budget=request.budget, on_epoch_end=test, generator=request.generator(1))
        request.info.update(epochs=float(stats.epochs_run), steps=float(stats.steps),
                            rule_fired=float(stats.stopped_early))
        if disc is not None:
            with torch.no_grad():
                p_f = torch.softmax(predict(model, forget, eval_bs), dim=1)
                d_f = disc(feat(p_f, forget.y)).double()
                d_t = disc(feat(targets[partner], forget.y)).double()
            request.info["disc_auc"] = auc_of(d_f, d_t)
        return model, probe

    def report(self, model: nn.Module, request: UnlearnRequest) -> dict[str, float]:
        """The stop rule on the returned model (after timing: not counted as the method's work)."""
        probe = self._probe(request)
        if probe is None:
            return {}
        return probe.test(model).info("final_rule_")


class Discriminator(nn.Module):
    """Forget (1) vs third-party (0) from a softmax-derived feature vector."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def disc_features(p: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """``sorted``: the softmax sorted in decreasing order; ``label_sorted``: ``p_y`` first, then that."""
    s = torch.sort(p, dim=1, descending=True).values
    if kind == "sorted":
        return s
    return torch.cat([p.gather(1, y[:, None]), s], dim=1)


def disc_step(disc: Discriminator, opt: torch.optim.Optimizer, member: torch.Tensor, other: torch.Tensor) -> None:
    """One Adam step of the discriminator: member features -> 1, third-party features -> 0."""
    logits = disc(torch.cat([member, other]))
    labels = torch.cat([torch.ones_like(member[:, 0]), torch.zeros_like(other[:, 0])])
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def noise_images(like: TensorData, generator: torch.Generator, minimum: int = 1000) -> TensorData:
    """Uniform random uint8 images of the forget data's shape (as many as the forget set, at least ``minimum``);
    their labels are placeholders (noise is matched to forget examples at random)."""
    n = max(len(like), minimum)
    x = torch.randint(0, 256, (n, *like.x.shape[1:]), device=like.device, generator=generator, dtype=torch.uint8)
    return TensorData(x, torch.zeros(n, dtype=torch.long, device=like.device), like.augment)
