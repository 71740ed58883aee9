"""GSM8K (grade-school math word problems): rows `question`, `answer` (a solution ending "#### N").

The reference is the number after the last "####". A completion's answer is the number after
its last "####" if it has one, else its last number. Numbers are compared after normalising
("1,000.50" → "1000.5", "$12" → "12").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from ..errors import DataError
from .base import TASKS, Example, chat_format
from .io import get, load_records, need_data, unique
from .kinds import GENERATIVE, TaskKind, right_or_wrong

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
INSTRUCTION = (
    "Solve the following math problem step by step. "
    'Write the final answer as a number on the last line, in the form "#### <number>".'
)


def normalize_number(text: str) -> str:
    """A canonical decimal string ("1,000.50" → "1000.5", "7.0" → "7"); "" when `text` holds no number."""
    found = _NUMBER.findall(text.replace("$", ""))
    if not found:
        return ""
    try:
        value = Decimal(found[-1].replace(",", ""))
    except InvalidOperation:
        return ""
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_answer(completion: str) -> str:
    """The normalised number after the last "####", else the last number in the text."""
    if "####" in completion:
        tail = normalize_number(completion.rsplit("####", 1)[1].split("\n", 1)[0])
        if tail:
            return tail
    return normalize_number(completion)


@dataclass
class GSM8K:
    """GSM8K from train.jsonl/test.jsonl (a folder or one file) or a hub id (`openai/gsm8k`, config main)."""

    name: str = "gsm8k"
    version: str = "1"
    kind: TaskKind = GENERATIVE
    categories: tuple[str, ...] = ()

    def load(self, data: str | Path | None, split: str) -> list[Example]:
        records = load_records(need_data(self.name, data), split, default_config="main")
        return unique((where, self._example(where, row, n)) for n, (where, row) in enumerate(records, 1))

    def _example(self, where: str, row: dict[str, Any], n: int) -> Example:
        solution = get(where, row, "answer")
        if "####" not in solution:
            raise DataError(f"{where}: answer has no '#### <number>' line")
        final = normalize_number(solution.rsplit("####", 1)[1])
        if not final:
            raise DataError(f"{where}: no number after '####' in the answer")
        return Example(id=str(row.get("id", n)), question=get(where, row, "question"), answer=final,
                       meta={"solution": solution})

    def format(self, examples: list[Example], tokenizer: Any = None, chat: bool = False) -> list[str]:
        return chat_format([f"{INSTRUCTION}\n\nQuestion: {e.question}\nAnswer:" for e in examples], tokenizer, chat)

    def parse(self, examples: list[Example], completions: list[str]) -> list[str]:
        return [extract_answer(c) for _, c in zip(examples, completions, strict=True)]

    def score(self, examples: list[Example], predictions: list[str]) -> list[bool]:
        return [p != "" and p == e.answer for e, p in zip(examples, predictions, strict=True)]

    def reward(self, examples: list[Example], predictions: list[str]) -> list[float]:
        return right_or_wrong(self.score(examples, predictions))


TASKS.register("gsm8k", GSM8K())
