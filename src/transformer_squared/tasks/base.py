"""The `Task` protocol: load a split, format prompts, parse answers, score and reward them (STYLE §3).

A task is data wherever possible: its splits, prompt template, option letters and a
subject → category table. Python is for parsing and rewards only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ConfigError
from ..registry import Registry

if TYPE_CHECKING:  # kinds imports io, which imports this module
    from .kinds import TaskKind


@dataclass(frozen=True)
class Example:
    """One question. For multiple choice `answer` is a letter and `choices` the option texts."""

    id: str  # stable id, unique within a split (VMLU: "SS-NNNN")
    question: str  # the question text as given by the data
    answer: str  # gold answer: a letter for MCQ, the reference answer otherwise ("" if hidden)
    choices: tuple[str, ...] = ()  # option texts, without "A. " prefixes
    subject: str = ""  # subject id or name
    category: str = ""  # one of the task's categories
    meta: dict[str, Any] = field(default_factory=dict, compare=False)  # task-specific (tests, ...)

    @property
    def letters(self) -> tuple[str, ...]:
        """Valid option symbols for MCQ: "A", "B", ..., or the task's own (`meta["letters"]`: route's numbers)."""
        if "letters" in self.meta:
            return tuple(self.meta["letters"])
        return tuple(chr(ord("A") + i) for i in range(len(self.choices)))


class Task(Protocol):
    """A task family. Batched methods: a list in, a list out, same order."""

    name: str  # registry name
    version: str  # bumped whenever prompts, parsing or data handling change
    kind: TaskKind  # multiple choice, generative or code (tasks/kinds.py): protocols, objective, submission
    categories: tuple[str, ...]  # category names in report order (may be empty)

    def load(self, data: str | None, split: str) -> list[Example]:
        """Read a split from a local folder/file or a Hugging Face dataset id."""
        ...

    def format(self, examples: list[Example], tokenizer: Any = None, chat: bool = False) -> list[str]:
        """Prompt strings; with `chat` the tokenizer's chat template is applied."""
        ...

    def parse(self, examples: list[Example], completions: list[str]) -> list[str]:
        """Extract each prediction from generated text (MCQ: a letter or "")."""
        ...

    def score(self, examples: list[Example], predictions: list[str]) -> list[bool]:
        """Whether each prediction is correct (code tasks run their tests in the sandbox)."""
        ...

    def reward(self, examples: list[Example], predictions: list[str]) -> list[float]:
        """The RL reward of each prediction, a float (usually `kinds.right_or_wrong(self.score(...))`: ±1)."""
        ...


TASKS: Registry[Task] = Registry("task")


def uses_chat(tokenizer: Any, chat: bool | None) -> bool:
    """Whether prompts get the chat template: `chat` True (ConfigError naming the model when its tokenizer has
    none), None = if the tokenizer has one, False = never. The one chat policy of tasks, generation and pass 1."""
    has_template = tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
    if chat is None:
        return has_template
    if chat and not has_template:
        name = getattr(tokenizer, "name_or_path", "") or "the model"
        raise ConfigError(f"{name}: chat=True needs a chat template and its tokenizer has none; ask for plain prompts "
                          "(chat: false, t2 generate --no-chat) or for the template only if available (chat: null)")
    return bool(chat)


def chat_format(texts: list[str], tokenizer: Any = None, chat: bool | None = False) -> list[str]:
    """Each text as one user turn of the tokenizer's chat template when `uses_chat(tokenizer, chat)`; else the texts."""
    if not uses_chat(tokenizer, chat):
        return list(texts)
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False)
        for t in texts
    ]
