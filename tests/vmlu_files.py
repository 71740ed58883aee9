"""Small VMLU-format folders with invented questions (never the benchmark's own content)."""

from __future__ import annotations

import json
from pathlib import Path

# Subjects from all four categories: STEM (01, 05), Social Science (22, 28), Humanities (33, 40), Other (50, 58).
SUBJECTS = ("01", "05", "22", "28", "33", "40", "50", "58")
CATEGORY = {"01": "STEM", "05": "STEM", "22": "Social Science", "28": "Social Science",
            "33": "Humanities", "40": "Humanities", "50": "Other", "58": "Other"}


def _row(subject: str, k: int, n_choices: int, with_answer: bool) -> dict:
    a, b = 3 + k, 5 + 2 * k
    values = [a + b + d for d in range(n_choices)]
    row = {
        "id": f"{subject}-{k + 1:04d}",
        "question": f"Câu hỏi thử số {k + 1} của môn {subject}: {a} cộng {b} bằng bao nhiêu?",
        "choices": [f"{chr(65 + i)}. {v}" for i, v in enumerate(values)],
    }
    if with_answer:
        row["answer"] = chr(65 + (k + int(subject)) % n_choices)
    return row


def write_vmlu(folder: Path, per_subject: int = 3, distinct_ids: bool = False) -> Path:
    """dev/valid/test.jsonl with `per_subject` questions per subject (3 to 5 choices; test has no answers).

    The three splits hold the same questions unless `distinct_ids` (as in VMLU, where they never overlap).
    """
    folder.mkdir(parents=True, exist_ok=True)
    for n, (split, with_answer) in enumerate((("dev", True), ("valid", True), ("test", False))):
        first = n * per_subject if distinct_ids else 0
        rows = [_row(s, k, 3 + (k % 3), with_answer) for s in SUBJECTS for k in range(first, first + per_subject)]
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return folder
