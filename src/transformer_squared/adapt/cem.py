"""The Cross-Entropy Method over a box (paper §3.2, few-shot adaptation): sample a population from a
diagonal Gaussian, keep the elite by fitness, refit the Gaussian to the elite, repeat.

As in the reference: the mean starts at `init`, the standard deviation at half the box width, samples
are clipped to [low, high], and the best point so far is re-evaluated in every generation (slot 0).
Fitness is a pair (score, tie-break), compared lexicographically, so accuracy ties go to the higher
answer log-likelihood. The search stops early once every coordinate's elite standard deviation is
below `tol` (the elite has converged). Seeded: the same seed and fitness give the same result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

Fitness = Callable[[Tensor], tuple[Tensor, Tensor]]  # population (P, D) → (score (P,), tie-break (P,))


@dataclass
class CEMConfig:
    """Search settings (reference values)."""

    population: int = 32  # points per generation
    elite: float = 0.2  # share of the population that refits the Gaussian
    generations: int = 50  # most generations
    tol: float = 1e-3  # early stop when max elite standard deviation < tol
    low: float = 0.0  # box: samples are clipped to [low, high]
    high: float = 1.0
    seed: int = 0  # seeds the sampler

    @property
    def n_elite(self) -> int:
        """At least two (one point has no spread, so it would "converge" at once), at most the population."""
        return min(self.population, max(2, int(self.elite * self.population)))


@dataclass
class CEMResult:
    """The best point found and how the search went."""

    best: Tensor  # (D,)
    score: float  # fitness of `best`
    tie: float  # its tie-break value
    generations: int  # generations run
    converged: bool  # stopped because the elite converged
    history: list[dict[str, Any]] = field(default_factory=list)  # per generation: best, mean score, elite spread


def rank(score: Tensor, tie: Tensor) -> list[int]:
    """Population indices, best first: higher score, then higher tie-break, then lower index."""
    return sorted(range(score.numel()), key=lambda i: (-float(score[i]), -float(tie[i]), i))


def cem(fitness: Fitness, init: Tensor, cfg: CEMConfig) -> CEMResult:
    """Maximise `fitness` over [low, high]^D starting from `init` (D,)."""
    g = torch.Generator().manual_seed(cfg.seed)
    mean = init.float().clone()  # (D,)
    std = torch.full_like(mean, (cfg.high - cfg.low) / 2)  # (D,)
    best, history = mean.clone(), []
    best_score = best_tie = float("-inf")
    converged = False
    for gen in range(cfg.generations):
        noise = torch.randn(cfg.population, mean.numel(), generator=g)  # (P, D)
        pop = (mean + std * noise).clamp(cfg.low, cfg.high)  # (P, D)
        pop[0] = best  # re-evaluate the best so far
        score, tie = fitness(pop)  # (P,), (P,)
        order = rank(score, tie)
        elite = pop[order[: cfg.n_elite]]  # (E, D)
        best, best_score, best_tie = pop[order[0]].clone(), float(score[order[0]]), float(tie[order[0]])
        mean = elite.mean(0)
        std = elite.std(0) if len(elite) > 1 else torch.zeros_like(mean)
        history.append({"generation": gen, "best_score": best_score, "best_tie": best_tie,
                        "mean_score": float(score.float().mean()), "elite_std_max": float(std.max())})
        if len(elite) > 1 and float(std.max()) < cfg.tol:
            converged = True
            break
    return CEMResult(best, best_score, best_tie, len(history), converged, history)
