"""Bring-your-own MCQ and AI2 ARC: layouts, letters from indices and numeric labels, prompt."""

from __future__ import annotations

import pytest

from transformer_squared.errors import ConfigError, DataError
from transformer_squared.tasks import get_task


def test_mcq_answers_as_letter_or_index(tmp_path, jsonl):
    path = jsonl(tmp_path / "quiz.jsonl", [
        {"question": "Largest planet?", "choices": ["Mars", "Jupiter", "Venus"], "answer": "B", "subject": "astro"},
        {"id": "q7", "question": "Boiling point of water (C)?", "choices": ["90", "100"], "answer": 1,
         "category": "science"},
    ])
    task = get_task("mcq")
    ex = task.load(str(path), "test")
    assert [(e.id, e.answer, e.subject, e.category) for e in ex] == [
        ("1", "B", "astro", ""), ("q7", "B", "", "science")]
    assert task.format(ex)[0] == "Largest planet?\nA. Mars\nB. Jupiter\nC. Venus\nAnswer:"
    assert task.score(ex, task.parse(ex, [" B) Jupiter", "A"])) == [True, False]


@pytest.mark.parametrize("row, message", [
    ({"question": "q", "choices": ["a", "b"], "answer": 2}, "not among the 2 choices"),
    ({"question": "q", "choices": ["a", "b"], "answer": "b"}, "not among the 2 choices"),
    ({"question": "q", "choices": "ab", "answer": "A"}, "field 'choices' must be list"),
    ({"question": "q", "choices": ["a", 3], "answer": "A"}, "choice 1 must be a string"),
    ({"question": "q", "choices": ["a"], "answer": True}, "field 'answer' must be str or int"),
    ({"id": "1", "question": "q", "choices": ["a"], "answer": "A"}, "duplicate id '1'"),
])
def test_mcq_bad_rows(tmp_path, jsonl, row, message):
    path = jsonl(tmp_path / "quiz.jsonl", [{"question": "q", "choices": ["a"], "answer": "A"}, row])
    with pytest.raises(DataError, match=message) as err:
        get_task("mcq").load(str(path), "test")
    assert str(err.value).startswith(f"{path}:2: ")


def test_mcq_needs_data():
    with pytest.raises(ConfigError, match="needs data"):
        get_task("mcq").load(None, "test")


def test_arc_original_layout_with_numeric_labels(tmp_path, jsonl):
    jsonl(tmp_path / "ARC-Challenge-Test.jsonl", [
        {"id": "Q1", "question": {"stem": "Which is a gas?", "choices": [
            {"text": "ice", "label": "A"}, {"text": "steam", "label": "B"}, {"text": "rock", "label": "C"}]},
         "answerKey": "B"},
        {"id": "Q2", "question": {"stem": "Pick four.", "choices": [
            {"text": "one", "label": "1"}, {"text": "two", "label": "2"}, {"text": "three", "label": "3"},
            {"text": "four", "label": "4"}]}, "answerKey": "4"},
    ])
    jsonl(tmp_path / "ARC-Challenge-Dev.jsonl", [])
    task = get_task("arc")
    ex = task.load(str(tmp_path), "test")
    assert [(e.id, e.answer, e.choices) for e in ex] == [
        ("Q1", "B", ("ice", "steam", "rock")), ("Q2", "D", ("one", "two", "three", "four"))]
    assert task.format(ex)[1] == "Pick four.\nA. one\nB. two\nC. three\nD. four\nAnswer:"


def test_arc_hub_layout(tmp_path, jsonl):
    path = jsonl(tmp_path / "arc.jsonl", [
        {"id": "H1", "question": "Which is a metal?", "choices": {"text": ["wood", "iron"], "label": ["A", "B"]},
         "answerKey": "B"},
    ])
    task = get_task("arc")
    ex = task.load(str(path), "test")
    assert ex[0].answer == "B" and task.score(ex, task.parse(ex, ["B"])) == [True]


def test_arc_answer_key_must_be_a_label(tmp_path, jsonl):
    path = jsonl(tmp_path / "arc.jsonl", [
        {"id": "H1", "question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "3"}])
    with pytest.raises(DataError, match=f"{path}:1: answerKey '3' is not among the labels"):
        get_task("arc").load(str(path), "test")
