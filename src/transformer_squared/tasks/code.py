"""What the code tasks (HumanEval, MBPP) share: the sandbox limits, scoring by running each program, checked code fields.

A program passes only when the sandbox's runner saw it return (sandbox/runner.py): one that ends
before its checks (sys.exit, os._exit, atexit) fails, and `runs` says so (`exited`), which training
counts as reward hacking. Data fields that become a name or code are checked when a split is loaded.
"""

from __future__ import annotations

import ast
import keyword
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from ..errors import DataError
from ..sandbox.bwrap import SandboxResult, run_many
from .base import Example
from .kinds import right_or_wrong


@dataclass
class CodeTask(ABC):
    """The base of HumanEval and MBPP: each builds its programs, this runs them."""

    timeout_s: float = 5  # per program, in the sandbox
    memory_mb: int = 512  # per program, in the sandbox
    unsafe_exec: bool = False  # where bubblewrap cannot run, run programs unconfined instead of refusing

    @abstractmethod
    def programs(self, examples: list[Example], predictions: list[str]) -> list[str]:
        """The Python program that checks each prediction."""

    def runs(self, examples: list[Example], predictions: list[str]) -> list[SandboxResult]:
        """Each prediction's program run in the sandbox: whether it passed, and if not how it ended."""
        return run_many(self.programs(examples, predictions), self.timeout_s, self.memory_mb,
                        unsafe_exec=self.unsafe_exec)

    def score(self, examples: list[Example], predictions: list[str]) -> list[bool]:
        return [r.passed for r in self.runs(examples, predictions)]

    def reward(self, examples: list[Example], predictions: list[str]) -> list[float]:
        """+1 for a passing program, −1 otherwise (training reads `runs` directly, to count early exits too)."""
        return right_or_wrong(self.score(examples, predictions))


def name_field(where: str, row: dict[str, Any], key: str) -> str:
    """A field that the program uses as a Python name (HumanEval's `entry_point`): an identifier, not a keyword."""
    value = row.get(key)
    if not isinstance(value, str) or not value.isidentifier() or keyword.iskeyword(value):
        raise DataError(f"{where}: field '{key}' must be a Python name, got {str(value)[:80]!r}")
    return value


def code_field(where: str, value: str, key: str, defines: str | None = None) -> str:
    """A field that the program runs as code: it must parse (and define function `defines`, if given)."""
    try:
        tree = ast.parse(value)
    except (SyntaxError, ValueError) as e:
        raise DataError(f"{where}: field '{key}' is not valid Python ({getattr(e, 'msg', e)}, "
                        f"line {getattr(e, 'lineno', '?')})") from None
    if defines and not any(isinstance(n, ast.FunctionDef) and n.name == defines for n in tree.body):
        raise DataError(f"{where}: field '{key}' must define a function '{defines}'")
    return value
