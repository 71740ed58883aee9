"""Both passes in one call, for the Python API and `t2 generate`: pass 1 routes each prompt with a
strategy, pass 2 answers every prompt with its own mixture in one batched call.

    am = load_adapted("smollm2-135m-instruct", experts=["runs/math/best", "runs/code/best"])
    for a in TwoPass(am, "prompt").generate(["What is 12 * 7?", "Reverse a list in Python."]):
        print(a.expert, a.text)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .registry import Request, Strategy, StrategyConfig, build_strategy, decisions


@dataclass
class Answer:
    """One prompt's answer and how it was adapted."""

    text: str  # the completion
    expert: str  # routing decision: an expert's label, "base" or "mixture"
    alpha: list[Any]  # the prompt's row of α (per expert, or per expert per target)


@dataclass
class Timing:
    """Seconds spent in each pass by the last call."""

    pass1: float = 0.0
    pass2: float = 0.0


class TwoPass:
    """An adapted model plus a strategy; `mixed` runs pass 2 factored in mixed batches instead of grouped."""

    def __init__(self, am: Any, strategy: Strategy | StrategyConfig | str = "prompt", mixed: bool = False) -> None:
        self.am = am
        self.strategy = build_strategy(am, strategy)
        self.mixed = mixed
        self.timing = Timing()

    def route(self, prompts: list[str]) -> list[str]:
        """Pass 1 only: the routing decision per prompt."""
        return decisions(self.strategy.mix([Request(p) for p in prompts]), self.am.labels)

    def generate(self, prompts: list[str], max_new_tokens: int = 128, chat: bool = True, batch_size: int = 8,
                 **kwargs: Any) -> list[Answer]:
        """Route every prompt (pass 1), then answer all of them with their mixtures (pass 2)."""
        t0 = time.perf_counter()
        alpha = self.strategy.mix([Request(p) for p in prompts])  # (n, K) or (n, K, n_targets)
        t1 = time.perf_counter()
        texts = self.am.generate(prompts, max_new_tokens, alpha=alpha, mixed=self.mixed, chat=chat,
                                 batch_size=batch_size, **kwargs)
        self.timing = Timing(t1 - t0, time.perf_counter() - t1)
        return [Answer(t, d, a.tolist()) for t, d, a in zip(texts, decisions(alpha, self.am.labels), alpha)]
