"""Task families behind one `Task` protocol; importing this package registers them all in `TASKS`."""

from __future__ import annotations

from . import arc, gsm8k, humaneval, math, mbpp, mcq, mmlu, reasoning_gym, vmlu  # noqa: F401  (they register)
from .base import TASKS, Example, Task


def get_task(name: str) -> Task:
    """The registered task `name` (an unknown name lists the known ones)."""
    return TASKS.get(name)


__all__ = ["TASKS", "Example", "Task", "get_task"]
