"""Multiple choice: the shared behaviour of MCQ tasks, and `mcq`, a bring-your-own JSONL task.

`mcq` rows: `question`, `choices` (list), `answer` (a letter or a 0-based index), and
optional `id`, `subject`, `category`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import TASKS, Example, chat_format
from .io import LETTERS, get, get_choices, load_records, need_data, to_letter, unique
from .kinds import MULTIPLE_CHOICE, TaskKind, right_or_wrong


def parse_letter(text: str, letters: tuple[str, ...]) -> str:
    """The first non-space character, uppercased, if it is one of `letters`; else ""."""
    stripped = text.lstrip()
    letter = stripped[:1].upper()
    return letter if letter and letter in letters else ""


def english_prompt(question: str, choices: tuple[str, ...], header: str = "") -> str:
    """The usual zero-shot MCQ prompt: optional header, question, "A. ..." lines, "Answer:"."""
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    return f"{header}{question}\n{options}\nAnswer:"


@dataclass
class MultipleChoice:
    """Format with `prompt`, parse one letter, score by exact match. MCQ tasks extend `load` and `prompt`."""

    name: str = "mcq"
    version: str = "1"
    kind: TaskKind = MULTIPLE_CHOICE
    categories: tuple[str, ...] = ()

    def load(self, data: str | Path | None, split: str) -> list[Example]:
        data = need_data(self.name, data)
        records = load_records(data, split)
        return unique((where, self._example(where, row, n)) for n, (where, row) in enumerate(records, 1))

    def _example(self, where: str, row: dict[str, Any], n: int) -> Example:
        question = get(where, row, "question")
        choices = get_choices(where, row)
        answer = to_letter(where, get(where, row, "answer", (str, int)), len(choices))
        optional = {k: str(row[k]) for k in ("id", "subject", "category") if row.get(k) is not None}
        return Example(
            id=optional.get("id", str(n)), question=question, answer=answer, choices=tuple(choices),
            subject=optional.get("subject", ""), category=optional.get("category", ""),
        )

    def prompt(self, example: Example) -> str:
        return english_prompt(example.question, example.choices)

    def format(self, examples: list[Example], tokenizer: Any = None, chat: bool = False) -> list[str]:
        return chat_format([self.prompt(e) for e in examples], tokenizer, chat)

    def parse(self, examples: list[Example], completions: list[str]) -> list[str]:
        return [parse_letter(c, e.letters) for e, c in zip(examples, completions, strict=True)]

    def score(self, examples: list[Example], predictions: list[str]) -> list[bool]:
        return [p != "" and p == e.answer for e, p in zip(examples, predictions, strict=True)]

    def reward(self, examples: list[Example], predictions: list[str]) -> list[float]:
        return right_or_wrong(self.score(examples, predictions))


TASKS.register("mcq", MultipleChoice())
