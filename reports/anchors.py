"""Numbers the literature reports for cells our suites can run (docs/ANCHORS.md), as data.

Leaderboards show an anchor beside our measurement when the cell matches: the dataset source (and no
``train_subset``), the model, the forget request (kind and parameters) and the method. Values are
converted to our metrics' units and names (docs/metrics.md): fractions, not percent;
``forget_acc = 1 - UA``; SalUn's "MIA-efficacy" is ``mia.svc_efficacy``. A paper method is matched to a
registered method through ``aliases`` compared after normalisation (lower case, letters and digits
only, ``+`` read as ``plus``), so ``neggrad_plus`` matches "NegGrad+".

Our ``cifar10-jpeg`` is CIFAR-10 re-encoded as JPEG (lossy), so an anchor shown there is labelled
"reported on CIFAR-10 (original pixels)": a reference point, not the same measurement.

The reported numbers use different training recipes (182-epoch SGD ResNet-18 in the public code) and
sample sizes from ours; they tell whether our numbers are in the field's range, not whether a cell passes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

COUN = "CoUn (Khalil et al. 2025), CIFAR-10 ResNet-18, SalUn conventions, mean of 10 trials"
COUN_C100 = "CoUn (Khalil et al. 2025), CIFAR-100 ResNet-18, SalUn conventions"

# How an anchor measured on a dataset is labelled when shown for one of our dataset sources.
DATASET_NOTES = {
    ("cifar10", "cifar10"): "reported on CIFAR-10",
    ("cifar10", "cifar10-jpeg"): "reported on CIFAR-10 (original pixels)",
    ("cifar100", "cifar100"): "reported on CIFAR-100",
}


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: the rows below are constants
class Anchor:
    """One paper-reported row: values in our units, keyed by our metric names, as (mean, ± or None)."""

    source: str
    dataset: str  # the dataset the paper used ("cifar10"); shown for the sources in DATASET_NOTES
    model: str  # our registered model name
    request_kind: str
    request_params: dict[str, tuple[Any, ...]]  # parameter -> accepted values (None: may be absent)
    paper_method: str
    aliases: tuple[str, ...]  # registered method names this row describes (normalised before matching)
    values: dict[str, tuple[float, float | None]]
    n: int | None = None  # trials behind the mean, where the source says
    setting: str = ""  # the paper's wording of the setting

    def matches(self, dataset: str, train_subset: Any, model: str, kind: str, params: dict[str, Any],
                method: str) -> bool:
        if (self.dataset, dataset) not in DATASET_NOTES or train_subset not in (None, 0):
            return False
        if model != self.model or kind != self.request_kind:
            return False
        for key, accepted in self.request_params.items():  # None among the accepted values: "may be absent"
            if params.get(key) not in accepted or (key not in params and None not in accepted):
                return False
        return normalise(method) in {normalise(a) for a in self.aliases}

    def note(self, dataset: str, params: dict[str, Any] | None = None) -> str:
        absent = [k for k, acc in self.request_params.items() if None in acc and k not in (params or {})]
        extra = f"; ours: the {', '.join(absent)} each seed draws" if absent else ""
        return DATASET_NOTES[(self.dataset, dataset)] + extra


def normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower().replace("+", "plus"))


def _salun(ua: float, retain: float, test: float, mia: float, pm: dict[str, float] | None = None
           ) -> dict[str, tuple[float, float | None]]:
    """SalUn-convention percentages -> our metric names and fractions."""
    pm = pm or {}
    f = lambda k: pm[k] / 100 if k in pm else None  # noqa: E731
    return {"forget_acc": (1 - ua / 100, f("ua")), "UA": (ua / 100, f("ua")), "retain_acc": (retain / 100, None),
            "test_acc": (test / 100, f("test")), "mia.svc_efficacy": (mia / 100, f("mia"))}


_R10 = {"fraction": (0.1,)}
_R50 = {"fraction": (0.5,)}
# The class anchor ('truck') is also shown for a class request that lets each seed draw the class: retrain's
# UA, retain accuracy and MIA-efficacy do not depend on which class, its test accuracy nearly not.
_TRUCK = {"class": (9, "truck", None)}


def _a(method: str, aliases: tuple[str, ...], values, params=_R10, kind: str = "random", setting: str = "random 10%",
       n: int | None = 10, source: str = COUN, dataset: str = "cifar10") -> Anchor:
    return Anchor(source=source, dataset=dataset, model="resnet18", request_kind=kind, request_params=params,
                  paper_method=method, aliases=aliases, values=values, n=n, setting=setting)


ANCHORS: tuple[Anchor, ...] = (
    _a("Retrain", ("retrain",), _salun(4.81, 100.00, 94.67, 11.02, {"ua": 0.27, "test": 0.24, "mia": 0.58})),
    _a("FT", ("ft", "finetune", "fine_tune"), _salun(3.76, 99.99, 94.70, 9.51)),
    _a("SCRUB", ("scrub",), _salun(3.93, 99.97, 94.61, 9.53)),
    _a("l1-sparse", ("l1_sparse", "l1sparse", "sparse"), _salun(5.40, 99.97, 93.81, 10.97)),
    _a("SalUn", ("salun",), _salun(4.31, 99.10, 93.84, 11.15)),
    _a("NegGrad+", ("neggrad_plus", "neggradplus", "neggrad+"), _salun(4.82, 99.95, 94.32, 9.09)),
    _a("Bad Teacher", ("bad_teacher", "badteacher"), _salun(0.07, 99.94, 94.05, 10.10)),
    _a("SSD", ("ssd",), _salun(0.02, 100.00, 94.80, 0.62)),
    _a("Retrain", ("retrain",), _salun(7.29, 100.00, 92.28, 17.33), params=_R50, setting="random 50%"),
    _a("Retrain", ("retrain",), _salun(100.00, 100.00, 95.14, 100.00), params=_TRUCK, kind="class",
       setting="class 'truck' (9)"),
    # CIFAR-100 random 10% retrain: the source gives UA, test accuracy and MIA-efficacy only.
    Anchor(source=COUN_C100, dataset="cifar100", model="resnet18", request_kind="random", request_params=_R10,
           paper_method="Retrain", aliases=("retrain",), setting="random 10%", n=None,
           values={"forget_acc": (1 - 0.2426, None), "UA": (0.2426, None), "test_acc": (0.7556, None),
                   "mia.svc_efficacy": (0.4844, None)}),
)


@dataclass(frozen=True)
class AnchorMatch:
    anchor: Anchor
    note: str  # e.g. "reported on CIFAR-10 (original pixels)"


def find_anchors(anchors: tuple[Anchor, ...], dataset: str, train_subset: Any, model: str, kind: str,
                 params: dict[str, Any], method: str) -> list[AnchorMatch]:
    return [AnchorMatch(a, a.note(dataset, params)) for a in anchors
            if a.matches(dataset, train_subset, model, kind, params, method)]
