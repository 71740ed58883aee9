"""`uniform`: equal weight 1/K on every expert for every request (the untuned mixture baseline)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..tasks.base import Example, Task
from .registry import Request, StrategyConfig, StrategySpec, register_strategy


class Uniform:
    """α = 1/K for each of the K experts."""

    name = "uniform"

    def __init__(self, am: Any, cfg: StrategyConfig) -> None:
        self.n_experts = len(am.experts)

    def fit(self, task: Task | None, examples: list[Example]) -> list[str]:
        return []

    def mix(self, requests: list[Request]) -> Tensor:
        return torch.full((len(requests), self.n_experts), 1.0 / self.n_experts)  # (n, K)

    def record(self) -> dict[str, Any]:
        return {"name": self.name}


register_strategy(StrategySpec("uniform", Uniform, help="equal weight on every expert"))
