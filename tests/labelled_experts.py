"""Labelled experts for two-pass tests: tiny random Llama experts whose z differ visibly."""

from __future__ import annotations

import torch

from transformer_squared.experts.expert import Expert, attach
from transformer_squared.models.load import model_id

LABELS = ("STEM", "Humanities")
DESCRIPTIONS = ("Science, technology, engineering and mathematics questions.", "History, law and philosophy questions.")


def make_experts(model, labels=LABELS, descriptions=DESCRIPTIONS, scale: float = 2.0) -> list[Expert]:
    """Reference init plus seeded N(0, scale²) noise on p, one expert per label."""
    svf = attach(model)
    out = []
    for k, (label, desc) in enumerate(zip(labels, descriptions)):
        e = Expert.init(svf.factors, model_id(model), svf.fingerprint, seed=k, label=label, description=desc)
        g = torch.Generator().manual_seed(100 + k)
        e.p = {t: p + scale * torch.randn(p.shape, generator=g) for t, p in e.p.items()}
        out.append(e)
    return out


def write_questions(path, label: str, n: int = 8):
    """An `mcq` JSONL file of n invented questions for one expert label, ids '<label>-<k>'."""
    import json

    topic = {"STEM": "What is {k} times 3?", "Humanities": "In which century did event number {k} happen?"}[label]
    rows = [{"id": f"{label}-{k}", "question": topic.format(k=k), "choices": [str(k), str(3 * k), "none"],
             "answer": 1, "category": label} for k in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def save_as_run(expert: Expert, run_dir, data, ids: list[str], n_val: int = 2):
    """Save `expert` as `t2 train` leaves it: run_dir/best/ plus the run's split.json naming the
    questions of an mcq file it trained on (the last n_val for validation). Returns run_dir/best."""
    import json

    expert.meta.task = "mcq"
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"task": "mcq", "data": str(data), "splits": ["train"],
              "ids": {"train": ids[:-n_val], "val": ids[-n_val:], "holdout": []}}
    (run_dir / "split.json").write_text(json.dumps(record), encoding="utf-8")
    return expert.save(run_dir / "best")
