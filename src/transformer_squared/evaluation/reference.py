"""The reference row of every table: the best constant answer learned from the training part (no model).

Letters are ranked by how often they are the gold answer among the training questions (ties:
alphabetical); each question is answered with the highest-ranked letter among its options. A
model that always answers one letter scores like this row, so a system must beat it, not chance.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from .evaluate import PROTOCOLS, EvalConfig, Plan, _score, assemble, finish, plan_eval
from ..tasks.base import Example
from ..training import splits


def letter_ranking(train: list[Example]) -> list[str]:
    """Gold letters of the training part, most frequent first (ties alphabetical)."""
    counts = Counter(e.answer for e in train if e.answer)
    if not counts:
        raise DataError("best constant answer: the training part has no labelled question")
    return sorted(counts, key=lambda x: (-counts[x], x))


def predictions(examples: list[Example], ranking: list[str]) -> list[str]:
    """Per question, the first letter of `ranking` among its options (else its first option)."""
    return [next((x for x in ranking if x in e.letters), e.letters[0]) for e in examples]


def evaluate_constant(cfg: EvalConfig, train_split: str | Path, out_path: str | Path | None = None,
                      submission_path: str | Path | None = None, plan: Plan | None = None) -> dict[str, Any]:
    """The reference row: each question of `cfg` answered with the best constant letter learned from the
    train part of `train_split` (a split.json or run folder); no model. Results as `evaluate` writes them."""
    plan = plan or plan_eval(cfg, out_path, submission_path)
    task, examples = plan.task, plan.examples
    if task.kind != "mcq":
        raise ConfigError(f"--constant-from: '{task.name}' is not multiple choice")
    ranking = letter_ranking(splits.load_part(task, cfg.data, splits.load_split(train_split), "train"))
    preds = predictions(examples, ranking)
    correct = _score(task, examples, {"letter": preds})["letter"]
    records = {e.id: {"completion": "", "prediction": {p: preds[i] for p in PROTOCOLS},
                      "correct": {p: correct[i] for p in PROTOCOLS}} for i, e in enumerate(examples)}
    system = {"label": cfg.label or f"best constant ({ranking[0]})", "model": None, "experts": [], "alpha": None,
              "adapter": None, "reference": f"best constant answer of the train part of {train_split}, "
                                            f"letters ranked {''.join(ranking)}"}
    results = assemble(plan, cfg, examples, records, system, {"seconds": 0.0, "n_questions": len(examples)})
    return finish(results, cfg, examples, records, Path(out_path) if out_path is not None else None, submission_path)
