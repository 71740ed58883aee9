"""`prompt`: the model classifies each request among the experts' labels and descriptions plus
"other" (paper §3.2, prompt-based adaptation). The choice is the argmax of the next-token
log-probabilities over the option letters after the classification prompt (`tasks.route`), read
in one forward pass per batch, never parsed from generated text; "other" runs the base weights.
Requests are cut to `max_request_tokens` first, so pass 1 stays one short forward pass.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ..tasks.base import Example, Task
from ..tasks.io import LETTERS
from ..tasks.route import expert_options, routing_prompts
from .registry import STRATEGIES, Request, StrategyConfig, one_hot


class Classifier:
    """Routes by the letter the model scores highest, under the base weights or a classification expert's z."""

    def __init__(self, am: Any, cfg: StrategyConfig, name: str = "prompt", z: dict[str, Tensor] | None = None,
                 chat: bool | None = None) -> None:
        self.am, self.cfg, self.name, self.z = am, cfg, name, z
        self.options = expert_options(am.labels, [e.meta.description for e in am.experts])
        if len(self.options) > len(LETTERS):
            raise ConfigError(f"routing among {len(am.experts)} experts: at most {len(LETTERS) - 1}")
        self.letters = tuple(LETTERS[: len(self.options)])
        has_template = bool(getattr(am.tokenizer, "chat_template", None))
        self.chat = (cfg.chat if cfg.chat is not None else has_template) if chat is None else chat
        self.source: str | None = None  # folder of the classification expert (cls)

    def fit(self, task: Task, examples: list[Example]) -> list[str]:
        return []

    def prompts(self, requests: list[Request]) -> list[str]:
        """The classification prompts, as the model sees them (requests cut to `max_request_tokens`)."""
        return routing_prompts([r.text for r in requests], self.options, self.am.tokenizer, self.chat,
                               self.cfg.max_request_tokens)

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
                "max_request_tokens": self.cfg.max_request_tokens, "cls_expert": self.source}


STRATEGIES.register("prompt", Classifier)
