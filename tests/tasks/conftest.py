"""Helpers for task tests: write small files in the original formats, and a stand-in chat tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """Rows as JSONL (a str row is written as the raw line, to test broken input)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class ChatTokenizer:
    """A tokenizer stand-in whose chat template is easy to spell out in a test."""

    chat_template = "<user>{content}</user><assistant>"

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool, tokenize: bool) -> str:
        assert add_generation_prompt is True and tokenize is False
        assert [m["role"] for m in messages] == ["user"]
        return f"<user>{messages[0]['content']}</user><assistant>"


@pytest.fixture()
def jsonl() -> Callable[[Path, list[Any]], Path]:
    return write_jsonl


@pytest.fixture()
def chat_tokenizer() -> ChatTokenizer:
    return ChatTokenizer()
