"""Pass 1 for the server: the one place where a request's text becomes a mixture α.

Each offered strategy is one `adapt.Pipeline` (the two-pass pipeline shared with `t2 eval`, `t2 generate`
and the lm-eval backend); pass 1 is its `route`, pass 2 the server's scheduler.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..adapt import STRATEGIES, Pipeline, Request, decisions
from .config import ServeConfig


def offered(cfg: ServeConfig) -> list[str]:
    """Strategies the server offers as `t2:<name>`: its own (model `t2`, listed first), then every strategy
    that can run with what the config gives (a classification expert, a saved α or a task to fit on); never
    one that needs the requests' true labels (oracle)."""
    if not cfg.experts:
        return []
    return list(dict.fromkeys([cfg.pass1, *(n for n in STRATEGIES.in_order() if cfg.ready(n))]))


class Router:
    """Builds the offered strategies once; `route` runs one of them on a batch of request texts."""

    def __init__(self, am: Any, cfg: ServeConfig) -> None:
        self.am = am
        self.pipelines = {name: Pipeline(am, cfg.strategy_config(name)) for name in offered(cfg)}
        for pipe in self.pipelines.values():
            pipe.fit()  # at startup, not on a request: fewshot searches α on its `fit_task` (or loads `alpha_from`)
        self.default = next(iter(self.pipelines), None)

    def route(self, name: str, texts: list[str]) -> tuple[Tensor, list[str], float]:
        """α (n, K) or (n, K, n_targets), the decision per text, and the seconds pass 1 took."""
        routed = self.pipelines[name].route([Request(t) for t in texts])
        return routed.alpha.float(), routed.decisions, routed.seconds

    def fixed(self, alpha: Tensor) -> tuple[Tensor, list[str]]:
        """A request's own α (n, K) and its decisions."""
        return alpha, decisions(alpha, self.am.labels)


def alpha_record(row: Tensor, labels: list[str]) -> dict[str, Any]:
    """α of one request by expert label: a weight, or a list of weights per target."""
    return {label: (row[k].item() if row.dim() == 1 else row[k].tolist()) for k, label in enumerate(labels)}
