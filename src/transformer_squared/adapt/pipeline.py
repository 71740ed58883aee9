"""The two passes of Transformer² (paper §3.2) in one place: fit the strategy once, pass 1 (requests →
α per request), pass 2 (answer each prompt with its mixture). `t2 eval`, `t2 generate`, the lm-eval
backend, the Python API and the server all run through `Pipeline`; nothing else calls a strategy's
`fit` or `mix`.

    am = load_adapted("smollm2-135m-instruct", experts=["runs/math/best", "runs/code/best"])
    for a in Pipeline(am, "prompt").generate(["What is 12 * 7?", "Reverse a list in Python."]):
        print(a.expert, a.text)

`AdaptedModel` keeps merged weights as state: one pipeline is used from one thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from ..experts.adapted import group_rows
from ..tasks.base import Example, Task
from .registry import Request, Strategy, StrategyConfig, build_strategy, decisions


@dataclass
class Routed:
    """Pass 1 on a batch of requests."""

    alpha: Tensor  # (n, K) or (n, K, n_targets), float32
    decisions: list[str]  # per request: an expert's label, "base" or "mixture"
    seconds: float  # time pass 1 took for the batch


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


class Pipeline:
    """An adapted model and (optionally) a strategy; `mixed` runs pass 2 factored in mixed batches
    (one mixture per row) instead of grouped by mixture. Without a strategy, every prompt gets the
    adapted model's fixed mixture (equal weights, or its `alpha`; the base weights without experts)."""

    def __init__(self, am: Any, strategy: StrategyConfig | str | Strategy | None = None, mixed: bool = False) -> None:
        self.am = am
        self.config = StrategyConfig(name=strategy) if isinstance(strategy, str) else (
            strategy if isinstance(strategy, StrategyConfig) else None)
        self.strategy = None if strategy is None else build_strategy(am, strategy)
        self.mixed = mixed
        self.timing = Timing()
        self.fit_seconds = 0.0
        self._used: list[str] | None = None  # ids the fit used; None until fitted

    @property
    def labels(self) -> list[str]:
        """The experts' labels, in α's column order."""
        return self.am.labels

    @property
    def name(self) -> str | None:
        return None if self.strategy is None else self.strategy.name

    def record(self) -> dict[str, Any] | None:
        """What results record about the strategy (None without one)."""
        return None if self.strategy is None else self.strategy.record()

    # ---- pass 1 --------------------------------------------------------------------------------
    def fit(self, task: Task | None = None, examples: list[Example] | None = None) -> list[str]:
        """Fit the strategy once (later calls return the first result): on `examples` of `task` in an
        evaluation, else from the strategy's own settings. Returns the ids of the examples it used."""
        if self.strategy is None:
            return []
        if self._used is None:
            t0 = time.perf_counter()
            self._used = list(self.strategy.fit(task, list(examples or [])))
            self.fit_seconds = time.perf_counter() - t0
        return self._used

    def route(self, requests: list[Request]) -> Routed:
        """Pass 1: α per request and the routing decisions (fits the strategy first if not yet fitted)."""
        self.fit()
        t0 = time.perf_counter()
        if self.strategy is None:
            alpha = self.am.alpha_rows(len(requests))
        else:
            alpha = self.strategy.mix(requests) if requests else torch.zeros(0, len(self.labels))
        return Routed(alpha, decisions(alpha, self.labels), time.perf_counter() - t0)

    def route_all(self, requests: dict[str, Request], saved: dict[str, dict[str, Any]], step: int,
                  after_chunk: Callable[[], None] = lambda: None) -> Tensor:
        """Pass 1 for many requests by id, `step` at a time: α in the order of `requests`. Each decision
        (with its per-expert α and its share of the chunk's seconds) is stored in `saved[id]`, and
        `after_chunk` is called after each chunk (evaluation saves progress). Saved decisions with a
        per-expert α are reused; per-target α are not stored per request, so those are routed again."""
        rows = {i: torch.tensor(saved[i]["alpha"]) for i in requests if saved.get(i, {}).get("alpha") is not None}
        todo = [i for i in requests if i not in rows]
        for start in range(0, len(todo), step):
            ids = todo[start : start + step]
            routed = self.route([requests[i] for i in ids])
            for i, a, d in zip(ids, routed.alpha, routed.decisions):
                rows[i] = a
                saved[i] = {"decision": d, "alpha": a.tolist() if a.dim() == 1 else None,
                            "pass1_s": routed.seconds / len(ids)}
            after_chunk()
        return torch.stack([rows[i] for i in requests]) if requests else torch.zeros(0, len(self.labels))

    def mixtures(self, prompts: list[str], alpha: Tensor | None = None,
                 requests: list[Request] | None = None) -> Routed:
        """α for `prompts`: the given rows (a request's own mixture: no pass 1), else pass 1 on `requests`
        (default: each prompt as a request)."""
        if alpha is not None:
            rows = self.am.alpha_rows(len(prompts), alpha)
            return Routed(rows, decisions(rows, self.labels), 0.0)
        return self.route(requests if requests is not None else [Request(p) for p in prompts])

    # ---- pass 2 --------------------------------------------------------------------------------
    def generate(self, prompts: list[str], max_new_tokens: int = 128, chat: bool | None = None,
                 alpha: Tensor | None = None, requests: list[Request] | None = None, batch_size: int = 8,
                 **kwargs: Any) -> list[Answer]:
        """Route every prompt (pass 1, unless `alpha` is given), then answer all of them with their mixtures
        (`chat`: tasks/base.uses_chat; None = the chat template if the tokenizer has one)."""
        routed = self.mixtures(prompts, alpha, requests)
        t0 = time.perf_counter()
        texts = self.am.generate(prompts, max_new_tokens, alpha=routed.alpha, mixed=self.mixed, chat=chat,
                                 batch_size=batch_size, **kwargs)
        self.timing = Timing(routed.seconds, time.perf_counter() - t0)
        return [Answer(t, d, a.tolist()) for t, d, a in zip(texts, routed.decisions, routed.alpha)]

    def score_letters(self, prompts: list[str], letters: list[tuple[str, ...]], alpha: Tensor | None = None,
                      requests: list[Request] | None = None, **kwargs: Any) -> tuple[list[str], list[Tensor]]:
        """Greedy next tokens and letter log-probabilities per prompt, each under its mixture."""
        routed = self.mixtures(prompts, alpha, requests)
        t0 = time.perf_counter()
        out = self.am.score_letters(prompts, letters, routed.alpha, self.mixed, **kwargs)
        self.timing = Timing(routed.seconds, time.perf_counter() - t0)
        return out

    def loglikelihood(self, prompts: list[str], continuations: list[str], alpha: Tensor | None = None,
                      requests: list[Request] | None = None, **kwargs: Any) -> list[tuple[float, int]]:
        """(log p(continuation | prompt), whether it is the greedy continuation) per pair, under its mixture."""
        routed = self.mixtures(prompts, alpha, requests)
        t0 = time.perf_counter()
        out = self.am.loglikelihood(prompts, continuations, routed.alpha, self.mixed, **kwargs)
        self.timing = Timing(routed.seconds, time.perf_counter() - t0)
        return out

    def run(self, requests: list[Request], call: Callable[[list[int]], list[Any]], alpha: Tensor | None = None) -> list[Any]:
        """Results of `call(indices)` in input order, each index run with its request's mixture merged
        (grouped by mixture): for engines outside ours, such as lm-eval's HFLM."""
        routed = self.mixtures([r.text for r in requests], alpha, requests)
        return self.am.run(len(requests), lambda idx, _: call(idx), routed.alpha)


def pass2_order(lengths: list[int], alpha: Tensor | None, mixed: bool) -> list[int]:
    """Pass-2 order of prompts: longest first (an out-of-memory error shows at once); grouped runs also
    keep each mixture's prompts together, so each mixture is merged once for the whole run."""
    by_length = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if alpha is None or mixed:
        return by_length
    return [i for idx in group_rows(alpha, by_length).values() for i in idx]
