"""The `Strategy` protocol of pass 1 (paper §3.2) and the registry of strategies by name.

A strategy maps a batch of requests to mixture weights α over the adapted model's K experts:
a tensor (n_requests, K), or (n_requests, K, n_targets) for one weight per expert per target.
A row of zeros means "no expert" (the base weights); a one-hot row selects one expert.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Protocol

import torch
from torch import Tensor

from ..errors import ConfigError
from ..evaluation.metrics import MIXTURE  # decision name of a row that is neither zero nor one-hot (metrics counts it)
from ..registry import Registry
from ..tasks.base import Example, Task
from ..tasks.route import MAX_REQUEST_TOKENS, request_text

BASE = "base"  # decision name of a row of zeros


@dataclass(frozen=True)
class Request:
    """One prompt as pass 1 sees it."""

    text: str  # the user's request (a task question, with its options for multiple choice)
    category: str = ""  # true category where known (oracle)
    subject: str = ""  # true subject where known (oracle)
    task: str = ""  # task name where known (oracle)


def request_of(example: Example, task: str = "") -> Request:
    """The request for a task question (text with options, category, subject, task name)."""
    return Request(request_text(example), example.category, example.subject, task)


@dataclass
class StrategyConfig:
    """How pass 1 chooses mixtures; YAML keys and flags map onto these fields."""

    name: str = "uniform"  # registry name: prompt, cls, fewshot, oracle, uniform
    chat: bool | None = None  # prompt: classification prompt in the chat template (None: if the tokenizer has one)
    max_request_tokens: int = MAX_REQUEST_TOKENS  # prompt/cls: requests are cut to this many tokens first
    batch_size: int = 8  # prompt/cls/fewshot: prompts per forward pass
    calibrate: bool = True  # prompt/cls: subtract each choice's log-probability under an empty request (one pass per order)
    cyclic: bool = False  # prompt/cls: average the scores over all K + 1 cyclic orders of the experts (K + 1 × pass 1)
    position_bias: bool = False  # prompt/cls: also route in every cyclic order and record how often the decision follows the expert (K + 1 × pass 1)
    cls_expert: str | None = None  # cls: folder of the classification expert (`t2 train --task route`)
    shots: int = 10  # fewshot: k labelled examples of the target task (excluded from evaluation)
    population: int = 32  # fewshot: CEM population per generation
    elite: float = 0.2  # fewshot: share of the population kept as elite
    generations: int = 50  # fewshot: most CEM generations
    tol: float = 1e-3  # fewshot: stop when every coordinate's elite standard deviation is below this
    alpha_per: Literal["expert", "target"] = "expert"  # fewshot: one α per expert, or per expert per target
    alpha_from: str | None = None  # fewshot: reuse the α saved by an earlier run (JSON) instead of searching
    mixed: bool = False  # fewshot: score the population factored in mixed batches (faster; rounds unlike the merged pass 2) instead of merged per candidate
    task_chat: bool = False  # fewshot: task prompts in the chat template (as the evaluation's --chat)
    max_new_tokens: int = 128  # fewshot on generative tasks: generation budget per fitness answer
    seed: int = 0  # fewshot: seeds the choice of shots and the search

    def __post_init__(self) -> None:
        STRATEGIES.get(self.name)  # unknown name: one line listing the known ones
        problems = [f"{k} {getattr(self, k)}: must be at least 1" for k in
                    ("max_request_tokens", "batch_size", "shots", "population", "generations", "max_new_tokens")
                    if getattr(self, k) < 1]
        if not 0 < self.elite < 1:
            problems.append(f"elite {self.elite}: a share in (0, 1)")
        if self.alpha_per not in ("expert", "target"):
            problems.append(f"alpha_per '{self.alpha_per}': choose expert or target")
        if self.name == "cls" and not self.cls_expert:
            problems.append("strategy cls needs --cls-expert DIR (train one with `t2 train --task route --experts ...`)")
        if problems:
            raise ConfigError("; ".join(problems))


class Strategy(Protocol):
    """Pass 1: requests → α. Built by a registered builder from the adapted model and a config."""

    name: str

    def fit(self, task: Task, examples: list[Example]) -> list[str]:
        """Prepare once for a target task from its labelled examples; returns the ids it used
        (evaluation leaves them out). Strategies that need no data return []."""
        ...

    def mix(self, requests: list[Request]) -> Tensor:
        """α per request: (n, K) or (n, K, n_targets), float32."""
        ...

    def record(self) -> dict[str, Any]:
        """What results files record about this strategy (name, settings, fitted α ...)."""
        ...


Builder = Callable[[Any, StrategyConfig], Strategy]  # (AdaptedModel, config) → strategy
STRATEGIES: Registry[Builder] = Registry("strategy")


def build_strategy(am: Any, cfg: StrategyConfig | str | Strategy) -> Strategy:
    """The strategy `cfg.name` for the adapted model `am` (an unknown name lists the known ones);
    a strategy object passes through."""
    if hasattr(cfg, "mix"):
        return cfg
    cfg = StrategyConfig(name=cfg) if isinstance(cfg, str) else cfg
    if not am.experts:
        raise ConfigError(f"strategy '{cfg.name}' chooses among experts: give at least one (--experts)")
    return STRATEGIES.get(cfg.name)(am, cfg)


def one_hot(choice: list[int], n_experts: int) -> Tensor:
    """α rows selecting expert `choice[i]`; a choice outside 0..K-1 ("other") is a row of zeros (base)."""
    alpha = torch.zeros(len(choice), n_experts)  # (n, K)
    for i, k in enumerate(choice):
        if 0 <= k < n_experts:
            alpha[i, k] = 1.0
    return alpha


def decisions(alpha: Tensor, labels: list[str]) -> list[str]:
    """The routing decision per row: the expert's label for a one-hot row, "base" for zeros, else "mixture"."""
    flat = alpha.reshape(alpha.shape[0], alpha.shape[1], -1)  # (n, K, 1 or n_targets)
    out = []
    for row in flat:
        nonzero = (row != 0).any(-1).nonzero().flatten().tolist()
        if not nonzero:
            out.append(BASE)
        elif len(nonzero) == 1 and bool((row[nonzero[0]] == 1).all()):
            out.append(labels[nonzero[0]])
        else:
            out.append(MIXTURE)
    return out
