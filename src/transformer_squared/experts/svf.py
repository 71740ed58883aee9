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

from ..errors import ConfigError, ExpertError
from ..registry import Registry
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
    """s' = s ⊙ z · (Σs / Σ(s ⊙ z)); z may carry leading batch dims: (..., r).

    With `normalise`, a row whose Σ(s ⊙ z) is 0 (z = 0: a target whose mixture weights are all zero)
    has no scale to keep; it gets s' = s, the base weights, instead of 0 · ∞ = NaN.
    """
    sz = s * z  # (..., r)
    if normalise:
        total = sz.sum(-1, keepdim=True)  # (..., 1)
        empty = total == 0
        sz = torch.where(empty, s.expand_as(sz), sz * (s.sum(-1, keepdim=True) / torch.where(empty, 1.0, total)))
    return sz


def recompose(U: Tensor, s: Tensor, V: Tensor, z: Tensor | None = None, normalise: bool = True) -> Tensor:
    """W' = U · diag(s') · Vᵀ (out × in); z=None gives U · diag(s) · Vᵀ."""
    s2 = s if z is None else adapted_s(s, z, normalise)
    return (U * s2) @ V.T  # (out, r) * (r,) @ (r, in) → (out, in)


def delta_w(U: Tensor, s: Tensor, V: Tensor, z: Tensor, normalise: bool = True) -> Tensor:
    """ΔW = W' − W = U · diag(s' − s) · Vᵀ (out × in)."""
    return delta_from_s(U, s, V, adapted_s(s, z, normalise))


def delta_from_s(U: Tensor, s: Tensor, V: Tensor, s2: Tensor) -> Tensor:
    """ΔW = U · diag(s2 − s) · Vᵀ (out × in) for given adapted singular values s2, in U's dtype."""
    return (U * (s2 - s).to(U.dtype)) @ V.T  # (out, r) * (r,) @ (r, in) → (out, in)


def adapted_weight(name: str, W0: Tensor, dW: Tensor) -> Tensor:
    """W' = W₀ + ΔW in the wider of the two dtypes, checked finite: the one place merging, export and the vLLM
    backend write an adapted weight (invalid expert values raise ExpertError naming the target `name`)."""
    W = W0.to(torch.promote_types(W0.dtype, dW.dtype)) + dW  # (out, in)
    if not torch.isfinite(W).all():
        raise ExpertError(f"adapted weight of '{name}' is not finite; expert values are invalid")
    return W


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
    out = {}
    for i, t in enumerate(names):  # a target whose α are all zero keeps its base weights: z' = 1
        out[t] = (sum(alpha[k, i] * zs[k][t] for k in range(K)) if bool(alpha[:, i].abs().sum() > 0)
                  else torch.ones_like(zs[0][t]))
    return out


def mix_batch(zs: list[dict[str, Tensor]], alpha: Tensor) -> dict[str, Tensor]:
    """Per-row mixtures for factored mode: alpha (B, K), or (B, K, n_targets) for one α per expert
    per target (targets in the order of zs[0]) → z (B, r) per target.

    A row whose α for a target are all zero means "no expert" there: z = 1, i.e. that target's base weights.
    """
    names = list(zs[0]) if zs else []
    shapes = ((len(zs),), (len(zs), len(names)))
    if alpha.dim() not in (2, 3) or tuple(alpha.shape[1:]) not in shapes:
        raise ConfigError(f"alpha has shape {tuple(alpha.shape)}; expected (batch, {len(zs)}) "
                          f"or (batch, {len(zs)}, {len(names)})")
    out = {}
    for i, t in enumerate(names):
        Z = torch.stack([z[t] for z in zs])  # (K, r)
        a = alpha if alpha.dim() == 2 else alpha[:, :, i]  # (B, K)
        zb = a.to(Z.dtype) @ Z  # (B, r)
        base_rows = (a.abs().sum(1) == 0)[:, None]  # (B, 1): no expert for this target in this row
        out[t] = torch.where(base_rows, torch.ones_like(zb), zb)
    return out


class FactoredLinear(nn.Module):
    """y = base(x) + ((x·V) ⊙ (s'_b − s)) · Uᵀ, with one row of s' per batch example (or one for all).

    U and V are used as the SVFModel holds them (cast once, in the factor dtype); only the small
    activations h are cast, never the factors.
    """

    def __init__(self, base: nn.Linear, f: Factors, ds_batch: Tensor) -> None:
        super().__init__()
        self.base = base
        self.U, self.V = f.U, f.V  # (out, r), (in, r)
        self.ds_batch = ds_batch.to(f.U.dtype)  # (B, r) or (1, r): s'_b − s

    def forward(self, x: Tensor) -> Tensor:
        h = (x.to(self.V.dtype) @ self.V) * self.ds_batch[:, None, :]  # (B, T, r)
        return self.base(x) + (h @ self.U.T).to(x.dtype)  # (B, T, out)


class SVFModel:
    """Walks a model and applies SVF to its targets, merged or factored (PEFT's 'model' layer).

    `factors` are kept as given for the SVFModel's life (`svd.load_factors` casts U and V once to
    the factor dtype, S stays float32). Merging streams target by target: ΔW of one target is
    computed, added into its weight in place, and its original is copied to the CPU (restored
    bit for bit); all W' never exist at once, and no original stays on the accelerator. After a
    restore the CPU copies stay allocated and the next merge writes into them: one set for the
    SVFModel's life, not a fresh one per merge (a server that switches mixtures would otherwise
    grow its heap by fragmentation).
    """

    def __init__(
        self, model: nn.Module, factors: dict[str, Factors], normalise: bool = True, fingerprint: str = ""
    ) -> None:
        self.model = model
        self.factors = factors
        self.normalise = normalise
        self.fingerprint = fingerprint  # svd.fingerprint of the base weights of the targets
        self._originals: dict[str, Tensor] = {}  # CPU copies of merged targets' base weights
        self._spare: dict[str, Tensor] = {}  # CPU buffers of restored originals, reused by the next merge
        self._merged_s: dict[str, Tensor] = {}  # s' currently merged, per target

    @property
    def targets(self) -> list[str]:
        return list(self.factors)

    @property
    def is_merged(self) -> bool:
        """Whether some W' is written into the weights (until `restore`)."""
        return bool(self._originals)

    def _check(self, z: dict[str, Tensor]) -> None:
        unknown = sorted(set(z) - set(self.factors))
        if unknown:
            raise ExpertError(f"expert has target '{unknown[0]}' that this model's SVF setup lacks")

    def merge(self, z: dict[str, Tensor]) -> dict[str, Tensor]:
        """Write W'(z) into the weights, target by target; returns s' per target (with autograd graph
        if z has one: `backward_to_z` takes it). Exception safe: if any target fails, every weight
        is restored to the original before the error propagates."""
        self._check(z)
        s_new = {}
        for name, zt in z.items():  # check everything cheap before touching any weight
            f = self.factors[name]
            s_new[name] = adapted_s(f.S, zt.to(f.S.device), self.normalise)  # (r,)
            if not torch.isfinite(s_new[name]).all():
                raise ExpertError(f"adapted singular values of '{name}' are not finite; expert values are invalid")
        try:
            for name, s2 in s_new.items():
                self._write(name, s2.detach())
        except BaseException:
            self.restore()
            raise
        return s_new

    def _write(self, name: str, s2: Tensor) -> None:
        """W' = W + U·diag(s' − s)·Vᵀ into one target's weight (in place); keeps W on the CPU."""
        f = self.factors[name]
        weight = self.model.get_submodule(name).weight
        if name in self._originals:
            W0 = self._originals[name].to(weight.device)
        else:  # reuse the buffer of an earlier merge: a fresh copy per merge fragments the CPU heap
            W0 = weight.detach()
            spare = self._spare.pop(name, None)
            self._originals[name] = W0.to("cpu", copy=True) if spare is None else spare.copy_(W0)
        W = adapted_weight(name, W0, delta_from_s(f.U, f.S, f.V, s2))  # (out, in), one target at a time
        with torch.no_grad():
            weight.copy_(W)
        self._merged_s[name] = s2

    def restore(self) -> None:
        """Put the original weights back, bit for bit."""
        with torch.no_grad():
            for name, W in self._originals.items():
                self.model.get_submodule(name).weight.copy_(W)
        self._spare.update(self._originals)
        self._originals.clear()
        self._merged_s.clear()

    @contextmanager
    def merged(self, z: dict[str, Tensor]) -> Iterator[None]:
        try:
            self.merge(z)
            yield
        finally:
            self.restore()

    def track_weight_grads(self, on: bool = True) -> None:
        """Let target weights collect .grad (training); every other parameter stays frozen."""
        for p in self.model.parameters():
            p.requires_grad_(False)
        for name in self.targets:
            self.model.get_submodule(name).weight.requires_grad_(on)

    def backward_to_z(self, s_new: dict[str, Tensor]) -> None:
        """Chain rule W' → s' → z, target by target: dL/ds'ᵢ = (Uᵀ·G·V)ᵢᵢ with G = dL/dW' (the weight's
        .grad), pushed through the graph of the s' that `merge` returned."""
        names, grads = [], []
        for name in s_new:
            weight = self.model.get_submodule(name).weight
            if weight.grad is None:
                continue
            f = self.factors[name]
            dtype = torch.promote_types(f.S.dtype, f.U.dtype)  # float32 at least: one target's temporaries
            G, U, V = weight.grad.to(dtype), f.U.to(dtype), f.V.to(dtype)  # (out, in), (out, r), (in, r)
            if G.shape[0] >= G.shape[1]:  # the smaller intermediate first
                g = ((U.T @ G) * V.T).sum(1)  # (r, in) ⊙ (r, in) → (r,)
            else:
                g = ((G @ V) * U).sum(0)  # (out, r) ⊙ (out, r) → (r,)
            names.append(name)
            grads.append(g.to(s_new[name].dtype))
            weight.grad = None
        if names:
            torch.autograd.backward([s_new[n] for n in names], grads)

    @contextmanager
    def factored(self, z_batch: dict[str, Tensor]) -> Iterator[None]:
        """Swap targets for FactoredLinear with per-row z (B, r) for the duration of the block."""
        self._check(z_batch)
        ds = {}
        for name, zb in z_batch.items():
            f = self.factors[name]
            ds[name] = adapted_s(f.S, zb.to(f.S.device), self.normalise) - f.S  # (B, r)
        with self._swapped(ds):
            yield

    @contextmanager
    def base_weights(self) -> Iterator[None]:
        """While an expert is merged, run the base weights (the training loop's KL reference). Where the
        originals are on the weights' device (the CPU), they are put in place for the block: exact, and as
        cheap as the base model. Elsewhere (no original stays on an accelerator) each merged target gets
        −ΔW, factored: exact at a uniform z, otherwise off by the rounding of W'."""
        on_device = {name: W0 for name, W0 in self._originals.items()
                     if W0.device == self.model.get_submodule(name).weight.device}
        if len(on_device) == len(self._originals):
            kept = {}
            try:
                for name, W0 in on_device.items():
                    weight = self.model.get_submodule(name).weight
                    kept[name] = weight.data
                    weight.data = W0  # same shape and dtype: the module computes with the original
                yield
            finally:
                for name, W in kept.items():
                    self.model.get_submodule(name).weight.data = W
            return
        with torch.no_grad():
            ds = {name: (self.factors[name].S - s2)[None] for name, s2 in self._merged_s.items()}  # (1, r)
        with self._swapped(ds):
            yield

    @contextmanager
    def _swapped(self, ds: dict[str, Tensor]) -> Iterator[None]:
        swapped = []
        try:
            for name, d in ds.items():
                parent_name, _, child = name.rpartition(".")
                parent = self.model.get_submodule(parent_name)
                base = getattr(parent, child)
                setattr(parent, child, FactoredLinear(base, self.factors[name], d))
                swapped.append((parent, child, base))
            yield
        finally:
            for parent, child, base in swapped:
                setattr(parent, child, base)
