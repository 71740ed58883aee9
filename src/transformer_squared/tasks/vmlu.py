"""VMLU (Vietnamese, 58 subjects, 4 categories) with the benchmark's own protocol.

Sources, all in the authors' repo ZaloAI-Jaist/VMLU: the subject table is the README's
"Dataset structure" table (names spelled as published); the zero-shot prompt is the template of
code_benchmark/test_prompt.py (open-weight models, no chat template, one generated token); the
letter reading is code_benchmark/test_gpt.py's (first character of the reply). The benchmark's
"Average" is question-weighted over the split; its test answers are scored only by the site,
from an `id,answer` CSV (`write_submission`).
"""

from __future__ import annotations

import csv
import io as stdio
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..atomic import write_text
from ..errors import ConfigError, DataError
from .base import TASKS, Example
from .io import LETTERS, get, get_choices, load_records, need_data, to_letter, unique
from .kinds import MultipleChoiceKind, TaskKind
from .mcq import MultipleChoice

CATEGORIES = ("STEM", "Social Science", "Humanities", "Other")
SPLITS = ("dev", "valid", "test")  # test has no answers

SUBJECTS: dict[str, tuple[str, str]] = {  # subject id → (English name, category)
    "01": ("Elementary Mathematics", "STEM"),
    "02": ("Elementary Science", "STEM"),
    "03": ("Middle School Biology", "STEM"),
    "04": ("Middle School Chemistry", "STEM"),
    "05": ("Middle School Mathematics", "STEM"),
    "06": ("Middle School Physics", "STEM"),
    "07": ("High School Biology", "STEM"),
    "08": ("High School Chemistry", "STEM"),
    "09": ("High School Mathematics", "STEM"),
    "10": ("High School Physics", "STEM"),
    "11": ("Applied Informatics", "STEM"),
    "12": ("Computer Architecture", "STEM"),
    "13": ("Computer Network", "STEM"),
    "14": ("Discrete Mathematics", "STEM"),
    "15": ("Electrical Engineering", "STEM"),
    "16": ("Introduction to Chemistry", "STEM"),
    "17": ("Introduction to Physics", "STEM"),
    "18": ("Introduction to Programming", "STEM"),
    "19": ("Metrology Engineer", "STEM"),
    "20": ("Operating System", "STEM"),
    "21": ("Statistics and Probability", "STEM"),
    "22": ("Middle School Civil Education", "Social Science"),
    "23": ("Middle School Geography", "Social Science"),
    "24": ("High School Civil Education", "Social Science"),
    "25": ("High School Geography", "Social Science"),
    "26": ("Business Administration", "Social Science"),
    "27": ("Ho Chi Minh Ideology", "Social Science"),
    "28": ("Macroeconomics", "Social Science"),
    "29": ("Microeconomics", "Social Science"),
    "30": ("Principles of Marxism and Leninism", "Social Science"),
    "31": ("Sociology", "Social Science"),
    "32": ("Elementary History", "Humanities"),
    "33": ("Middle School History", "Humanities"),
    "34": ("Middle School Literature", "Humanities"),
    "35": ("High School History", "Humanities"),
    "36": ("High School Literature", "Humanities"),
    "37": ("Administrative Law", "Humanities"),
    "38": ("Business Law", "Humanities"),
    "39": ("Civil Law", "Humanities"),
    "40": ("Criminal Law", "Humanities"),
    "41": ("Economic Law", "Humanities"),
    "42": ("Education Law", "Humanities"),
    "43": ("History of World Civilization", "Humanities"),
    "44": ("Idealogical and Moral Cultivation", "Humanities"),
    "45": ("Introduction to Laws", "Humanities"),
    "46": ("Introduction to Vietnam Culture", "Humanities"),
    "47": ("Logic", "Humanities"),
    "48": ("Revolutionary Policy of the Vietnamese Commununist Part", "Humanities"),
    "49": ("Vietnamese Language and Literature", "Humanities"),
    "50": ("Accountant", "Other"),
    "51": ("Clinical Pharmacology", "Other"),
    "52": ("Environmental Engineering", "Other"),
    "53": ("Internal Basic Medicine", "Other"),
    "54": ("Preschool Pedagogy", "Other"),
    "55": ("Tax Accountant", "Other"),
    "56": ("Tax Civil Servant", "Other"),
    "57": ("Civil Servant", "Other"),
    "58": ("Driving License Certificate", "Other"),
}

INSTRUCTION = (
    "Chỉ đưa ra chữ cái đứng trước câu trả lời đúng (A, B, C, D hoặc E) của câu hỏi trắc nghiệm sau: "
)
N_SLOTS = 5  # the official template always has five option lines; missing options are blank
_ID = re.compile(r"(\d\d)-\d{4}")


def category_of(subject_id: str) -> str:
    """The category of a subject id ("01") or of a question id ("01-0001")."""
    subject = subject_id.split("-")[0]
    if subject not in SUBJECTS:
        raise ConfigError(f"unknown VMLU subject '{subject_id}' (known: 01-58)")
    return SUBJECTS[subject][1]


def official_prompt(question: str, options: Sequence[str]) -> str:
    """The zero-shot prompt of test_prompt.py, byte for byte.

    Its template is '$preamble\\n\\n$prompt\\n\\n $a\\n $b\\n $c\\n $d\\n $e\\nĐáp án:' with the option
    strings as given ("A. ..."): each option line starts with a space, and absent options ('')
    leave lines holding a single space.
    """
    slots = list(options) + [""] * (N_SLOTS - len(options))
    return INSTRUCTION + "\n\n" + question + "\n\n" + "\n".join(" " + s for s in slots) + "\nĐáp án:"


def submission_csv(path: str | Path, ids: Sequence[str], predictions: Sequence[str]) -> str:
    """The benchmark's `id,answer` CSV; ids must not repeat, each answer one letter A-E (`path` names it in errors)."""
    if len(ids) != len(predictions):
        raise ConfigError(f"{path}: {len(ids)} ids but {len(predictions)} predictions")
    seen: set[str] = set()
    buf = stdio.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "answer"])
    for qid, pred in zip(ids, predictions):
        if qid in seen:
            raise DataError(f"{path}: id '{qid}' appears twice")
        if not (isinstance(pred, str) and len(pred) == 1 and pred in LETTERS[:N_SLOTS]):
            raise DataError(f"{path}: prediction {pred!r} for id '{qid}' is not one letter A-E")
        seen.add(qid)
        writer.writerow([qid, pred])
    return buf.getvalue()


def write_submission(path: str | Path, ids: Sequence[str], predictions: Sequence[str]) -> None:
    """Write the benchmark's `id,answer` CSV atomically (`submission_csv`)."""
    write_text(submission_csv(path, ids, predictions), Path(path))


@dataclass
class VMLU(MultipleChoice):
    """VMLU from a folder of dev/valid/test.jsonl or a Hugging Face dataset id."""

    name: str = "vmlu"
    version: str = "1"
    kind: TaskKind = MultipleChoiceKind(writer=submission_csv)  # the benchmark's own id,answer CSV (A-E)
    categories: tuple[str, ...] = CATEGORIES

    def load(self, data: str | Path | None, split: str) -> list[Example]:
        records = load_records(need_data(self.name, data), split)
        return unique((where, self._example(where, row, split)) for where, row in records)

    def _example(self, where: str, row: dict[str, Any], split: str) -> Example:
        qid = get(where, row, "id")
        match = _ID.fullmatch(qid)
        if match is None:
            raise DataError(f"{where}: id '{qid}' is not of the form SS-NNNN")
        if match.group(1) not in SUBJECTS:
            raise DataError(f"{where}: id '{qid}' has unknown subject '{match.group(1)}' (known: 01-58)")
        question = get(where, row, "question")
        options = get_choices(where, row, max_n=N_SLOTS)
        choices = []
        for i, option in enumerate(options):
            prefix = f"{LETTERS[i]}. "
            if not option.startswith(prefix):
                raise DataError(f"{where}: choice {i} of id '{qid}' does not start with '{prefix}'")
            choices.append(option[len(prefix):])
        if split == "test" and row.get("answer") in (None, ""):
            answer = ""  # hidden: scored only by the benchmark's site
        else:
            answer = to_letter(where, get(where, row, "answer"), len(options))
        subject = match.group(1)
        name, category = SUBJECTS[subject]
        return Example(
            id=qid, question=question, answer=answer, choices=tuple(choices), subject=subject,
            category=category, meta={"options": tuple(options), "subject_name": name},
        )

    def prompt(self, example: Example) -> str:
        return official_prompt(example.question, example.meta["options"])


TASKS.register("vmlu", VMLU())
