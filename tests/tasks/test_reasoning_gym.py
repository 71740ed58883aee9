"""rg: reasoning-gym datasets as seeded splits that never share a question, scored by the dataset."""

from __future__ import annotations

import pytest

pytest.importorskip("reasoning_gym")

from transformer_squared.errors import ConfigError  # noqa: E402
from transformer_squared.tasks import get_task  # noqa: E402
from transformer_squared.tasks.reasoning_gym import extract_answer  # noqa: E402


def test_splits_are_disjoint_and_deterministic():
    task = get_task("rg")
    splits = {s: task.load("basic_arithmetic:40", s) for s in ("train", "valid", "test")}
    questions = {s: {e.question for e in ex} for s, ex in splits.items()}
    assert all(len(q) == 40 for q in questions.values())
    assert not (questions["train"] & questions["valid"] or questions["train"] & questions["test"]
                or questions["valid"] & questions["test"])
    assert [e.question for e in task.load("basic_arithmetic:40", "test")] == [e.question for e in splits["test"]]


def test_format_parse_score():
    task = get_task("rg")
    ex = task.load("gsm_symbolic:3", "test")
    assert task.format(ex)[0].startswith(ex[0].question) and "<answer>" in task.format(ex)[0]
    right = [f"Let me think.\n<answer>{e.answer}</answer>" for e in ex]
    wrong = ["<answer>-123456789</answer>"] * 3
    assert task.score(ex, task.parse(ex, right)) == [True] * 3
    assert task.score(ex, task.parse(ex, wrong)) == [False] * 3


@pytest.mark.parametrize("completion, answer", [
    ("<answer> 12 </answer>", "12"), ("<answer>1</answer> no, <answer>2</answer>", "2"), ("so\n\n 42 \n", "42"),
    ("", ""),
])
def test_extract_answer(completion, answer):
    assert extract_answer(completion) == answer


def test_bad_arguments():
    task = get_task("rg")
    with pytest.raises(ConfigError, match="not registered"):
        task.load("no_such_dataset", "test")
    with pytest.raises(ConfigError, match="unknown split"):
        task.load("basic_arithmetic", "dev")
    with pytest.raises(ConfigError, match="positive integer"):
        task.load("basic_arithmetic:many", "test")
    with pytest.raises(ConfigError, match="needs data"):
        task.load(None, "test")
