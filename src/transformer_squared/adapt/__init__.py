"""Pass 1 of Transformer² (paper §3.2): strategies that map a batch of requests to mixture weights
over the given experts, one module per strategy (its settings, needs and builder in one
`StrategySpec`), and the one two-pass `Pipeline`. Importing this package registers the built-in
strategies in `STRATEGIES`.
"""

from __future__ import annotations

from . import prompt, cls, fewshot, oracle, uniform  # noqa: F401  (they register, in this order)
from .pipeline import Answer, Pipeline, Routed, pass2_order
from .registry import (BASE, CLASSIFIER, MIXTURE, NOTHING, SHOTS, STRATEGIES, Request, Strategy, StrategyConfig,
                       StrategySpec, build_strategy, decisions, one_hot, register_strategy, request_of, strategy_runs)

__all__ = ["BASE", "CLASSIFIER", "MIXTURE", "NOTHING", "SHOTS", "STRATEGIES", "Request", "Strategy", "StrategyConfig",
           "StrategySpec", "build_strategy", "decisions", "one_hot", "register_strategy", "request_of", "strategy_runs",
           "Answer", "Pipeline", "Routed", "pass2_order"]
