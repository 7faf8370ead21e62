"""PRUNE's patched model and the head geometry it rests on (torch side; the LPs are in ``_prune_lp``).

- :func:`relu_mlp_layers`: the head's Linear layers, checking the exact shape Linear, ReLU, ..., Linear.
- :func:`linearise`: hidden pre-activations, their Jacobians and the head's local affine form at many points
  at once (``torch.func.vmap`` over ``jacrev``; float64).
- :class:`Patch`: one affine patch ``p(z) = c clamp(z) + d`` (``c`` only for the joint-LP form), its bound
  ``K`` and the activation patterns of the linear regions it covers (its *members*).
- :class:`PatchedHead`: ``original head(z) + sum_k h_k(z)`` in fp32, with
  ``h_k = ReLU(p_k + K_k g_k - K_k) - ReLU(-p_k + K_k g_k - K_k)`` and ``g_k = max`` over the members' support
  networks ``g(z) = ReLU(sum_j clamp(gamma y_j + 1, 0, 1) - (m - 1))``, ``y = b - A z`` the member region's
  constraints (``clamp(u + 1, 0, 1) = ReLU(u + 1) - ReLU(u)``, written so the plateaus are exact in floats).
- :class:`PatchedModel`: the untouched original plus a :class:`PatchedHead` over the patched ReLU MLP: in
  ``head`` space the model's head on frozen penultimate features (``features(x)`` and ``head`` work as on the
  original); in ``input`` space (MLP models only: the authors' own setting) the whole network after the
  normalisation, ``features(x)`` = the normalised, flattened image and ``head`` = the patched MLP (so
  ``forward(x) == head(features(x))`` holds, but ``features`` is the input's width, not the original's); saved
  and rebuilt through ``state_dict`` (:meth:`PatchedModel.from_state_dict`).
- :func:`patched_layers` / :func:`space_features` / :func:`input_box`: the Linear layers, the points and the
  box of either space.

Support networks are stored as sign patterns, not as ``(A, b)``: a region's constraints are a function of
the original head's weights and the pattern (``A_j = -s_j grad a_j``, ``b_j = s_j (a_j(0))`` with ``a_j`` the
unit's affine form under the pattern), so this is the same function as REASSURE's support network at
``m`` numbers per region instead of ``m (d + 1)``.
"""

from __future__ import annotations

import contextlib
import copy
import re
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .models import ModelError, head_linears

# Relative and absolute slack of K over the box bound of |p|: the gate is exactly 0 where the support is 0
# even with float rounding in g (up to ~1e-4).
K_REL_SLACK = 1e-4
K_ABS_SLACK = 1e-6


def relu_mlp_layers(model: nn.Module) -> list[nn.Linear]:
    """The head's Linear layers; the head must be exactly Linear, ReLU, ..., Linear (at least one ReLU)."""
    linears = head_linears(model)
    kinds = ["L" if isinstance(m, nn.Linear) else "R" for m in model.head]
    want = ["L", "R"] * (len(linears) - 1) + ["L"]
    if kinds != want or len(linears) < 2:
        raise ModelError(f"PRUNE needs a head Linear, ReLU, ..., Linear with at least one hidden layer; "
                         f"got {[type(m).__name__ for m in model.head]}")
    return linears


SPACES = ("head", "input")


def input_mlp_layers(model: nn.Module) -> list[nn.Linear]:
    """The Linear layers of a whole MLP classifier (``mlp`` architecture: body Flatten, Linear, ReLU, ..., Linear,
    ReLU; head Linear, ReLU, ..., Linear), for input-space patching."""
    body = getattr(model, "body", None)
    if not isinstance(body, nn.Sequential) or not hasattr(model, "normalize"):
        raise ModelError("input-space patching needs an MLP classifier (normalize, body, head); use space='head'")
    mods = list(body)
    kinds = ["F" if isinstance(m, nn.Flatten) else "L" if isinstance(m, nn.Linear) else "R" if isinstance(m, nn.ReLU)
             else "?" for m in mods]
    if not kinds or kinds[0] != "F" or len(kinds) % 2 != 1 or kinds[1:] != ["L", "R"] * ((len(kinds) - 1) // 2):
        raise ModelError(f"input-space patching needs a body Flatten, Linear, ReLU, ..., Linear, ReLU (an MLP); got "
                         f"{[type(m).__name__ for m in mods]}: use space='head'")
    return [m for m in mods if isinstance(m, nn.Linear)] + relu_mlp_layers(model)


def patched_layers(model: nn.Module, space: str) -> list[nn.Linear]:
    """The Linear layers of the ReLU MLP that PRUNE patches in ``space`` (``head`` or ``input``)."""
    if space == "head":
        return relu_mlp_layers(model)
    if space == "input":
        return input_mlp_layers(model)
    raise ModelError(f"unknown patch space {space!r}; use one of {SPACES}")


def patched_sequential(model: nn.Module, space: str) -> nn.Sequential:
    """The patched MLP as one Sequential of the original's own modules (not copies)."""
    if space == "head":
        return model.head
    input_mlp_layers(model)
    return nn.Sequential(*list(model.body)[1:], *list(model.head))


def space_features(model: nn.Module, x: torch.Tensor, space: str) -> torch.Tensor:
    """The points the patched MLP sees: penultimate features (``head``) or the normalised, flattened image."""
    if space == "head":
        return model.features(x)
    return model.normalize(x).flatten(1)


def input_box(model: nn.Module, image_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The valid input domain of ``input`` space: pixel values [0, 1] through the model's normalisation,
    flattened (channel-major, as ``flatten`` orders them)."""
    mean, std = model.normalize.mean.reshape(-1), model.normalize.std.reshape(-1)
    c, h, w = image_shape
    lo = ((0.0 - mean) / std).repeat_interleave(h * w)
    hi = ((1.0 - mean) / std).repeat_interleave(h * w)
    return lo.float(), hi.float()


def hidden_sizes(linears: list[nn.Linear]) -> list[int]:
    return [lin.out_features for lin in linears[:-1]]


def _affine(z: torch.Tensor, linears: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor]:
    pres = []
    h = z
    for lin in linears[:-1]:
        a = F.linear(h, lin.weight, lin.bias)
        pres.append(a)
        h = torch.relu(a)
    out = F.linear(h, linears[-1].weight, linears[-1].bias)
    return torch.cat(pres, dim=-1), out


def pre_activations(z: torch.Tensor, linears: list[nn.Linear]) -> torch.Tensor:
    """Concatenated hidden pre-activations ``[N, m]`` (in the dtype of ``z`` and the layers)."""
    return _affine(z, linears)[0]


def pattern_of(pre: torch.Tensor) -> torch.Tensor:
    """Activation pattern as +-1 (+1: active, pre-activation > 0, matching autograd's ReLU derivative)."""
    return torch.where(pre > 0, 1.0, -1.0).to(pre.dtype)


def linearise(z: torch.Tensor, linears: list[nn.Linear], chunk: int = 256) -> dict[str, torch.Tensor]:
    """At each row of ``z`` (float64): hidden pre-activations ``pre [N, m]``, their Jacobians ``J [N, m, d]``,
    outputs ``out [N, C]`` and the output Jacobian ``F1 [N, C, d]`` (batched ``vmap(jacrev)``).

    The linear region of ``z0`` is ``{z : s_j (J_j z + pre_j - J_j z0) >= 0}`` (``s`` its pattern); on it the
    head equals ``F1 z + F2`` with ``F2 = out - F1 z0``."""
    lin64 = [copy.deepcopy(lin).double().requires_grad_(False) for lin in linears]
    z = z.detach().double()

    def fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _affine(x, lin64)

    jac = torch.func.vmap(torch.func.jacrev(fn))
    parts: dict[str, list[torch.Tensor]] = {"pre": [], "J": [], "out": [], "F1": []}
    for start in range(0, z.shape[0], chunk):
        zc = z[start:start + chunk]
        with torch.no_grad():
            pre, out = fn(zc)
        J, F1 = jac(zc)
        for k, v in (("pre", pre), ("J", J), ("out", out), ("F1", F1)):
            parts[k].append(v.detach())
    if z.shape[0] == 0:
        m = sum(hidden_sizes(linears))
        return {"pre": z.new_zeros(0, m), "J": z.new_zeros(0, m, z.shape[1]),
                "out": z.new_zeros(0, linears[-1].out_features),
                "F1": z.new_zeros(0, linears[-1].out_features, z.shape[1])}
    return {k: torch.cat(v) for k, v in parts.items()}


def region_constraints(lin: dict[str, torch.Tensor], z: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, b)`` with the linear region of point ``i`` equal to ``{A z <= b}`` (box not included)."""
    s = pattern_of(lin["pre"][i])
    J = lin["J"][i]
    A = -s[:, None] * J
    b = s * (lin["pre"][i] - J @ z[i].double())
    return A, b


@contextlib.contextmanager
def exact_fp32(device: torch.device) -> Iterator[None]:
    """No autocast, and on CUDA no TF32 matmuls: the patched head runs in true fp32."""
    if device.type == "cuda":
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            with torch.autocast("cuda", enabled=False):
                yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev
    else:
        with torch.autocast("cpu", enabled=False):
            yield


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone(), requires_grad=False)


class Patch(nn.Module):
    """One gated affine patch: ``d [C]``, optional ``c [C, d]``, bound ``K`` and member patterns ``[n, m]``.

    ``target`` (a buffer) is the label the patch certifies on its representative's region."""

    def __init__(self, d: torch.Tensor, K: torch.Tensor, patterns: torch.Tensor, target: int | torch.Tensor,
                 c: torch.Tensor | None = None):
        super().__init__()
        self.d = _frozen(d.float())
        self.K = _frozen(K.float().reshape(()))
        self.patterns = _frozen(patterns.float())
        self.c = _frozen(c.float()) if c is not None else None
        self.register_buffer("target", torch.as_tensor(target, dtype=torch.int64).reshape(()).clone())

    @staticmethod
    def bound(d: torch.Tensor, c: torch.Tensor | None, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """``max_{lo <= z <= hi} max_k |c_k z + d_k|`` (float64, closed form)."""
        d = d.double()
        if c is None:
            return d.abs().max()
        c = c.double()
        mid, rad = (lo.double() + hi.double()) / 2, (hi.double() - lo.double()) / 2
        return ((c @ mid + d).abs() + c.abs() @ rad).max()

    @staticmethod
    def safe_K(d: torch.Tensor, c: torch.Tensor | None, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """The stored bound: the box bound of |p| (fp32 values) with a small slack, rounded up to fp32."""
        dd = d.float().double()
        cc = c.float().double() if c is not None else None
        k = Patch.bound(dd, cc, lo, hi) * (1 + K_REL_SLACK) + K_ABS_SLACK
        k32 = k.float()
        if k32.double() < k:
            k32 = torch.nextafter(k32, torch.full_like(k32, float("inf")))
        return k32


def member_supports(pre: torch.Tensor, patterns: torch.Tensor, gamma: float, linears: list[nn.Linear]
                    ) -> torch.Tensor:
    """Support-network values ``g [B, n]`` of each member region at each input (``pre``: true hidden
    pre-activations ``[B, m]`` of the inputs; ``patterns``: members' +-1 patterns ``[n, m]``).

    Deficit of unit j for member Q: ``1 - clamp(gamma Q_j a_j + 1, 0, 1) = min(1, gamma ReLU(-Q_j a_j))`` with
    ``a_j`` the unit's affine form in Q's region. In the first hidden layer ``a_j`` is the true pre-activation
    for every Q, so the deficit is ``[Q_j != s_j] min(1, gamma |pre_j|)`` (``s`` the input's pattern): one
    matmul. Deeper layers (only for heads with several hidden layers) run Q's masked forward, for the pairs
    whose support is still positive. Equal patterns give exactly ``g = 1``."""
    sizes = hidden_sizes(linears)
    m1 = sizes[0]
    s = pattern_of(pre)
    s1, pre1 = s[:, :m1], pre[:, :m1]
    Q1 = patterns[:, :m1]
    w1 = torch.clamp(gamma * pre1.abs(), max=1.0)
    mism = (m1 - s1 @ Q1.T) / 2  # exact integer counts
    D = (w1.sum(1, keepdim=True) - (s1 * w1) @ Q1.T) / 2
    D = torch.where(mism > 0.5, D.clamp_min(0.0), torch.zeros_like(D))
    if len(sizes) > 1:
        b_idx, q_idx = torch.nonzero(D < 1.0, as_tuple=True)
        if b_idx.numel():
            h = pre1[b_idx] * (Q1[q_idx] > 0)
            extra = torch.zeros_like(h[:, 0])
            start = m1
            for li, size in enumerate(sizes[1:], start=1):
                a = F.linear(h, linears[li].weight, linears[li].bias)
                Q = patterns[q_idx, start:start + size]
                extra = extra + torch.clamp(gamma * torch.relu(-Q * a), max=1.0).sum(1)
                h = a * (Q > 0)
                start += size
            D = D.index_put((b_idx, q_idx), D[b_idx, q_idx] + extra)
    return torch.relu(1.0 - D)


class PatchedHead(nn.Module):
    """``base(z) + sum_k h_k(z)``; ``base`` is the original head (referenced, not registered: its weights are
    saved once, under ``original.``)."""

    def __init__(self, base: nn.Sequential, lo: torch.Tensor, hi: torch.Tensor, gamma: float, epsilon: float):
        super().__init__()
        object.__setattr__(self, "_base", base)
        self.lo = _frozen(lo.float())
        self.hi = _frozen(hi.float())
        self.register_buffer("gamma", torch.tensor(float(gamma), dtype=torch.float32))
        self.register_buffer("epsilon", torch.tensor(float(epsilon), dtype=torch.float32))
        self.patches = nn.ModuleList()

    @property
    def base(self) -> nn.Sequential:
        return self._base

    def linears(self) -> list[nn.Linear]:
        return [m for m in self._base if isinstance(m, nn.Linear)]

    def add(self, patch: Patch) -> None:
        self.patches.append(patch.to(self.lo.device))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        with exact_fp32(z.device):
            z = z.float()
            out = self._base(z)
            if len(self.patches):
                out = out + self.patch_sum(z)
        return out

    def member_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All members' patterns ``[n, m]`` and the index of the patch each belongs to ``[n]``."""
        pats = [p.patterns for p in self.patches]
        owner = torch.cat([torch.full((len(p.patterns),), k, dtype=torch.int64, device=self.lo.device)
                           for k, p in enumerate(self.patches)])
        return torch.cat(pats), owner

    def supports(self, z: torch.Tensor) -> torch.Tensor:
        """``g_k(z)`` for every patch ``[B, P]`` (max over the patch's members)."""
        linears = self.linears()
        pre = pre_activations(z, linears)
        pats, owner = self.member_table()
        g_m = member_supports(pre, pats, float(self.gamma), linears)
        g = torch.zeros(z.shape[0], len(self.patches), dtype=z.dtype, device=z.device)
        return g.scatter_reduce(1, owner.expand(z.shape[0], -1), g_m, reduce="amax", include_self=True)

    def patch_sum(self, z: torch.Tensor) -> torch.Tensor:
        g = self.supports(z)  # [B, P]
        d = torch.stack([p.d for p in self.patches])  # [P, C]
        p = d.unsqueeze(0).expand(z.shape[0], -1, -1)
        if any(pt.c is not None for pt in self.patches):
            zc = torch.minimum(torch.maximum(z, self.lo), self.hi)
            lin = [zc @ pt.c.T if pt.c is not None else torch.zeros_like(pt.d).expand(z.shape[0], -1)
                   for pt in self.patches]
            p = p + torch.stack(lin, dim=1)
        K = torch.stack([pt.K for pt in self.patches]).view(1, -1, 1)
        kg = K * (g.unsqueeze(-1) - 1.0)
        h = torch.relu(p + kg) - torch.relu(-p + kg)
        return h.sum(1)


class PatchedModel(nn.Module):
    """The original model, untouched, plus PRUNE's patches on its head: ``forward(x) = head(features(x))``
    with ``head`` a :class:`PatchedHead`. Outside every support the output equals the original's bit for bit
    (fp32); the head and patches always run in fp32 (no autocast, no TF32)."""

    def __init__(self, original: nn.Module, lo: torch.Tensor, hi: torch.Tensor, gamma: float, epsilon: float,
                 space: str = "head"):
        super().__init__()
        patched_layers(original, space)
        self.original = original
        dev = _device_of(original)
        self.space = space
        self.register_buffer("space_code", torch.tensor(SPACES.index(space), dtype=torch.int64, device=dev))
        self.head = PatchedHead(patched_sequential(original, space), lo.to(dev), hi.to(dev), gamma, epsilon)

    # -- the Classifier interface other code relies on
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return space_features(self.original, x, self.space)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @property
    def is_conv(self) -> bool:
        return bool(getattr(self.original, "is_conv", False))

    @property
    def arch(self) -> str:
        return str(getattr(self.original, "arch", ""))

    @property
    def feature_dim(self) -> int:
        if self.space == "input":
            return int(self.head.lo.numel())
        return int(getattr(self.original, "feature_dim", self.head.lo.numel()))

    @property
    def patches(self) -> nn.ModuleList:
        return self.head.patches

    # -- saving and rebuilding
    @classmethod
    def from_state_dict(cls, original: nn.Module, state: dict[str, torch.Tensor]) -> "PatchedModel":
        """Rebuild from an original model (its architecture; its weights are overwritten by ``state``) and a
        state_dict saved from a PatchedModel: the number of patches and their shapes come from the keys."""
        if not all(k in state for k in ("head.lo", "head.hi", "head.gamma", "head.epsilon")):
            raise ValueError("not a PatchedModel state_dict (no 'head.lo' / 'head.gamma' / 'head.epsilon'); "
                             "save one with patched_model.state_dict()")
        space = SPACES[int(state["space_code"])] if "space_code" in state else "head"
        state = {**state, "space_code": torch.tensor(SPACES.index(space), dtype=torch.int64)}
        model = cls(original, state["head.lo"], state["head.hi"], float(state["head.gamma"]),
                    float(state["head.epsilon"]), space)
        ids = sorted({int(m.group(1)) for k in state if (m := re.match(r"head\.patches\.(\d+)\.d$", k))})
        if ids != list(range(len(ids))):
            raise ValueError(f"PatchedModel state_dict has patch indices {ids}; expected 0..{len(ids) - 1}")
        for k in ids:
            pre = f"head.patches.{k}."
            model.head.add(Patch(state[pre + "d"], state[pre + "K"], state[pre + "patterns"], state[pre + "target"],
                                 state.get(pre + "c")))
        model.load_state_dict(state)
        return model


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
