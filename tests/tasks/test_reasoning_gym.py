"""rg: reasoning-gym datasets as seeded splits that never share a question, scored by the dataset."""

from __future__ import annotations

import pytest

pytest.importorskip("reasoning_gym")

from transformer_squared.errors import ConfigError  # noqa: E402
from transformer_squared.tasks import get_task  # noqa: E402
from transformer_squared.tasks.reasoning_gym import extract_answer, parse_data  # noqa: E402


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
    with pytest.raises(ConfigError, match="positive integer"):
        task.load("basic_arithmetic:0", "test")
    with pytest.raises(ConfigError, match="needs data"):
        task.load(None, "test")


def test_generator_parameters_shape_the_questions():
    import re

    task = get_task("rg")
    ex = task.load("basic_arithmetic:30:min_terms=2,max_terms=2,min_digits=2,max_digits=2,operators=+|-,"
                   "allow_parentheses=false,allow_negation=false", "test")
    for e in ex:  # checked from the text itself: two terms of at most 2 digits joined by + or -
        m = re.fullmatch(r"Calculate (\d+) ([+-]) (\d+)\.", e.question)
        assert m and all(len(m[i]) <= 2 for i in (1, 3)), e.question
        assert int(e.answer) == (int(m[1]) + int(m[3]) if m[2] == "+" else int(m[1]) - int(m[3]))
    default = task.load("basic_arithmetic:30", "test")  # 2-6 terms, up to 4 digits, × and ÷ too
    assert sum(not re.fullmatch(r"Calculate -?\d{1,2} [+-] -?\d{1,2}\.", e.question) for e in default) > 20


def test_parse_data_types_and_errors():
    assert parse_data("basic_arithmetic") == ("basic_arithmetic", None, {})
    assert parse_data("basic_arithmetic:min_terms=3, operators=*,allow_negation=False") == (
        "basic_arithmetic", None, {"min_terms": 3, "operators": ["*"], "allow_negation": False})
    assert parse_data("number_sorting:7:max_value=9.5") == ("number_sorting", 7, {"max_value": 9.5})
    # typed by the annotations: Optional[list[str]] with one item is still a list; a Literal is checked
    assert parse_data("calendar_arithmetic:tasks=weekday_of_date") == ("calendar_arithmetic", None,
                                                                       {"tasks": ["weekday_of_date"]})
    with pytest.raises(ConfigError, match="format_style=fancy: choose one of simple, natural"):
        parse_data("basic_arithmetic:format_style=fancy")
    with pytest.raises(ConfigError, match="did you mean 'min_terms'.*known: min_terms, max_terms"):
        parse_data("basic_arithmetic:min_term=2")
    with pytest.raises(ConfigError, match="min_terms=two is not a int"):
        parse_data("basic_arithmetic:min_terms=two")
    with pytest.raises(ConfigError, match="allow_negation=maybe is not a bool"):
        parse_data("basic_arithmetic:allow_negation=maybe")
    with pytest.raises(ConfigError, match="one comma-separated list"):
        parse_data("basic_arithmetic:min_terms=2:max_terms=2")
    with pytest.raises(ConfigError, match="max_terms must be >= min_terms"):  # the generator's own check
        get_task("rg").load("basic_arithmetic:5:min_terms=3,max_terms=2", "test")


def test_several_datasets_make_one_mixed_task():
    task = get_task("rg")
    mixed = task.load("basic_arithmetic:4:max_terms=2; spell_backward:3", "test")
    assert [e.subject for e in mixed] == ["basic_arithmetic"] * 4 + ["spell_backward"] * 3
    assert [e.category for e in mixed] == [e.subject for e in mixed]
    alone = task.load("spell_backward:3", "test")
    assert [e.question for e in mixed[4:]] == [e.question for e in alone]  # each dataset as if loaded alone
    right = [f"<answer>{e.answer}</answer>" for e in mixed]
    assert task.score(mixed, task.parse(mixed, right)) == [True] * 7  # each scored by its own dataset
    assert len({e.id for e in mixed}) == 7
    with pytest.raises(ConfigError, match="names a dataset twice"):
        task.load("spell_backward:3;spell_backward:4", "test")


def test_direct_variant_asks_for_the_answer_only():
    ex = get_task("rg").load("basic_arithmetic:2", "test")
    direct = get_task("rg-direct")
    assert [e.question for e in direct.load("basic_arithmetic:2", "test")] == [e.question for e in ex]
    prompt = direct.format(ex)[0]
    assert prompt.startswith(ex[0].question) and "no explanation" in prompt and "step by step" not in prompt
