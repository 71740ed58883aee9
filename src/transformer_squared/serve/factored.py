"""Mixed batches for serving: each batch row runs its own mixture through per-row scaled SVF layers.

Two forms (DESIGN.md, "Two ways to run adapted weights"), with s'_b the adapted singular values of row b:
* delta form (`svf.FactoredLinear`): y = x·Wᵀ + ((x·V) ⊙ (s'_b − s))·Uᵀ. Exact at z = 1, but it adds a
  full-rank correction to x·Wᵀ: at Llama-3-8B's MLP shapes about 2.3× the multiply-adds of x·Wᵀ.
* serving form (`ServingLinear`): y = ((x·V) ⊙ s'_b)·Uᵀ, which never touches W: about 1.3×. It differs
  from the merged weights by the SVD's residual W − U·diag(s)·Vᵀ plus the factors' rounding.

`choose_form` measures that difference on random probes at start: the serving form is used where, on
every target, its error against x·Wᵀ is within the dtype's rounding (relative error ≤ eps of the model
dtype). Measured on random 384×256 and 1024×512 weights: bfloat16 ≈ 0.6 eps (merged itself ≈ 0.46 eps),
so bfloat16 and float16 models serve in the serving form; float32 ≈ 11 eps (a float32 SVD's residual is
~1e-6), so float32 models keep the delta form.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn

from ..experts.svd import Factors
from ..experts.svf import FactoredLinear, SVFModel, adapted_s


class ServingLinear(nn.Module):
    """y = ((x·V) ⊙ s'_b)·Uᵀ (+ bias), one row of s' per batch row; the base weight W is not read."""

    def __init__(self, base: nn.Linear, f: Factors, s_rows: Tensor) -> None:
        super().__init__()
        self.base = base  # kept for its bias and to be put back
        self.U, self.V = f.U, f.V  # (out, r), (in, r), in the factor dtype
        self.scale = s_rows.to(f.U.dtype)  # (B, r): s'_b

    def forward(self, x: Tensor) -> Tensor:
        h = (x.to(self.V.dtype) @ self.V) * self.scale[:, None, :]  # (B, T, r)
        y = (h @ self.U.T).to(x.dtype)  # (B, T, out)
        return y if self.base.bias is None else y + self.base.bias


class RowLayers:
    """The swapped layers of one mixed batch: `select` keeps the rows still running (finished rows leave),
    `push` appends rows (requests that join the running batch)."""

    def __init__(self, svf: SVFModel) -> None:
        self.svf = svf
        self.layers: list[tuple[nn.Module, str, str]] = []  # (layer, name of its per-row tensor, target)

    def select(self, keep: Tensor) -> None:
        """Keep rows `keep` (indices into the current rows) of every layer's per-row scales."""
        for layer, attr, _ in self.layers:
            setattr(layer, attr, getattr(layer, attr)[keep])

    @contextmanager
    def push(self, z_rows: dict[str, Tensor]) -> Iterator[None]:
        """Inside: the layers run only the new rows (their prefill); after: old rows, then the new ones."""
        old, new = [], []
        for layer, attr, name in self.layers:
            f = self.svf.factors[name]
            s2 = adapted_s(f.S, z_rows[name].to(f.S.device), self.svf.normalise)  # (B_new, r)
            new.append((s2 if attr == "scale" else s2 - f.S).to(f.U.dtype))
            old.append(getattr(layer, attr))
            setattr(layer, attr, new[-1])
        try:
            yield
        except BaseException:
            for (layer, attr, _), o in zip(self.layers, old):
                setattr(layer, attr, o)
            raise
        for (layer, attr, _), o, n in zip(self.layers, old, new):
            setattr(layer, attr, torch.cat([o, n]))


@contextmanager
def per_row(svf: SVFModel, z_rows: dict[str, Tensor], form: str) -> Iterator[RowLayers]:
    """Swap every target for a per-row layer (form 'serving' or 'delta') with z (B, r) per target."""
    rows = RowLayers(svf)
    swapped = []
    try:
        for name, zb in z_rows.items():
            f = svf.factors[name]
            s2 = adapted_s(f.S, zb.to(f.S.device), svf.normalise)  # (B, r)
            parent_name, _, child = name.rpartition(".")
            parent = svf.model.get_submodule(parent_name)
            base = getattr(parent, child)
            if form == "serving":
                layer, attr = ServingLinear(base, f, s2), "scale"
            else:
                layer, attr = FactoredLinear(base, f, s2 - f.S), "ds_batch"
            setattr(parent, child, layer)
            swapped.append((parent, child, base))
            rows.layers.append((layer, attr, name))
        yield rows
    finally:
        for parent, child, base in swapped:
            setattr(parent, child, base)


@torch.no_grad()
def serving_error(svf: SVFModel, name: str, n_probe: int = 4, seed: int = 0) -> float:
    """Relative error ‖y_serving − y‖ / ‖y‖ of one target on random inputs, y = x·Wᵀ computed in float64
    from the weight as stored (at z = 1 the merged weights are W itself)."""
    f = svf.factors[name]
    W = svf.model.get_submodule(name).weight  # (out, in)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_probe, W.shape[1], generator=g).to(W.device)  # (n, in)
    y_ref = x.double() @ W.double().T  # (n, out)
    y = ((x.to(W.dtype).to(f.V.dtype) @ f.V) * f.S.to(f.V.dtype)) @ f.U.T  # (n, out)
    y = y.to(W.dtype).double()
    return float((y - y_ref).norm() / y_ref.norm().clamp_min(1e-30))


def choose_form(svf: SVFModel, form: str = "auto") -> tuple[str, float]:
    """('serving' or 'delta', worst relative error of the serving form over targets; nan if not measured)."""
    if form != "auto":
        return form, float("nan")
    worst = max(serving_error(svf, name) for name in svf.targets)
    dtype = next(iter(svf.model.parameters())).dtype
    # within the dtype's rounding: no more than one rounding step (eps) of the model dtype, relative
    return ("serving" if worst <= torch.finfo(dtype).eps else "delta"), worst
