"""MATH: the last \\boxed{} with nested braces, the answer normaliser, both data layouts."""

from __future__ import annotations

import json

import pytest

from transformer_squared.errors import DataError
from transformer_squared.tasks import get_task
from transformer_squared.tasks.math import last_boxed, normalize_answer


@pytest.mark.parametrize("text, boxed", [
    ("so $\\boxed{5}$.", "5"),
    ("first \\boxed{1} then \\boxed{\\frac{a}{b^{2}}}", "\\frac{a}{b^{2}}"),
    ("\\fbox{x+1}", "x+1"),
    ("\\boxed 7$ done", "7"),
    ("\\boxed{unclosed", None),
    ("no box", None),
])
def test_last_boxed(text, boxed):
    assert last_boxed(text) == boxed


@pytest.mark.parametrize("raw, canonical", [
    ("\\dfrac{1}{2}", "\\frac{1}{2}"), ("\\tfrac12", "\\frac{1}{2}"), ("\\frac1{2}", "\\frac{1}{2}"),
    ("0.5", "\\frac{1}{2}"), ("3/4", "\\frac{3}{4}"), ("\\left( 1, 2 \\right)", "(1,2)"), ("10\\%", "10"),
    ("90^\\circ", "90"), ("\\$5", "5"), ("x = 3", "3"), ("5 \\text{ cm}", "5"), ("\\sqrt2", "\\sqrt{2}"),
    (".25", "0.25"), (".5", "\\frac{1}{2}"), ("12.", "12"), ("a\\!b", "ab"), ("\\frac{1}2", "\\frac{1}{2}"),
])
def test_normalize_answer(raw, canonical):
    assert normalize_answer(raw) == canonical


def test_jsonl_layout(tmp_path, jsonl):
    path = jsonl(tmp_path / "math.jsonl", [
        {"problem": "What is $1/2 + 0$?", "solution": "It is $\\boxed{\\dfrac{1}{2}}$.", "level": "Level 1",
         "type": "Prealgebra"},
    ])
    task = get_task("math")
    ex = task.load(str(path), "test")
    assert ex[0].answer == "\\frac{1}{2}" and ex[0].category == "Prealgebra" and ex[0].meta["level"] == "Level 1"
    assert task.format(ex)[0].endswith("Problem: What is $1/2 + 0$?\nSolution:")
    assert task.score(ex, task.parse(ex, ["... = \\boxed{0.5}"])) == [True]
    assert task.score(ex, task.parse(ex, ["\\boxed{1/3}"])) == [False]
    assert task.score(ex, task.parse(ex, ["one half"])) == [False]


def test_original_folder_layout(tmp_path):
    folder = tmp_path / "MATH" / "test" / "algebra"
    folder.mkdir(parents=True)
    (folder / "12.json").write_text(json.dumps({"problem": "Solve $x+1=3$.", "solution": "$x=\\boxed{2}$",
                                                "level": "Level 2", "type": "Algebra"}))
    ex = get_task("math").load(str(tmp_path / "MATH"), "test")
    assert [(e.id, e.answer, e.category) for e in ex] == [("algebra/12", "2", "Algebra")]


def test_solution_needs_a_boxed_answer(tmp_path, jsonl):
    path = jsonl(tmp_path / "math.jsonl", [{"problem": "p", "solution": "the answer is 4"}])
    with pytest.raises(DataError, match=f"{path}:1: solution has no"):
        get_task("math").load(str(path), "test")
