"""Both passes in one call, for the Python API and `t2 generate`: pass 1 routes each prompt with a
strategy, pass 2 answers every prompt with its own mixture in one batched call. Also the pieces
evaluation uses: pass 1 in chunks with saved decisions (`route_all`), the pass-2 order.

    am = load_adapted("smollm2-135m-instruct", experts=["runs/math/best", "runs/code/best"])
    for a in TwoPass(am, "prompt").generate(["What is 12 * 7?", "Reverse a list in Python."]):
        print(a.expert, a.text)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from ..experts.adapted import group_rows
from .registry import Request, Strategy, StrategyConfig, build_strategy, decisions


def route(strategy: Strategy, requests: list[Request], labels: list[str]) -> tuple[Tensor, list[str], float]:
    """Pass 1 on a batch: α (n, K) or (n, K, n_targets), the decision per request, and the seconds taken."""
    t0 = time.perf_counter()
    alpha = strategy.mix(requests)
    return alpha, decisions(alpha, labels), time.perf_counter() - t0


def route_all(strategy: Strategy, labels: list[str], requests: dict[str, Request], saved: dict[str, dict[str, Any]],
              step: int, after_chunk: Callable[[], None] = lambda: None) -> Tensor:
    """Pass 1 for many requests by id, `step` at a time: α in the order of `requests`. Each decision
    (with its per-expert α and its share of the chunk's seconds) is stored in `saved[id]`, and
    `after_chunk` is called after each chunk (to save progress). Saved decisions with a per-expert α
    are reused; per-target α are not stored per request, so those requests are routed again."""
    rows = {i: torch.tensor(saved[i]["alpha"]) for i in requests if saved.get(i, {}).get("alpha") is not None}
    todo = [i for i in requests if i not in rows]
    for start in range(0, len(todo), step):
        ids = todo[start : start + step]
        alpha, decided, seconds = route(strategy, [requests[i] for i in ids], labels)
        for i, a, d in zip(ids, alpha, decided):
            rows[i] = a
            saved[i] = {"decision": d, "alpha": a.tolist() if a.dim() == 1 else None, "pass1_s": seconds / len(ids)}
        after_chunk()
    return torch.stack([rows[i] for i in requests]) if requests else torch.zeros(0, len(labels))


def pass2_order(lengths: list[int], alpha: Tensor | None, mixed: bool) -> list[int]:
    """Pass-2 order of prompts: longest first (an out-of-memory error shows at once); grouped runs also
    keep each mixture's prompts together, so each mixture is merged once for the whole run."""
    by_length = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if alpha is None or mixed:
        return by_length
    return [i for idx in group_rows(alpha, by_length).values() for i in idx]


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

    def generate(self, prompts: list[str], max_new_tokens: int = 128, chat: bool | None = None, batch_size: int = 8,
                 **kwargs: Any) -> list[Answer]:
        """Route every prompt (pass 1), then answer all of them with their mixtures (pass 2)."""
        alpha, decided, pass1 = route(self.strategy, [Request(p) for p in prompts], self.am.labels)
        t1 = time.perf_counter()
        texts = self.am.generate(prompts, max_new_tokens, alpha=alpha, mixed=self.mixed, chat=chat,
                                 batch_size=batch_size, **kwargs)
        self.timing = Timing(pass1, time.perf_counter() - t1)
        return [Answer(t, d, a.tolist()) for t, d, a in zip(texts, decided, alpha)]
