"""MATH (competition mathematics): rows `problem`, `solution` (with a final \\boxed{...}), `level`, `type`.

The answer is the content of the last \\boxed{...} (or \\fbox{...}), braces matched, compared
after the normalisation of the MATH paper's evaluation (Hendrycks et al. 2021, `is_equiv`):
no spaces, \\left/\\right, \\!, dollar signs, degree marks, percent signs, trailing "." or unit
text; \\dfrac/\\tfrac → \\frac; \\frac12 → \\frac{1}{2}; \\sqrt2 → \\sqrt{2}; 0.5 → \\frac{1}{2};
3/4 → \\frac{3}{4}; "x = 5" → "5". Data: JSONL, the original release (a folder with
`<split>/<type>/<n>.json`), or a hub id.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError
from .base import TASKS, Example, chat_format
from .io import Record, get, load_records, need_data, unique
from .kinds import GENERATIVE, TaskKind, right_or_wrong

CATEGORIES = (
    "Algebra", "Counting & Probability", "Geometry", "Intermediate Algebra", "Number Theory", "Prealgebra",
    "Precalculus",
)
INSTRUCTION = "Solve the following problem step by step. Put the final answer in \\boxed{}."


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} or \\fbox{...} (nested braces matched); None if there is none."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    rest = text[start:].removeprefix("\\boxed").removeprefix("\\fbox")
    if rest.startswith(" "):  # "\boxed 5": up to the next "$" or end of line
        return rest[1:].split("$")[0].split("\n")[0].strip()
    if not rest.startswith("{"):
        return None
    depth = 0
    for i, ch in enumerate(rest):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth == 0:
            return rest[1:i]
    return None


def _fix_fracs(s: str) -> str:
    s = re.sub(r"\\frac([^{\\])([^{\\])", r"\\frac{\1}{\2}", s)  # \frac12 → \frac{1}{2}
    s = re.sub(r"\\frac([^{\\])\{", r"\\frac{\1}{", s)  # \frac1{2} → \frac{1}{2}
    return re.sub(r"\\frac(\{[^{}]*\})([^{\\])", r"\\frac\1{\2}", s)  # \frac{1}2 → \frac{1}{2}


def normalize_answer(answer: str) -> str:
    """Canonical form of a MATH answer for string comparison (see the module docstring)."""
    s = answer.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "").replace("$", "")
    if "\\text{ " in s:  # trailing units: "5 \text{ cm}"
        s = s.split("\\text{ ")[0]
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if s.startswith("."):
        s = "0" + s
    parts = s.split("=")
    if len(parts) == 2 and len(parts[0].strip()) <= 2:  # "x = 5" → "5"
        s = parts[1]
    s = re.sub(r"\\sqrt([^{\\\s])", r"\\sqrt{\1}", s)
    s = s.replace(" ", "").rstrip(".")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    match = re.fullmatch(r"(\d+)/(\d+)", s)
    if match:
        s = f"\\frac{{{match.group(1)}}}{{{match.group(2)}}}"
    return s


def _read_release(folder: Path, split: str) -> list[Record]:
    """Rows of the original release: `<folder>/<split>/<type>/<n>.json`, one problem per file."""
    records = []
    for path in sorted((folder / split).glob("*/*.json")):
        try:
            row = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{path}:1: invalid JSON ({e})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:1: expected a JSON object")
        row.setdefault("id", f"{path.parent.name}/{path.stem}")
        records.append((f"{path}:1", row))
    return records


@dataclass
class MATH:
    """MATH from JSONL, the original folder layout, or a hub id."""

    name: str = "math"
    version: str = "1"
    kind: TaskKind = GENERATIVE
    categories: tuple[str, ...] = CATEGORIES

    def load(self, data: str | Path | None, split: str) -> list[Example]:
        data = need_data(self.name, data)
        folder = Path(data).expanduser()
        if folder.is_dir() and (folder / split).is_dir():
            records = _read_release(folder, split)
        else:
            records = load_records(data, split)
        return unique((where, self._example(where, row, n)) for n, (where, row) in enumerate(records, 1))

    def _example(self, where: str, row: dict[str, Any], n: int) -> Example:
        solution = get(where, row, "solution")
        boxed = last_boxed(solution)
        if boxed is None:
            raise DataError(f"{where}: solution has no \\boxed{{...}} answer")
        kind = str(row.get("type") or row.get("subject") or "")  # MATH-500 copies call it "subject"
        return Example(
            id=str(row.get("id", row.get("unique_id", n))), question=get(where, row, "problem"),
            answer=normalize_answer(boxed), subject=kind, category=kind if kind in CATEGORIES else "",
            meta={"solution": solution, "level": str(row.get("level", ""))},
        )

    def format(self, examples: list[Example], tokenizer: Any = None, chat: bool = False) -> list[str]:
        return chat_format([f"{INSTRUCTION}\n\nProblem: {e.question}\nSolution:" for e in examples], tokenizer, chat)

    def parse(self, examples: list[Example], completions: list[str]) -> list[str]:
        return [normalize_answer(last_boxed(c) or "") for _, c in zip(examples, completions, strict=True)]

    def score(self, examples: list[Example], predictions: list[str]) -> list[bool]:
        return [p != "" and p == e.answer for e, p in zip(examples, predictions, strict=True)]

    def reward(self, examples: list[Example], predictions: list[str]) -> list[float]:
        return right_or_wrong(self.score(examples, predictions))


TASKS.register("math", MATH())
