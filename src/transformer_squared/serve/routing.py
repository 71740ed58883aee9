"""Pass 1 for the server: the one place where a request's text becomes a mixture α.

This is a thin adapter over `adapt.build_strategy(am, cfg).mix(requests)` and `adapt.decisions`,
kept in one class so that the shared two-pass pipeline (`adapt.pipeline.Pipeline.route`) can replace it.
"""

from __future__ import annotations

import time
from typing import Any

from torch import Tensor

from ..adapt import Request, StrategyConfig, build_strategy, decisions
from .config import ServeConfig


def offered(cfg: ServeConfig) -> list[str]:
    """Strategies the server offers as `t2:<name>`: its own, prompt and uniform (they need nothing more),
    cls with a classification expert, fewshot with a saved α. The first one is model `t2`."""
    if not cfg.experts:
        return []
    names = [cfg.pass1, "prompt", "uniform"] + (["cls"] if cfg.cls_expert else []) + (["fewshot"] if cfg.alpha_from else [])
    return list(dict.fromkeys(names))


class Router:
    """Builds the offered strategies once; `route` runs one of them on a batch of request texts."""

    def __init__(self, am: Any, cfg: ServeConfig) -> None:
        self.am = am
        self.strategies = {name: build_strategy(am, StrategyConfig(name=name, cls_expert=cfg.cls_expert,
                                                                   alpha_from=cfg.alpha_from))
                           for name in offered(cfg)}
        self.default = next(iter(self.strategies), None)

    def route(self, name: str, texts: list[str]) -> tuple[Tensor, list[str], float]:
        """α (n, K) or (n, K, n_targets), the decision per text, and the seconds pass 1 took."""
        t0 = time.perf_counter()
        alpha = self.strategies[name].mix([Request(t) for t in texts]).float()
        return alpha, decisions(alpha, self.am.labels), time.perf_counter() - t0

    def fixed(self, alpha: Tensor) -> tuple[Tensor, list[str]]:
        """A request's own α (n, K) and its decisions."""
        return alpha, decisions(alpha, self.am.labels)


def alpha_record(row: Tensor, labels: list[str]) -> dict[str, Any]:
    """α of one request by expert label: a weight, or a list of weights per target."""
    return {label: (row[k].item() if row.dim() == 1 else row[k].tolist()) for k, label in enumerate(labels)}
