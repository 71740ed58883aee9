"""One adapted model: a base model, its experts and a mixture per prompt (paper §3.2, pass 2).

    am = load_adapted("smollm2-135m-instruct", experts=["runs/math/best", "runs/code/best"])
    am.generate(["What is 12 * 7?", "Reverse a list in Python."], alpha=torch.tensor([[1., 0.], [0., 1.]]))

α has shape (n_prompts, K) (one weight per expert) or (n_prompts, K, n_targets) (one per expert per
target, targets in the experts' order); z' = Σₖ αₖ zₖ over post-parametrisation z, and a row of
zeros means the base weights. Grouped execution (the default) runs the prompts that share a row of
α with that mixture merged into the weights, one group after another; mixed execution runs every
batch factored with one mixture per row (`svf.mix_batch`). Both give the same predictions to
within float rounding. The engine (`engine.HFEngine`, or the vLLM backend) does the batching.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor

from ..models import engine as eng
from ..errors import ConfigError, ExpertError
from .expert import Expert, attach, check_together
from ..models.load import load_model
from ..tasks.base import chat_format
from .svf import SVFModel, mix, mix_batch

Call = Callable[[list[int], "eng.RowZ | None"], list]  # (prompt indices, per-row z or None) → one result per index


def load_experts(experts: Sequence[str | Path | Expert]) -> list[Expert]:
    """Expert objects from folders (objects pass through)."""
    return [e if isinstance(e, Expert) else Expert.load(e) for e in experts]


def fixed_alpha(alpha: Sequence[float] | Tensor | None, n_experts: int, flag: str = "--alpha") -> Tensor:
    """One mixture for every prompt: (K,) or (K, n_targets) as given, else equal weights 1/K."""
    if alpha is None:
        return torch.full((n_experts,), 1.0 / max(n_experts, 1))
    a = torch.as_tensor(alpha, dtype=torch.float32)
    if a.dim() == 0 or a.shape[0] != n_experts:
        raise ConfigError(f"{flag}: {a.shape[0] if a.dim() else 1} value(s) for {n_experts} expert(s)")
    if not torch.isfinite(a).all():
        raise ConfigError(f"{flag}: values must be finite")
    return a


def group_rows(alpha: Tensor, order: Iterable[int] | None = None) -> dict[bytes, list[int]]:
    """Indices of identical rows of α (n, ...), walked in `order` (default 0..n-1); groups keep first appearance."""
    groups: dict[bytes, list[int]] = {}
    for i in range(alpha.shape[0]) if order is None else order:
        groups.setdefault(alpha[i].numpy().tobytes(), []).append(i)
    return groups


@dataclass
class AdaptedModel:
    """A model and tokenizer, the experts, and how prompts run with mixtures of them."""

    model: Any  # the Hugging Face model (for vLLM: the CPU copy that holds the base weights)
    tokenizer: Any
    svf: SVFModel | None = None  # SVF on `model`; None when no expert is used
    experts: list[Expert] = field(default_factory=list)
    alpha: Tensor | None = None  # default mixture for every prompt: (K,) or (K, n_targets); None = equal weights
    engine: Any = None  # an engine.Engine; None: engine.HFEngine over `model`

    def __post_init__(self) -> None:
        if self.experts and self.svf is None:
            raise ExpertError("experts need SVF factors: build with load_adapted or expert.attach")
        self.zs = [{t: z.detach() for t, z in e.z().items()} for e in self.experts]  # z per expert per target
        if self.alpha is not None:
            self.alpha = fixed_alpha(self.alpha, len(self.experts))
            self._check_alpha(self.alpha[None], "alpha")
        if self.engine is None:
            self.engine = eng.HFEngine(self.model, self.tokenizer, self.svf)
        self._current: Any = None  # key of the weights merged now (None = base)
        self._holding = False

    @property
    def labels(self) -> list[str]:
        return [e.meta.label for e in self.experts]

    @property
    def targets(self) -> list[str]:
        return list(self.zs[0]) if self.zs else []

    # ---- mixtures -------------------------------------------------------------------------------
    def _check_alpha(self, alpha: Tensor, where: str) -> None:
        K, T = len(self.experts), len(self.targets)
        if tuple(alpha.shape[1:]) not in ((K,), (K, T)) or alpha.dim() not in (2, 3):
            raise ConfigError(f"{where} has shape {tuple(alpha.shape)}; expected (n, {K}) or (n, {K}, {T})")
        if not torch.isfinite(alpha).all():
            raise ConfigError(f"{where}: mixture weights must be finite")

    def alpha_rows(self, n: int, alpha: Tensor | None = None) -> Tensor:
        """α for n prompts, (n, K) or (n, K, n_targets): `alpha` checked, else the default mixture repeated."""
        if alpha is None:
            a = fixed_alpha(self.alpha, len(self.experts))
            return a[None].expand(n, *a.shape).clone()
        alpha = torch.as_tensor(alpha, dtype=torch.float32)
        if alpha.shape[0] != n:
            raise ConfigError(f"alpha has {alpha.shape[0]} row(s) for {n} prompt(s)")
        self._check_alpha(alpha, "alpha")
        return alpha

    def z(self, row: Tensor | None = None) -> dict[str, Tensor] | None:
        """z' per target for one row of α ((K,) or (K, n_targets); None: the default mixture); None = base."""
        if not self.experts:
            return None
        row = fixed_alpha(self.alpha, len(self.experts)) if row is None else row
        if not bool(row.abs().sum() > 0):
            return None
        return mix(self.zs, row)

    # ---- running prompts ------------------------------------------------------------------------
    def use(self, key: Any, z: dict[str, Tensor] | None) -> None:
        """Merge z (per target; None: the base weights) unless the mixture named `key` is merged already.
        Inside `holding` it stays merged after the call; the server's worker keeps its mixture this way."""
        if key != self._current:
            self.engine.use(z)
            self._current = key

    def _release(self) -> None:
        if not self._holding:
            self.use(None, None)

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Keep merged weights between calls (one merge per mixture for a whole run); base weights after."""
        outer, self._holding = self._holding, True
        try:
            yield
        finally:
            self._holding = outer
            self._release()

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Context in which `model` itself runs with the default mixture merged (base weights after)."""
        with self.holding():
            z = self.z()
            self.use(None if z is None else "default", z)
            yield

    def run(self, n: int, call: Call, alpha: Tensor | None = None, mixed: bool = False,
            z: dict[str, Tensor] | None = None) -> list:
        """Results of `call` for prompts 0..n-1 in input order, each run with its row of α.

        Grouped (default): prompts with identical rows run together with that mixture merged.
        `mixed`: all prompts in one call, each batch factored with one mixture per row.
        `z`: run every prompt with these z per target merged instead (a classification expert).
        """
        if n == 0:
            return []
        try:
            if z is not None:
                self.use(("z", id(z)), z)
                return call(list(range(n)), None)
            rows = self.alpha_rows(n, alpha)
            if mixed and self.experts:
                if not getattr(self.engine, "supports_factored", False):
                    raise ConfigError(f"mixed batches need an engine with factored weights; "
                                      f"{type(self.engine).__name__} runs grouped only")
                self.use(None, None)
                return call(list(range(n)), lambda idx: mix_batch(self.zs, rows[idx]))
            return self._grouped(rows, call)
        finally:
            self._release()

    def _grouped(self, rows: Tensor, call: Call) -> list:
        groups = group_rows(rows)
        if self._current is not None and self._current in groups:  # the mixture merged now goes first
            groups = {self._current: groups.pop(self._current), **groups}
        out: list[Any] = [None] * rows.shape[0]
        for key, idx in groups.items():
            row = rows[idx[0]]
            z = self.z(row)
            self.use(None if z is None else key, z)
            for i, result in zip(idx, call(idx, None), strict=True):
                out[i] = result
        return out

    def score_letters(self, prompts: list[str], letters: list[tuple[str, ...]], alpha: Tensor | None = None,
                      mixed: bool = False, batch_size: int = 8, progress: eng.Progress | None = None,
                      z: dict[str, Tensor] | None = None) -> tuple[list[str], list[Tensor]]:
        """engine.score_letters with a mixture per prompt: greedy next tokens and letter log-probabilities."""
        def call(idx: list[int], z_rows: eng.RowZ | None) -> list:
            g, lp = self.engine.score_letters([prompts[i] for i in idx], [letters[i] for i in idx], batch_size,
                                              progress, z_rows)
            return list(zip(g, lp))

        pairs = self.run(len(prompts), call, alpha, mixed, z)
        return [g for g, _ in pairs], [lp for _, lp in pairs]

    def loglikelihood(self, contexts: list[str], continuations: list[str], alpha: Tensor | None = None,
                      mixed: bool = False, batch_size: int = 8, progress: eng.Progress | None = None,
                      ) -> list[tuple[float, int]]:
        """engine.loglikelihood with a mixture per pair."""
        return self.run(len(contexts), lambda idx, z_rows: self.engine.loglikelihood(
            [contexts[i] for i in idx], [continuations[i] for i in idx], batch_size, progress, z_rows), alpha, mixed)

    def generate(self, prompts: list[str], max_new_tokens: int = 128, alpha: Tensor | None = None,
                 mixed: bool = False, chat: bool | None = None, batch_size: int = 8, **kwargs: Any) -> list[str]:
        """Completions with a mixture per prompt, each prompt first wrapped in the chat template: `chat` True
        (an error for a model without one), None (default) if the tokenizer has one, False never."""
        texts = chat_format(prompts, self.tokenizer, chat)
        return self.run(len(texts), lambda idx, z_rows: self.engine.generate(
            [texts[i] for i in idx], max_new_tokens, batch_size, z_rows=z_rows, **kwargs), alpha, mixed)


def load_adapted(
    model: str, experts: Sequence[str | Path | Expert] = (), alpha: Sequence[float] | None = None,
    device: str = "auto", dtype: str = "float32", trust_remote_code: bool = False,
) -> AdaptedModel:
    """Load a base model and the expert folders; checks that each expert fits the base weights."""
    loaded = load_experts(experts)
    if alpha is not None:
        fixed_alpha(alpha, len(loaded))  # fail before loading the model
    check_together(loaded)  # experts used together must share base weights and targets
    m, tok = load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    svf = attach(m, loaded) if loaded else None
    return AdaptedModel(m, tok, svf, loaded, None if alpha is None else torch.tensor(list(alpha), dtype=torch.float32))
