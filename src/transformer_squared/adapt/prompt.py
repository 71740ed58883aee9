"""`prompt`: the model classifies each request among the experts' labels and descriptions plus
"other" (paper §3.2, prompt-based adaptation), read from next-token log-probabilities of the choices'
numbers after the classification prompt (`tasks.route`), never parsed from generated text; "other"
runs the base weights. Requests are cut to `max_request_tokens` first.

The place of an expert in the list must not decide (small models favour the first choice):
* `calibrate` (contextual calibration, Zhao et al. 2021): each choice's log-probability minus its
  log-probability under an empty request, in the same order; a preference for a place, whatever the
  request, cancels. One extra forward pass per order, once per strategy.
* `cyclic`: the calibrated scores averaged over all K + 1 cyclic orders of the list (K + 1 passes),
  so a cyclic reordering of the experts cannot change a decision.
* `position_bias`: pass 1 also in every cyclic order; `position_bias()` says how often the decision
  stays with the same expert (follows the expert) or the same place (follows the position).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..tasks.base import Example, Task
from ..tasks.route import MAX_REQUEST_TOKENS, cyclic_order, expert_options, routing_prompts, symbols
from .registry import Request, StrategyConfig, StrategySpec, one_hot, register_strategy

CONTENT_FREE = ""  # the empty request whose scores calibrate each order


@dataclass
class RoutingSettings:
    """Settings every classifier of pass 1 shares (`prompt`, and `cls` under its expert's weights)."""

    max_request_tokens: int = MAX_REQUEST_TOKENS  # requests are cut to this many tokens first
    calibrate: bool = True  # subtract each choice's log-probability under an empty request (one pass per order)
    cyclic: bool = False  # average the scores over all K + 1 cyclic orders of the experts (K + 1 × pass 1)
    position_bias: bool = False  # also route in every cyclic order; record how often the decision follows the expert (K + 1 × pass 1)

    def problems(self) -> list[str]:
        return [f"max_request_tokens {self.max_request_tokens}: must be at least 1"] if self.max_request_tokens < 1 else []


@dataclass
class PromptSettings(RoutingSettings):
    """Settings of `prompt`."""

    chat: bool | None = None  # classification prompt in the chat template (None: if the tokenizer has one)


class Classifier:
    """Routes by the choice the model scores highest, under the base weights or a classification expert's z."""

    def __init__(self, am: Any, cfg: StrategyConfig, name: str = "prompt", z: dict[str, Tensor] | None = None,
                 chat: bool | None = None) -> None:
        self.am, self.cfg, self.name, self.z = am, cfg, name, z
        self.settings = cfg.section(name)  # chat (prompt only), max_request_tokens, calibrate, cyclic, position_bias
        self.options = expert_options(am.labels, [e.meta.description for e in am.experts])
        self.symbols = symbols(len(self.options))  # ConfigError past the last digit
        has_template = bool(getattr(am.tokenizer, "chat_template", None))
        own = getattr(self.settings, "chat", None)
        self.chat = (own if own is not None else has_template) if chat is None else chat
        self.source: str | None = None  # folder of the classification expert (cls)
        self._calibration: dict[int, Tensor] = {}  # shift → content-free log-probabilities by place, (K + 1,)
        self._bias: dict[str, Any] = {"n": 0, "same_expert": 0, "same_position": 0,
                                      "by_position": [0] * len(self.options), "seconds": 0.0}

    def fit(self, task: Task | None, examples: list[Example]) -> list[str]:
        return []

    def prompts(self, requests: list[Request], shift: int = 0) -> list[str]:
        """The classification prompts, as the model sees them, with the options in cyclic order `shift`."""
        options = [self.options[j] for j in cyclic_order(len(self.options), shift)]
        return routing_prompts([r.text for r in requests], options, self.am.tokenizer, self.chat,
                               self.settings.max_request_tokens)

    def _by_place(self, texts: list[Request], shift: int) -> Tensor:
        """Log-probabilities of the numbers 1..K+1 (places in the list), (n, K + 1)."""
        n = len(texts)
        base = torch.zeros(n, len(self.am.experts))  # (n, K): pass 1 runs the base weights (or z)
        _, logp = self.am.score_letters(self.prompts(texts, shift), [self.symbols] * n, alpha=base,
                                        batch_size=self.cfg.batch_size, z=self.z)
        return torch.stack(logp)  # (n, K + 1)

    def order_scores(self, requests: list[Request], shift: int) -> Tensor:
        """Scores per option (experts, then "other") with the list in cyclic order `shift`, calibrated if
        `calibrate`, (n, K + 1); column j is option j whatever its place."""
        by_place = self._by_place(requests, shift)  # (n, K + 1)
        if self.settings.calibrate:
            if shift not in self._calibration:
                self._calibration[shift] = self._by_place([Request(CONTENT_FREE)], shift)[0]  # (K + 1,)
            by_place = by_place - self._calibration[shift]
        order = cyclic_order(len(self.options), shift)  # place → option
        out = torch.empty_like(by_place)
        out[:, order] = by_place
        return out

    def scores(self, requests: list[Request]) -> Tensor:
        """Scores over the options (experts, then "other"), (n, K + 1): one order, or the mean over all
        cyclic orders with `cyclic`. With `position_bias`, every order runs and the decisions are counted."""
        n_opt = len(self.options)
        if not requests:
            return torch.empty(0, n_opt)
        first = self.order_scores(requests, 0)  # (n, K + 1)
        if not (self.settings.cyclic or self.settings.position_bias):
            return first
        t0 = time.perf_counter()
        per_order = torch.stack([first, *(self.order_scores(requests, r) for r in range(1, n_opt))])  # (K + 1, n, K + 1)
        if self.settings.position_bias:
            self._count(per_order.argmax(-1))
            if not self.settings.cyclic:  # the other orders only measured: their time is the measurement's
                self._bias["seconds"] += time.perf_counter() - t0
        return per_order.mean(0) if self.settings.cyclic else first

    def _count(self, choice: Tensor) -> None:
        """Add one batch of per-order decisions (option index, (K + 1 orders, n)) to the position-bias counts."""
        n_opt = len(self.options)
        place = (choice - torch.arange(n_opt)[:, None]) % n_opt  # (O, n): the place each decision held
        self._bias["n"] += choice.shape[1]
        self._bias["same_expert"] += int((choice == choice[0]).all(0).sum())
        self._bias["same_position"] += int((place == place[0]).all(0).sum())
        for p in place.flatten().tolist():
            self._bias["by_position"][p] += 1

    def position_bias(self) -> dict[str, Any] | None:
        """With `position_bias`: over the requests routed so far, in every cyclic order of the experts, the
        share whose decision named the same expert in every order (follows the expert), the same place in
        every order (follows the position), and the share of all decisions at each place of the list."""
        if not self.settings.position_bias:
            return None
        b, n_opt = self._bias, len(self.options)
        total = b["n"] * n_opt
        return {"n": b["n"], "orders": n_opt, "calibrated": self.settings.calibrate, "cyclic_average": self.settings.cyclic,
                "follows_expert": b["same_expert"] / b["n"] if b["n"] else None,
                "follows_position": b["same_position"] / b["n"] if b["n"] else None,
                "share_by_position": [c / total for c in b["by_position"]] if total else None,
                "seconds": round(b["seconds"], 3)}  # of pass 1's time, spent only on measuring (not with cyclic)

    def mix(self, requests: list[Request]) -> Tensor:
        choice = self.scores(requests).argmax(-1).tolist() if requests else []
        return one_hot(choice, len(self.am.experts))  # (n, K); "other" → zeros

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "options": self.options, "symbols": list(self.symbols), "chat": self.chat,
                "max_request_tokens": self.settings.max_request_tokens, "calibrate": self.settings.calibrate,
                "cyclic": self.settings.cyclic, "cls_expert": self.source}


register_strategy(StrategySpec("prompt", Classifier, PromptSettings,
                               help="the model itself names the expert for each request"))
