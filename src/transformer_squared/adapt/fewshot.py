"""`fewshot`: one mixture for a whole task, found by CEM on k labelled examples of it (paper §3.2).

α (one per expert, or one per expert per target with `alpha_per: target`) is searched in [0, 1]
by `cem.cem`; the fitness of a candidate is its accuracy on the k examples, ties broken by the mean
answer log-likelihood (multiple choice: log-probability of the gold letter; generative tasks: log
p(reference answer | prompt)). Mixing is over post-sigmoid z (`svf.mix`). The whole population is
scored in one call: k × population prompts, each row with its own α, as mixed batches (factored)
or, where the engine cannot, grouped. The k examples are drawn with the seed and returned by `fit`,
so evaluation leaves them out. The found α is saved as JSON and reused with `alpha_from`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..atomic import read_json
from ..errors import ConfigError
from ..tasks.base import Example, Task
from ..tasks.kinds import ModelCalls
from .cem import CEMConfig, CEMResult, cem
from .registry import STRATEGIES, Request, StrategyConfig

FORMAT = "transformer-squared-fewshot-alpha"


class FewShot:
    """CEM-searched α for one task; `mix` returns it for every request."""

    name = "fewshot"

    def __init__(self, am: Any, cfg: StrategyConfig) -> None:
        self.am, self.cfg = am, cfg
        self.shape = (len(am.experts),) if cfg.alpha_per == "expert" else (len(am.experts), len(am.targets))
        self.alpha: Tensor | None = None  # (K,) or (K, n_targets)
        self.shot_ids: list[str] = []
        self.search: CEMResult | None = None
        self.loaded_from: str | None = None
        if cfg.alpha_from:
            self._load(Path(cfg.alpha_from))

    # ---- the search ----------------------------------------------------------------------------
    def fit(self, task: Task, examples: list[Example]) -> list[str]:
        """Search α on k seeded examples of `task` (or keep the loaded one); returns the examples' ids."""
        if self.alpha is not None:
            return self.shot_ids
        labelled = [e for e in examples if e.answer != ""]
        if len(labelled) <= self.cfg.shots:
            raise ConfigError(f"strategy fewshot: --shots {self.cfg.shots} needs more labelled questions than "
                              f"the {len(labelled)} this split has (the shots are left out of the evaluation)")
        picked = sorted(random.Random(self.cfg.seed).sample(range(len(labelled)), self.cfg.shots))
        shots = [labelled[i] for i in picked]
        init = torch.full(self.shape, 1.0 / len(self.am.experts)).flatten()  # (D,): the uniform mixture
        cfg = CEMConfig(self.cfg.population, self.cfg.elite, self.cfg.generations, self.cfg.tol, seed=self.cfg.seed)
        self.search = cem(lambda pop: self.fitness(task, shots, pop), init, cfg)
        self.alpha = self.search.best.reshape(self.shape)
        self.shot_ids = [e.id for e in shots]
        return self.shot_ids

    def fitness(self, task: Task, shots: list[Example], pop: Tensor) -> tuple[Tensor, Tensor]:
        """(accuracy, mean answer log-likelihood) on `shots` for each candidate of `pop` (P, D)."""
        P, k = pop.shape[0], len(shots)
        rows = pop.reshape(P, *self.shape).repeat_interleave(k, 0)  # (P·k, K[, T]): candidate-major
        prompts = task.format(shots, self.am.tokenizer, self.cfg.task_chat) * P
        items = shots * P
        mixed = self.cfg.mixed and getattr(self.am.engine, "supports_factored", False)
        run = dict(alpha=rows, mixed=mixed, batch_size=self.cfg.batch_size)
        calls = ModelCalls(lambda p, letters: self.am.score_letters(p, letters, **run),
                           lambda p: self.am.generate(p, self.cfg.max_new_tokens, chat=False, seed=self.cfg.seed, **run))
        answers = task.kind.predict(task, items, prompts, calls)  # multiple choice: argmax over the letters
        correct = torch.tensor(task.score(items, answers.predictions[task.kind.selection]))
        if answers.letter_logp is not None:  # the gold letter's log-probability among the letters
            ll = torch.tensor([float(lp[e.letters.index(e.answer)]) for e, lp in zip(items, answers.letter_logp)])
        else:
            space = "" if self.cfg.task_chat else " "
            ll = torch.tensor([s for s, _ in self.am.loglikelihood(prompts, [space + e.answer for e in items], **run)])
        return correct.float().reshape(P, k).mean(1), ll.reshape(P, k).mean(1)  # (P,), (P,)

    def mix(self, requests: list[Request]) -> Tensor:
        if self.alpha is None:
            raise ConfigError("strategy fewshot: call fit(task, examples) first, or give --alpha-from FILE")
        return self.alpha[None].expand(len(requests), *self.shape).clone()  # (n, K) or (n, K, n_targets)

    # ---- saving and reusing --------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        """The α found (or loaded), the shots it was found on, and the search's course."""
        out: dict[str, Any] = {"name": self.name, "format": FORMAT, "alpha_per": self.cfg.alpha_per,
                               "experts": self.am.labels, "targets": self.am.targets if self.cfg.alpha_per == "target" else [],
                               "alpha": None if self.alpha is None else self.alpha.tolist(), "shots": self.shot_ids,
                               "seed": self.cfg.seed, "loaded_from": self.loaded_from}
        if self.search is not None:
            s = self.search
            out["search"] = {"population": self.cfg.population, "elite": self.cfg.elite, "tol": self.cfg.tol,
                             "generations": s.generations, "max_generations": self.cfg.generations,
                             "converged": s.converged, "accuracy": s.score, "loglikelihood": s.tie,
                             "history": s.history}
        return out

    def _load(self, path: Path) -> None:
        saved = read_json(path, ConfigError, "no such file (--alpha-from)")
        saved = saved.get("strategy", saved) if isinstance(saved, dict) else {}  # a results file: under "strategy"
        if saved.get("format") != FORMAT or saved.get("alpha") is None:
            raise ConfigError(f"--alpha-from {path}: not an α saved by the fewshot strategy")
        alpha = torch.tensor(saved["alpha"], dtype=torch.float32)
        if tuple(alpha.shape) != self.shape:
            raise ConfigError(f"--alpha-from {path}: α of shape {tuple(alpha.shape)}; these experts with "
                              f"--alpha-per {self.cfg.alpha_per} need {self.shape}")
        if saved.get("experts") != self.am.labels:
            raise ConfigError(f"--alpha-from {path}: found for experts {saved.get('experts')}, not {self.am.labels}")
        self.alpha, self.shot_ids, self.loaded_from = alpha, list(saved.get("shots", [])), str(path)


STRATEGIES.register("fewshot", FewShot)
