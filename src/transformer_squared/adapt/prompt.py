"""`prompt`: the model classifies each request among the experts' labels and descriptions plus
"other" (paper §3.2, prompt-based adaptation). The choice is the argmax of the next-token
log-probabilities over the option letters after the classification prompt (`tasks.route`), read
in one forward pass per batch, never parsed from generated text; "other" runs the base weights.
Requests are cut to `max_request_tokens` first, so pass 1 stays one short forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ..tasks.base import Example, Task
from ..tasks.io import LETTERS
from ..tasks.route import MAX_REQUEST_TOKENS, expert_options, routing_prompts
from .registry import Request, StrategyConfig, StrategySpec, one_hot, register_strategy


@dataclass
class PromptSettings:
    """Settings of `prompt`."""

    chat: bool | None = None  # classification prompt in the chat template (None: if the tokenizer has one)
    max_request_tokens: int = MAX_REQUEST_TOKENS  # requests are cut to this many tokens first

    def problems(self) -> list[str]:
        return [f"max_request_tokens {self.max_request_tokens}: must be at least 1"] if self.max_request_tokens < 1 else []


class Classifier:
    """Routes by the letter the model scores highest, under the base weights or a classification expert's z."""

    def __init__(self, am: Any, cfg: StrategyConfig, name: str = "prompt", z: dict[str, Tensor] | None = None,
                 chat: bool | None = None) -> None:
        self.am, self.cfg, self.name, self.z = am, cfg, name, z
        self.settings = cfg.section(name)  # chat (prompt only) and max_request_tokens
        self.options = expert_options(am.labels, [e.meta.description for e in am.experts])
        if len(self.options) > len(LETTERS):
            raise ConfigError(f"routing among {len(am.experts)} experts: at most {len(LETTERS) - 1}")
        self.letters = tuple(LETTERS[: len(self.options)])
        has_template = bool(getattr(am.tokenizer, "chat_template", None))
        own = getattr(self.settings, "chat", None)
        self.chat = (own if own is not None else has_template) if chat is None else chat
        self.source: str | None = None  # folder of the classification expert (cls)

    def fit(self, task: Task | None, examples: list[Example]) -> list[str]:
        return []

    def prompts(self, requests: list[Request]) -> list[str]:
        """The classification prompts, as the model sees them (requests cut to `max_request_tokens`)."""
        return routing_prompts([r.text for r in requests], self.options, self.am.tokenizer, self.chat,
                               self.settings.max_request_tokens)

    def scores(self, requests: list[Request]) -> Tensor:
        """Log-probabilities over the options (experts, then "other"), (n, K + 1)."""
        if not requests:
            return torch.empty(0, len(self.options))
        n = len(requests)
        base = torch.zeros(n, len(self.am.experts))  # (n, K): pass 1 runs the base weights (or z)
        _, logp = self.am.score_letters(self.prompts(requests), [self.letters] * n, alpha=base,
                                        batch_size=self.cfg.batch_size, z=self.z)
        return torch.stack(logp)  # (n, K + 1)

    def mix(self, requests: list[Request]) -> Tensor:
        choice = self.scores(requests).argmax(-1).tolist() if requests else []
        return one_hot(choice, len(self.am.experts))  # (n, K); "other" → zeros

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "options": self.options, "chat": self.chat,
                "max_request_tokens": self.settings.max_request_tokens, "cls_expert": self.source}


register_strategy(StrategySpec("prompt", Classifier, PromptSettings,
                               help="the model itself names the expert for each request"))
