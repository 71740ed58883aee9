"""`oracle`: routes each request by its true category, subject or task to the expert with that label
(the routing upper bound); a request that matches no expert runs the base weights."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..tasks.base import Example, Task
from .registry import LABELS, Request, StrategyConfig, StrategySpec, one_hot, register_strategy


def _norm(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").split())


class Oracle:
    """One-hot on the expert whose label equals the request's category, else its subject, else its task."""

    name = "oracle"

    def __init__(self, am: Any, cfg: StrategyConfig) -> None:
        self.labels = am.labels
        self.index = {}
        for k, label in enumerate(self.labels):
            self.index.setdefault(_norm(label), k)  # two experts with one label: the first wins

    def fit(self, task: Task | None, examples: list[Example]) -> list[str]:
        return []

    def choose(self, r: Request) -> int:
        """The expert index for a request, -1 when no label matches."""
        for name in (r.category, r.subject, r.task):
            if name and _norm(name) in self.index:
                return self.index[_norm(name)]
        return -1

    def mix(self, requests: list[Request]) -> Tensor:
        return one_hot([self.choose(r) for r in requests], len(self.labels))  # (n, K)

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "matches": "category, then subject, then task name, against expert labels"}


register_strategy(StrategySpec("oracle", Oracle, needs=LABELS, help="each request to the expert labelled with its category, subject or task (upper bound)"))
