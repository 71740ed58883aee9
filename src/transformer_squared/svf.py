"""Singular Value Fine-tuning (paper §3.1): the parametrisation, recomposition, mixing, and the
two ways to run adapted weights on a model.

Symbols: W (out × in) = U · diag(s) · Vᵀ with U (out × r), s (r), V (in × r), r = min(out, in).
An expert holds raw parameters p per target; z = f(p) (f = sigmoid in the reference). The adapted
singular values keep the sum of s: s' = s ⊙ z · (Σs / Σ(s ⊙ z)), so a uniform z gives back W, and
W' = U · diag(s') · Vᵀ. A mixture is z' = Σₖ αₖ zₖ over post-parametrisation z (paper §3.2).

Both modes apply the change as a delta, W' = W + U · diag(s' − s) · Vᵀ, which equals U·diag(s')·Vᵀ
for the exact factors but keeps the rounding error proportional to the change: a uniform z returns W
to the last bit, where recomposing U·diag(s')·Vᵀ would add the SVD's ~1e-6 residual to every layer.

* merged: W' is written into the Linear weights (originals kept, restored bit for bit);
* factored: y = x·Wᵀ + ((x·V) ⊙ (s'_b − s)) · Uᵀ with one s'_b per batch row, so rows may use
  different experts.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Protocol

import torch
from torch import Tensor, nn

from .errors import ConfigError, ExpertError
from .registry import Registry
from .svd import Factors


class Parametrisation(Protocol):
    """Maps raw trainable parameters p to the singular-value scales z."""

    name: str

    def init(self, r: int, generator: torch.Generator) -> Tensor:
        """Initial raw parameters p (r,)."""
        ...

    def z(self, p: Tensor) -> Tensor:
        """Scales z (same shape as p)."""
        ...


class Sigmoid:
    """The reference: z = sigmoid(p), p = 0.1 + N(0, 0.01²) at init."""

    name = "sigmoid"
    init_mean = 0.1
    init_std = 0.01

    def init(self, r: int, generator: torch.Generator) -> Tensor:
        return self.init_mean + self.init_std * torch.randn(r, generator=generator)

    def z(self, p: Tensor) -> Tensor:
        return torch.sigmoid(p)


class Linear:
    """z = p, initialised at exactly 1 (the base weights)."""

    name = "linear"

    def init(self, r: int, generator: torch.Generator) -> Tensor:
        return torch.ones(r)

    def z(self, p: Tensor) -> Tensor:
        return p


PARAMETRISATIONS: Registry[Parametrisation] = Registry("parametrisation")
PARAMETRISATIONS.register("sigmoid", Sigmoid())
PARAMETRISATIONS.register("linear", Linear())


def adapted_s(s: Tensor, z: Tensor, normalise: bool = True) -> Tensor:
    """s' = s ⊙ z · (Σs / Σ(s ⊙ z)); z may carry leading batch dims: (..., r)."""
    sz = s * z  # (..., r)
    if normalise:
        sz = sz * (s.sum(-1, keepdim=True) / sz.sum(-1, keepdim=True))
    return sz


def recompose(U: Tensor, s: Tensor, V: Tensor, z: Tensor | None = None, normalise: bool = True) -> Tensor:
    """W' = U · diag(s') · Vᵀ (out × in); z=None gives U · diag(s) · Vᵀ."""
    s2 = s if z is None else adapted_s(s, z, normalise)
    return (U * s2) @ V.T  # (out, r) * (r,) @ (r, in) → (out, in)


def delta_w(U: Tensor, s: Tensor, V: Tensor, z: Tensor, normalise: bool = True) -> Tensor:
    """ΔW = W' − W = U · diag(s' − s) · Vᵀ (out × in)."""
    return (U * (adapted_s(s, z, normalise) - s)) @ V.T  # (out, r) * (r,) @ (r, in) → (out, in)


def mix(zs: list[dict[str, Tensor]], alpha: Tensor) -> dict[str, Tensor]:
    """z' = Σₖ αₖ zₖ per target; alpha (K,) = one per expert, (K, n_targets) = one per expert
    per target (targets in the order of zs[0]). Per-row mixtures: `mix_batch`."""
    if not zs:
        raise ConfigError("mixing needs at least one expert")
    names = list(zs[0])
    for k, z in enumerate(zs[1:], 1):
        if list(z) != names:
            raise ExpertError(f"expert {k} has other targets than expert 0; experts must share targets")
    K = len(zs)
    if alpha.dim() == 1:
        alpha = alpha[:, None].expand(K, len(names))  # (K, n_targets)
    if alpha.shape != (K, len(names)):
        raise ConfigError(f"alpha has shape {tuple(alpha.shape)}; expected ({K},) or ({K}, {len(names)})")
    return {t: sum(alpha[k, i] * zs[k][t] for k in range(K)) for i, t in enumerate(names)}


def mix_batch(zs: list[dict[str, Tensor]], alpha: Tensor) -> dict[str, Tensor]:
    """Per-row mixtures for factored mode: alpha (B, K), or (B, K, n_targets) for one α per expert
    per target (targets in the order of zs[0]) → z (B, r) per target.

    A row whose α are all zero means "no expert": z = 1, i.e. the base weights.
    """
    names = list(zs[0]) if zs else []
    shapes = ((len(zs),), (len(zs), len(names)))
    if alpha.dim() not in (2, 3) or tuple(alpha.shape[1:]) not in shapes:
        raise ConfigError(f"alpha has shape {tuple(alpha.shape)}; expected (batch, {len(zs)}) "
                          f"or (batch, {len(zs)}, {len(names)})")
    base_rows = (alpha.flatten(1).abs().sum(1) == 0)[:, None]  # (B, 1)
    out = {}
    for i, t in enumerate(names):
        Z = torch.stack([z[t] for z in zs])  # (K, r)
        a = alpha if alpha.dim() == 2 else alpha[:, :, i]  # (B, K)
        zb = a.to(Z.dtype) @ Z  # (B, r)
        out[t] = torch.where(base_rows, torch.ones_like(zb), zb)
    return out


class FactoredLinear(nn.Module):
    """y = base(x) + ((x·V) ⊙ (s'_b − s)) · Uᵀ, with one row of s' per batch example."""

    def __init__(self, base: nn.Linear, f: Factors, ds_batch: Tensor) -> None:
        super().__init__()
        self.base = base
        dtype = base.weight.dtype
        self.U, self.V = f.U.to(dtype), f.V.to(dtype)
        self.ds_batch = ds_batch.to(dtype)  # (B, r): s'_b − s

    def forward(self, x: Tensor) -> Tensor:
        h = (x @ self.V) * self.ds_batch[:, None, :]  # (B, T, r)
        return self.base(x) + h @ self.U.T  # (B, T, out)


class SVFModel:
    """Walks a model and applies SVF to its targets, merged or factored (PEFT's 'model' layer)."""

    def __init__(
        self, model: nn.Module, factors: dict[str, Factors], normalise: bool = True, fingerprint: str = ""
    ) -> None:
        self.model = model
        self.factors = factors
        self.normalise = normalise
        self.fingerprint = fingerprint  # svd.fingerprint of the base weights of the targets
        self._originals: dict[str, Tensor] = {}

    @property
    def targets(self) -> list[str]:
        return list(self.factors)

    def _check(self, z: dict[str, Tensor]) -> None:
        unknown = sorted(set(z) - set(self.factors))
        if unknown:
            raise ExpertError(f"expert has target '{unknown[0]}' that this model's SVF setup lacks")

    def merge(self, z: dict[str, Tensor]) -> dict[str, Tensor]:
        """Write W'(z) into the weights; returns W' per target (with autograd graph if z has one)."""
        self._check(z)
        Ws = {}
        for name, zt in z.items():
            f = self.factors[name]
            weight = self.model.get_submodule(name).weight
            if name not in self._originals:
                self._originals[name] = weight.detach().clone()
            W0 = self._originals[name]
            W = W0.to(f.U.dtype) + delta_w(f.U, f.S, f.V, zt.to(f.S.device), self.normalise)  # (out, in)
            if not torch.isfinite(W).all():
                raise ExpertError(f"adapted weight of '{name}' is not finite; expert values are invalid")
            with torch.no_grad():
                weight.copy_(W)
            Ws[name] = W
        return Ws

    def restore(self) -> None:
        """Put the original weights back, bit for bit."""
        with torch.no_grad():
            for name, W in self._originals.items():
                self.model.get_submodule(name).weight.copy_(W)
        self._originals.clear()

    @contextmanager
    def merged(self, z: dict[str, Tensor]) -> Iterator[None]:
        self.merge(z)
        try:
            yield
        finally:
            self.restore()

    def track_weight_grads(self, on: bool = True) -> None:
        """Let target weights collect .grad (training); every other parameter stays frozen."""
        for p in self.model.parameters():
            p.requires_grad_(False)
        for name in self.targets:
            self.model.get_submodule(name).weight.requires_grad_(on)

    def backward_to_z(self, Ws: dict[str, Tensor]) -> None:
        """Chain rule W' → z: push each target weight's .grad through the graph returned by merge."""
        names = [n for n in Ws if self.model.get_submodule(n).weight.grad is not None]
        grads = [self.model.get_submodule(n).weight.grad.to(Ws[n].dtype) for n in names]
        torch.autograd.backward([Ws[n] for n in names], grads)
        for n in names:
            self.model.get_submodule(n).weight.grad = None

    @contextmanager
    def factored(self, z_batch: dict[str, Tensor]) -> Iterator[None]:
        """Swap targets for FactoredLinear with per-row z (B, r) for the duration of the block."""
        self._check(z_batch)
        swapped = []
        try:
            for name, zb in z_batch.items():
                f = self.factors[name]
                parent_name, _, child = name.rpartition(".")
                parent = self.model.get_submodule(parent_name)
                base = getattr(parent, child)
                ds = adapted_s(f.S, zb.to(f.S.device), self.normalise) - f.S  # (B, r)
                setattr(parent, child, FactoredLinear(base, f, ds))
                swapped.append((parent, child, base))
            yield
        finally:
            for parent, child, base in swapped:
                setattr(parent, child, base)
