"""Task families behind one `Task` protocol; importing this package registers them all in `TASKS`."""

from __future__ import annotations

import dataclasses

from . import arc, gsm8k, humaneval, math, mbpp, mcq, mmlu, reasoning_gym, route, vmlu  # noqa: F401  (they register)
from .base import TASKS, Example, Task


def get_task(name: str, unsafe_exec: bool = False) -> Task:
    """The registered task `name` (an unknown name lists the known ones).

    `unsafe_exec` gives code tasks a copy that runs generated code unconfined where bubblewrap cannot run.
    """
    task = TASKS.get(name)
    if unsafe_exec and dataclasses.is_dataclass(task) and hasattr(task, "unsafe_exec"):
        task = dataclasses.replace(task, unsafe_exec=True)
    return task


__all__ = ["TASKS", "Example", "Task", "get_task"]
