"""`rg`: procedural, verifiable tasks from `reasoning-gym` (e.g. gsm_symbolic, basic_arithmetic), offline.

`data` names a reasoning-gym dataset, optionally with a size: "gsm_symbolic" or
"basic_arithmetic:200". Splits never share a question: each question belongs to one split by a
hash of its text (train 60 %, valid 20 %, test 20 %), and each split draws from its own seeds
until it has `size` distinct questions. Answers go between <answer> tags and are scored with
the dataset's own `score_answer` (correct only at full score).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, DataError
from .base import TASKS, Example, Kind, chat_format

SPLIT_BUCKETS = {"train": range(0, 6), "valid": range(6, 8), "test": range(8, 10)}  # of hash % 10
SPLIT_SEEDS = {"train": 0, "valid": 1, "test": 2}
INSTRUCTION = "Think step by step, then give only the final answer between <answer> and </answer>."
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_MAX_ROUNDS = 50  # draws of `size` questions before giving up on a split


def bucket(question: str) -> int:
    """A stable number in 0-9 from the question text."""
    return hashlib.sha256(question.encode("utf-8")).digest()[0] % 10


def extract_answer(completion: str) -> str:
    """The text of the last <answer>...</answer>, else the last non-empty line."""
    found = _ANSWER.findall(completion)
    if found:
        return found[-1].strip()
    lines = [line.strip() for line in completion.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _import_rg() -> Any:
    try:
        import reasoning_gym
    except ImportError:
        raise ConfigError("task 'rg' needs 'pip install reasoning-gym==0.1.25'") from None
    return reasoning_gym


@dataclass
class ReasoningGym:
    """reasoning-gym datasets as train/valid/test splits with disjoint questions."""

    name: str = "rg"
    version: str = "1"
    kind: Kind = "generate"
    categories: tuple[str, ...] = ()
    size: int = 500  # questions per split when `data` gives none
    seed: int = 0  # base seed; splits and rounds derive their own

    def load(self, data: str | None, split: str) -> list[Example]:
        if not data:
            raise ConfigError("task 'rg' needs data: a reasoning-gym dataset, e.g. gsm_symbolic, basic_arithmetic:200")
        if split not in SPLIT_BUCKETS:
            raise ConfigError(f"rg: unknown split '{split}' (known: {', '.join(SPLIT_BUCKETS)})")
        dataset, _, size_text = str(data).partition(":")
        if size_text and not (size_text.isdigit() and int(size_text) > 0):
            raise ConfigError(f"rg: size in '{data}' must be a positive integer")
        size = int(size_text) if size_text else self.size
        rg = _import_rg()
        examples: dict[str, Example] = {}
        for round_ in range(_MAX_ROUNDS):
            seed = (self.seed * 1_000 + round_) * 10 + SPLIT_SEEDS[split]
            try:
                entries = rg.create_dataset(dataset, size=size, seed=seed)
            except ValueError as e:
                raise ConfigError(f"rg: {e}") from None
            for entry in entries:
                question = entry["question"]
                if question in examples or bucket(question) not in SPLIT_BUCKETS[split]:
                    continue
                examples[question] = Example(
                    id=f"{dataset}-{split}-{len(examples):05d}", question=question, answer=str(entry["answer"]),
                    subject=dataset, meta={"entry": entry},
                )
                if len(examples) == size:
                    return list(examples.values())
        raise DataError(f"rg: '{dataset}' gave only {len(examples)} distinct {split} questions of {size} asked")

    def format(self, examples: list[Example], tokenizer: Any = None, chat: bool = False) -> list[str]:
        return chat_format([f"{e.question}\n\n{INSTRUCTION}" for e in examples], tokenizer, chat)

    def parse(self, examples: list[Example], completions: list[str]) -> list[str]:
        return [extract_answer(c) for _, c in zip(examples, completions, strict=True)]

    def score(self, examples: list[Example], predictions: list[str]) -> list[bool]:
        rg = _import_rg()
        scorers: dict[str, Any] = {}
        out = []
        for e, p in zip(examples, predictions, strict=True):
            if e.subject not in scorers:
                scorers[e.subject] = rg.get_score_answer_fn(e.subject)
            out.append(p != "" and scorers[e.subject](p, e.meta["entry"]) >= 1.0)
        return out


TASKS.register("rg", ReasoningGym())
