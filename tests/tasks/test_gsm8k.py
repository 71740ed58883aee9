"""GSM8K: the reference after "####", the last number of a completion, number normalisation."""

from __future__ import annotations

import pytest

from transformer_squared.errors import DataError
from transformer_squared.tasks import get_task
from transformer_squared.tasks.gsm8k import extract_answer, normalize_number


@pytest.mark.parametrize("text, number", [
    ("1,000", "1000"), ("$12", "12"), ("7.0", "7"), ("3.50", "3.5"), ("-4", "-4"), ("so 18.", "18"),
    ("no digits", ""), ("0.25 and then 42", "42"),
])
def test_normalize_number(text, number):
    assert normalize_number(text) == number


@pytest.mark.parametrize("completion, answer", [
    ("She has 3 + 4 = 7 apples.\n#### 7", "7"),
    ("#### 1,250\nQuestion: next one has 99 cats", "1250"),
    ("Total is 5 * 2 = 10 dollars.", "10"),
    ("The answer is $1,234.00.", "1234"),
    ("I do not know.", ""),
])
def test_extract_answer(completion, answer):
    assert extract_answer(completion) == answer


def test_load_format_score(tmp_path, jsonl):
    jsonl(tmp_path / "test.jsonl", [
        {"question": "Tom has 2 pens and buys 3 more. How many pens?", "answer": "2 + 3 = <<2+3=5>>5\n#### 5"},
        {"question": "A box holds 1,200 nails; 200 are used. How many remain?", "answer": "1200-200=1000\n#### 1,000"},
    ])
    jsonl(tmp_path / "train.jsonl", [])
    task = get_task("gsm8k")
    ex = task.load(str(tmp_path), "test")
    assert [e.answer for e in ex] == ["5", "1000"]
    assert task.format(ex)[0].endswith("Question: Tom has 2 pens and buys 3 more. How many pens?\nAnswer:")
    assert task.score(ex, task.parse(ex, ["2+3 = 5\n#### 5", "so 1000.0 remain, not 1,200"])) == [True, False]


def test_reference_needs_a_final_number(tmp_path, jsonl):
    path = jsonl(tmp_path / "gsm.jsonl", [{"question": "q", "answer": "five"}])
    with pytest.raises(DataError, match=f"{path}:1: answer has no"):
        get_task("gsm8k").load(str(path), "test")
