"""The reference row of every table: the best constant answer learned from the training part (no model).

The task's kind chooses it (tasks/kinds.py). Multiple choice: letters are ranked by how often they
are the gold answer among the training questions (ties alphabetical) and each question is answered
with the highest-ranked letter among its options; generative tasks: the most frequent training
answer. The row is the score of always giving that one answer (a model stuck on another letter scores
that letter's share instead); a system must beat it, not chance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .evaluate import EvalConfig, Plan, _score, assemble, finish, plan_eval
from ..training import splits


def evaluate_constant(cfg: EvalConfig, train_split: str | Path, out_path: str | Path | None = None,
                      submission_path: str | Path | None = None, plan: Plan | None = None) -> dict[str, Any]:
    """The reference row: each question of `cfg` answered with the best constant answer learned from the
    train part of `train_split` (a split.json or run folder); no model. Results as `evaluate` writes them."""
    plan = plan or plan_eval(cfg, out_path, submission_path)
    task, examples = plan.task, plan.examples
    const = task.kind.constant(task, splits.load_part(task, cfg.data, splits.load_split(train_split), "train"),
                               examples)
    protocols = task.kind.protocols  # every protocol answers the same: a submission may take any
    correct = _score(task, examples, {"constant": const.predictions})["constant"]
    records = {e.id: {"completion": "", "prediction": {p: const.predictions[i] for p in protocols},
                      "correct": {p: correct[i] for p in protocols}} for i, e in enumerate(examples)}
    system = {"label": cfg.label or f"best constant ({const.best})", "model": None, "experts": [], "alpha": None,
              "adapter": None, "reference": f"best constant answer of the train part of {train_split}, "
                                            f"{const.description}"}
    results = assemble(plan, cfg, examples, records, system, {"seconds": 0.0, "n_questions": len(examples)})
    out = Path(out_path) if out_path is not None else None
    return finish(results, task, cfg, examples, records, out, submission_path)
