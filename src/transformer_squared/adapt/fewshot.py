"""`fewshot`: one mixture for a whole task, found by CEM on k labelled examples of it (paper §3.2).

α (one per expert, or one per expert per target with `alpha_per: target`) is searched in [0, 1]
by `cem.cem`; the fitness of a candidate is its accuracy on the k examples, ties broken by the mean
answer log-likelihood (multiple choice: log-probability of the gold letter; generative tasks: log
p(reference answer | prompt)). Mixing is over post-sigmoid z (`svf.mix`). The whole population is
scored in one call: k × population prompts, each row with its own α, grouped by candidate with its
mixture merged, as pass 2 runs the found α, so the fitness is the evaluation's own arithmetic (in
bfloat16 the factored form rounds differently). `mixed: true` scores factored in mixed batches
instead (faster where merging is costly; the record says which). The k examples are drawn with the seed and returned by `fit`,
so evaluation leaves them out. The found α is saved as JSON and reused with `alpha_from`.
Outside an evaluation (generate, lm-eval, the server) the shots come from `fit_task` / `fit_data` /
`fit_split`, or the α from `alpha_from`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from ..atomic import read_json
from ..errors import ConfigError
from ..tasks.base import Example, Task
from ..tasks.kinds import ModelCalls
from .cem import CEMConfig, CEMResult, cem
from .registry import SHOTS, Request, StrategyConfig, StrategySpec, register_strategy

FORMAT = "transformer-squared-fewshot-alpha"


@dataclass
class FewShotSettings:
    """Settings of `fewshot`."""

    shots: int = 10  # k labelled examples of the target task (left out of the evaluation)
    population: int = 32  # CEM population per generation
    elite: float = 0.2  # share of the population kept as elite
    generations: int = 50  # most CEM generations
    tol: float = 1e-3  # stop when every coordinate's elite standard deviation is below this
    alpha_per: Literal["expert", "target"] = "expert"  # one α per expert, or per expert per target
    alpha_from: str | None = None  # reuse the α saved by an earlier run (JSON) instead of searching
    mixed: bool = False  # score the population factored in mixed batches (faster; rounds unlike the merged pass 2) instead of merged per candidate
    fit_task: str | None = None  # outside an evaluation: the task whose labelled examples give the shots
    fit_data: str | None = None  # with fit_task: its data folder/file or hub id (None: the task's default)
    fit_split: str = "train"  # with fit_task: the split the shots are drawn from

    def problems(self) -> list[str]:
        out = [f"{k} {getattr(self, k)}: must be at least 1" for k in ("shots", "population", "generations")
               if getattr(self, k) < 1]
        if not 0 < self.elite < 1:
            out.append(f"elite {self.elite}: a share in (0, 1)")
        if self.alpha_per not in ("expert", "target"):
            out.append(f"alpha_per '{self.alpha_per}': choose expert or target")
        return out


class FewShot:
    """CEM-searched α for one task; `mix` returns it for every request."""

    name = "fewshot"

    def __init__(self, am: Any, cfg: StrategyConfig) -> None:
        self.am, self.cfg, self.settings = am, cfg, cfg.section("fewshot")
        per_expert = self.settings.alpha_per == "expert"
        self.shape = (len(am.experts),) if per_expert else (len(am.experts), len(am.targets))
        self.alpha: Tensor | None = None  # (K,) or (K, n_targets)
        self.shot_ids: list[str] = []
        self.search: CEMResult | None = None
        self.loaded_from: str | None = None
        if self.settings.alpha_from:
            self._load(Path(self.settings.alpha_from))

    # ---- the search ----------------------------------------------------------------------------
    def fit(self, task: Task | None, examples: list[Example]) -> list[str]:
        """Search α on k seeded examples of `task` (or keep the loaded one); returns the examples' ids.
        Without a task (outside an evaluation) the examples come from `fit_task`'s `fit_split`."""
        if self.alpha is not None:
            return self.shot_ids
        st = self.settings
        if task is None:
            task, examples = self._fit_examples()
        labelled = [e for e in examples if e.answer != ""]
        if len(labelled) <= st.shots:
            raise ConfigError(f"strategy fewshot: --shots {st.shots} needs more labelled questions than "
                              f"the {len(labelled)} this split has (the shots are left out of the evaluation)")
        picked = sorted(random.Random(self.cfg.seed).sample(range(len(labelled)), st.shots))
        shots = [labelled[i] for i in picked]
        init = torch.full(self.shape, 1.0 / len(self.am.experts)).flatten()  # (D,): the uniform mixture
        cfg = CEMConfig(st.population, st.elite, st.generations, st.tol, seed=self.cfg.seed)
        self.search = cem(lambda pop: self.fitness(task, shots, pop), init, cfg)
        self.alpha = self.search.best.reshape(self.shape)
        self.shot_ids = [e.id for e in shots]
        return self.shot_ids

    def _fit_examples(self) -> tuple[Task, list[Example]]:
        """The task and labelled pool named by `fit_task`, `fit_data`, `fit_split`."""
        from ..tasks import get_task

        st = self.settings
        if not st.fit_task:
            raise ConfigError("strategy fewshot needs labelled examples of the task: set fewshot.fit_task "
                              "(and fit_data, fit_split) to search α on, or fewshot.alpha_from (--alpha-from) "
                              "to reuse an α a `t2 eval` run saved")
        task = get_task(st.fit_task)
        return task, task.load(st.fit_data, st.fit_split)

    def fitness(self, task: Task, shots: list[Example], pop: Tensor) -> tuple[Tensor, Tensor]:
        """(accuracy, mean answer log-likelihood) on `shots` for each candidate of `pop` (P, D)."""
        P, k = pop.shape[0], len(shots)
        rows = pop.reshape(P, *self.shape).repeat_interleave(k, 0)  # (P·k, K[, T]): candidate-major
        prompts = task.format(shots, self.am.tokenizer, self.cfg.task_chat) * P
        items = shots * P
        run = dict(alpha=rows, mixed=self._scored() == "factored", batch_size=self.cfg.batch_size)
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

    def _scored(self) -> str:
        """How candidates are scored: "merged" (as pass 2 runs the α) or "factored" (mixed batches)."""
        return "factored" if self.settings.mixed and getattr(self.am.engine, "supports_factored", False) else "merged"

    def mix(self, requests: list[Request]) -> Tensor:
        if self.alpha is None:
            raise ConfigError("strategy fewshot: fit it first (Pipeline.fit), or give --alpha-from FILE")
        return self.alpha[None].expand(len(requests), *self.shape).clone()  # (n, K) or (n, K, n_targets)

    # ---- saving and reusing --------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        """The α found (or loaded), the shots it was found on, and the search's course."""
        st = self.settings
        out: dict[str, Any] = {"name": self.name, "format": FORMAT, "alpha_per": st.alpha_per,
                               "experts": self.am.labels, "targets": self.am.targets if st.alpha_per == "target" else [],
                               "alpha": None if self.alpha is None else self.alpha.tolist(), "shots": self.shot_ids,
                               "seed": self.cfg.seed, "loaded_from": self.loaded_from, "scored": self._scored()}
        if self.search is not None:
            s = self.search
            out["search"] = {"population": st.population, "elite": st.elite, "tol": st.tol,
                             "generations": s.generations, "max_generations": st.generations,
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
                              f"--alpha-per {self.settings.alpha_per} need {self.shape}")
        if saved.get("experts") != self.am.labels:
            raise ConfigError(f"--alpha-from {path}: found for experts {saved.get('experts')}, not {self.am.labels}")
        self.alpha, self.shot_ids, self.loaded_from = alpha, list(saved.get("shots", [])), str(path)


register_strategy(StrategySpec(
    "fewshot", FewShot, FewShotSettings, needs=SHOTS, help="one mixture per task, searched (CEM) on k labelled examples",
    given=lambda s, fitted: replace(s, alpha_from=fitted)))
