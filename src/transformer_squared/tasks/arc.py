"""AI2 ARC (grade-school science MCQ) in its original JSONL layout or the `allenai/ai2_arc` layout.

Original: `id`, `question` {`stem`, `choices` [{`label`, `text`}]}, `answerKey`.
Hub: `id`, `question` (text), `choices` {`label`: [...], `text`: [...]}, `answerKey`.
Labels ("A"-"E", or "1"-"5" in some rows) become letters by position.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError
from .base import TASKS, Example
from .io import LETTERS, get, load_records, need_data, unique
from .mcq import MultipleChoice


def _labels_texts(where: str, row: dict[str, Any]) -> tuple[str, list[str], list[str]]:
    """(question, labels, texts) from either layout."""
    question = row.get("question")
    if isinstance(question, dict):  # original layout
        stem = get(where, question, "stem")
        choices = get(where, question, "choices", list)
        if not all(isinstance(c, dict) for c in choices):
            raise DataError(f"{where}: each choice must be an object with 'label' and 'text'")
        return stem, [str(get(where, c, "label")) for c in choices], [get(where, c, "text") for c in choices]
    stem = get(where, row, "question")
    choices = get(where, row, "choices", dict)
    labels, texts = get(where, choices, "label", list), get(where, choices, "text", list)
    if len(labels) != len(texts):
        raise DataError(f"{where}: {len(labels)} labels but {len(texts)} choice texts")
    return stem, [str(label) for label in labels], [str(t) for t in texts]


@dataclass
class ARC(MultipleChoice):
    """ARC from a JSONL file, a folder (ARC-Challenge-Test.jsonl, ...) or a hub id (ARC-Challenge by default)."""

    name: str = "arc"
    version: str = "1"

    def load(self, data: str | Path | None, split: str) -> list[Example]:
        records = load_records(need_data(self.name, data), split, default_config="ARC-Challenge")
        return unique((where, self._example_arc(where, row)) for where, row in records)

    def _example_arc(self, where: str, row: dict[str, Any]) -> Example:
        stem, labels, texts = _labels_texts(where, row)
        if not labels:
            raise DataError(f"{where}: empty choice list")
        if len(labels) > len(LETTERS) or len(set(labels)) != len(labels):
            raise DataError(f"{where}: choice labels must be distinct, got {labels}")
        key = str(get(where, row, "answerKey", (str, int))).strip()
        if key not in labels:
            raise DataError(f"{where}: answerKey '{key}' is not among the labels {labels}")
        return Example(id=str(get(where, row, "id")), question=stem, answer=LETTERS[labels.index(key)],
                       choices=tuple(texts))


TASKS.register("arc", ARC())
