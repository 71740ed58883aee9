"""A base model with zero or more experts applied: the Python face of `t2 generate`.

    am = load_adapted("smollm2-135m-instruct", experts=["runs/math/best"])
    am.generate(["What is 12 * 7?"])
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from . import engine
from .errors import ConfigError
from .expert import Expert, attach
from .models import load_model
from .svf import SVFModel, mix


@dataclass
class AdaptedModel:
    """A model, its tokenizer, and the experts (with mixture weights α) applied when it runs."""

    model: Any
    tokenizer: Any
    svf: SVFModel | None = None  # None when no expert is used
    experts: list[Expert] = field(default_factory=list)
    alpha: Tensor | None = None  # (K,) or (K, n_targets); None = equal weights

    def z(self) -> dict[str, Tensor] | None:
        """The mixed z' per target, or None for the base model."""
        if not self.experts:
            return None
        K = len(self.experts)
        alpha = self.alpha if self.alpha is not None else torch.full((K,), 1.0 / K)
        return mix([e.z() for e in self.experts], alpha)

    def applied(self):
        """Context in which the model runs with the adapted weights (merged)."""
        z = self.z()
        return nullcontext() if z is None else self.svf.merged(z)

    def generate(self, prompts: list[str], max_new_tokens: int = 128, chat: bool = True, **kwargs: Any) -> list[str]:
        texts = engine.chat_prompts(self.tokenizer, prompts) if chat else prompts
        with self.applied():
            return engine.generate(self.model, self.tokenizer, texts, max_new_tokens=max_new_tokens, **kwargs)


def load_adapted(
    model: str, experts: Sequence[str | Path] = (), alpha: Sequence[float] | None = None, device: str = "auto",
    dtype: str = "float32", trust_remote_code: bool = False,
) -> AdaptedModel:
    """Load a base model and the expert folders; checks that each expert fits the base weights."""
    m, tok = load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    loaded = [Expert.load(e) for e in experts]
    if alpha is not None and len(alpha) != len(loaded):
        raise ConfigError(f"--alpha: {len(alpha)} value(s) for {len(loaded)} expert(s)")
    svf = attach(m, loaded) if loaded else None
    a = torch.tensor(list(alpha), dtype=torch.float32) if alpha is not None else None
    return AdaptedModel(m, tok, svf, loaded, a)
