"""MBPP (Mostly Basic Python Problems): rows `task_id`, `text`, `code`, `test_list`, `test_setup_code`.

The prompt is the MBPP paper's (task text, then its tests, then "[BEGIN]"). A completion's code
is its first fenced block, else its text up to "[DONE]"; it passes when it runs the task's
asserts to their end in the sandbox (code.py: ending early fails). A local file is split by task id as in the paper
(prompt 1-10, test 11-510, validation 511-600, train 601-974; split "all" keeps every row).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from .base import TASKS, Example, chat_format
from .code import CodeTask, code_field
from .io import get, is_hub_id, load_hub, need_data, read_jsonl, split_path, unique
from .kinds import CODE, TaskKind

SPLIT_IDS = {"prompt": range(1, 11), "test": range(11, 511), "validation": range(511, 601), "train": range(601, 975)}
CODE_FENCE = re.compile(r"```(?:python|py)?[^\n]*\n(.*?)(?:```|$)", re.DOTALL)


def extract_code(completion: str) -> str:
    """The first fenced code block, else the text before "[DONE]"."""
    match = CODE_FENCE.search(completion)
    if match:
        return match.group(1).strip("\n")
    return completion.split("[DONE]")[0].strip("\n")


@dataclass
class MBPP(CodeTask):
    """MBPP from the original mbpp.jsonl (or a folder of split files) or a hub id (`mbpp`)."""

    name: str = "mbpp"
    version: str = "2"  # 2: a program that ends before its checks fails (issue 19)
    kind: TaskKind = CODE
    categories: tuple[str, ...] = ()

    def load(self, data: str | Path | None, split: str) -> list[Example]:
        data = need_data(self.name, data)
        if isinstance(data, str) and is_hub_id(data):
            records = load_hub(data, split)
        elif split in SPLIT_IDS or split == "all":
            records = read_jsonl(split_path(data, split))
            if split != "all":
                records = [(w, r) for w, r in records if r.get("task_id") in SPLIT_IDS[split]]
        else:
            raise ConfigError(f"mbpp: unknown split '{split}' (known: {', '.join(SPLIT_IDS)}, all)")
        if not records:
            raise DataError(f"{data}: no rows for split '{split}'")
        return unique((where, self._example(where, row)) for where, row in records)

    def _example(self, where: str, row: dict[str, Any]) -> Example:
        tests = get(where, row, "test_list", list)
        if not tests or not all(isinstance(t, str) for t in tests):
            raise DataError(f"{where}: 'test_list' must be a non-empty list of strings")
        for i, test in enumerate(tests):
            code_field(where, test, f"test_list[{i}]")
        setup = code_field(where, row.get("test_setup_code") or "", "test_setup_code")
        return Example(id=str(get(where, row, "task_id", int)), question=get(where, row, "text"),
                       answer=get(where, row, "code"), meta={"tests": tuple(tests), "setup": setup})

    def format(self, examples: list[Example], tokenizer: Any = None, chat: bool = False) -> list[str]:
        texts = [
            f"You are an expert Python programmer, and here is your task: {e.question} "
            f"Your code should pass these tests:\n\n" + "\n".join(e.meta["tests"]) + "\n[BEGIN]\n"
            for e in examples
        ]
        return chat_format(texts, tokenizer, chat)

    def parse(self, examples: list[Example], completions: list[str]) -> list[str]:
        return [extract_code(c) for _, c in zip(examples, completions, strict=True)]

    def programs(self, examples: list[Example], predictions: list[str]) -> list[str]:
        return [f"{e.meta['setup']}\n{code}\n\n" + "\n".join(e.meta["tests"]) + "\n"
                for e, code in zip(examples, predictions, strict=True)]


TASKS.register("mbpp", MBPP())
