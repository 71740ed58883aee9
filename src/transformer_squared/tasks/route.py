"""Routing as a task (paper §3.2): which expert should answer a request. The classification prompt
shared by the `prompt` and `cls` strategies, and `route`, the task a classification expert trains on.

The prompt lists the experts as lettered options ("A. label: description") plus "other" (the base
weights), then the request; the answer is one letter, read from next-token log-probabilities.
"""

from __future__ import annotations

from typing import Any

from .base import Example, chat_format
from .io import LETTERS

OTHER = "other: none of the above; answer with the base model"
HEADER = "Choose the expert best suited to answer the request below, by the skill it needs most."


def expert_options(labels: list[str], descriptions: list[str]) -> list[str]:
    """The option lines' texts: "label: description" per expert, then "other"."""
    opts = [f"{lab}: {d}" if d else lab for lab, d in zip(labels, descriptions, strict=True)]
    return opts + [OTHER]


def request_text(example: Example) -> str:
    """What the classifier sees of a task question: its text, and the options of a multiple-choice one."""
    if not example.choices:
        return example.question
    return example.question + "\n" + "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(example.choices))


def routing_prompt(text: str, options: list[str]) -> str:
    """The classification prompt for one request over lettered options (the last is "other")."""
    lines = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
    return f"{HEADER}\n\nExperts:\n{lines}\n\nRequest:\n{text}\n\nReply with the letter of the expert.\nExpert:"


def routing_prompts(texts: list[str], options: list[str], tokenizer: Any = None, chat: bool = False) -> list[str]:
    """`routing_prompt` for each text, wrapped in the chat template with `chat`."""
    return chat_format([routing_prompt(t, options) for t in texts], tokenizer, chat)
