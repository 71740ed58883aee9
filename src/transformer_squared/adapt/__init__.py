"""Pass 1 of Transformer² (paper §3.2): strategies that map a batch of requests to mixture weights
over the given experts, one module per strategy behind the `Strategy` protocol (registry.py).
Importing this package registers them all in `STRATEGIES`.
"""

from __future__ import annotations

from . import cls, fewshot, oracle, prompt, uniform  # noqa: F401  (they register)
from .registry import (BASE, MIXTURE, STRATEGIES, Request, Strategy, StrategyConfig, build_strategy, decisions,
                       one_hot, request_of)
from .two_pass import Answer, TwoPass

__all__ = ["BASE", "MIXTURE", "STRATEGIES", "Request", "Strategy", "StrategyConfig", "build_strategy", "decisions",
           "one_hot", "request_of", "Answer", "TwoPass"]
