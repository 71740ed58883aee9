"""A strategy added as one file, as a contributor would: `first` always picks one expert (by default
expert 0). Importing this module registers it; nothing else in the package names it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from transformer_squared.adapt import Request, StrategyConfig, StrategySpec, one_hot, register_strategy


@dataclass
class FirstSettings:
    """Settings of `first`."""

    expert: int = 0  # index of the expert it always picks

    def problems(self) -> list[str]:
        return [f"expert {self.expert}: an index, at least 0"] if self.expert < 0 else []


class First:
    """α one-hot on the same expert for every request."""

    name = "first"

    def __init__(self, am: Any, cfg: StrategyConfig) -> None:
        self.n_experts, self.expert = len(am.experts), cfg.section("first").expert

    def fit(self, task, examples) -> list[str]:
        return []

    def mix(self, requests: list[Request]) -> Tensor:
        return one_hot([self.expert] * len(requests), self.n_experts)  # (n, K)

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "expert": self.expert}


register_strategy(StrategySpec("first", First, FirstSettings, help="always the same expert (a test strategy)"))
