"""Task kinds: each kind's submission file, objective choice, graded letter rewards, the constant answer."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from transformer_squared.errors import ConfigError, DataError
from transformer_squared.tasks import get_task
from transformer_squared.tasks.base import Example
from transformer_squared.tasks.kinds import CODE, GENERATIVE, MULTIPLE_CHOICE, objective_of, right_or_wrong


def test_multiple_choice_submission_is_an_id_answer_csv():
    text = MULTIPLE_CHOICE.submission("s.csv", ["q1", "q2"], ["B", "F"], [" B", " F"])
    assert text == "id,answer\nq1,B\nq2,F\n"  # any option letter (VMLU's own writer allows only A-E)
    with pytest.raises(ConfigError, match=r"1 question\(s\) without a letter \(first: q2\).*--submission-protocol letter"):
        MULTIPLE_CHOICE.submission("s.csv", ["q1", "q2"], ["B", ""], ["B", "?"])
    with pytest.raises(DataError, match="s.csv: id 'q1' appears twice"):
        MULTIPLE_CHOICE.submission("s.csv", ["q1", "q1"], ["B", "C"], ["", ""])
    with pytest.raises(DataError, match="s.csv: prediction 'BC' for id 'q1' is not one letter"):
        MULTIPLE_CHOICE.submission("s.csv", ["q1"], ["BC"], [""])
    with pytest.raises(ConfigError, match="2 ids but 1 predictions"):
        MULTIPLE_CHOICE.submission("s.csv", ["q1", "q2"], ["B"], [""])


def test_vmlu_keeps_the_benchmark_writer():
    kind = get_task("vmlu").kind
    assert kind.submission("v.csv", ["01-0001"], ["E"], ["E"]) == "id,answer\n01-0001,E\n"
    with pytest.raises(DataError, match="not one letter A-E"):
        kind.submission("v.csv", ["01-0001"], ["F"], ["F"])  # the generic writer would take F
    assert get_task("mmlu").kind.submission("m.csv", ["x"], ["F"], [""]) == "id,answer\nx,F\n"


def test_generative_submission_is_jsonl_with_answer_and_completion():
    text = GENERATIVE.submission("g.jsonl", ["a", "b"], ["42", ""], ["so #### 42", "no idea, é"])
    assert [json.loads(line) for line in text.splitlines()] == [
        {"id": "a", "answer": "42", "completion": "so #### 42"}, {"id": "b", "answer": "", "completion": "no idea, é"}]
    assert "é" in text  # UTF-8 as is, not \\u escapes
    with pytest.raises(DataError, match="id 'a' appears twice"):
        GENERATIVE.submission("g.jsonl", ["a", "a"], ["1", "2"], ["", ""])


def test_code_submission_is_human_evals_samples_format():
    text = CODE.submission("c.jsonl", ["HumanEval/0"], ["    return 1\n"], ["```python\n    return 1\n```"])
    assert json.loads(text) == {"task_id": "HumanEval/0", "completion": "    return 1\n"}  # the extracted code


def test_objective_of_names_what_the_kind_offers():
    assert objective_of(MULTIPLE_CHOICE, "vmlu", "auto") == "exact-letters"
    assert objective_of(MULTIPLE_CHOICE, "vmlu", "sample") == "sampled-letters"
    assert objective_of(GENERATIVE, "gsm8k", "auto") == objective_of(CODE, "mbpp", "sample") == "rollouts"
    with pytest.raises(ConfigError, match="objective 'exact': task 'gsm8k' is generate, which offers sample"):
        objective_of(GENERATIVE, "gsm8k", "exact")


@dataclass
class NearMiss:
    """Multiple choice with a graded reward: the gold letter 1, the letter after it 0.5, the others −1."""

    name: str = "near-miss"

    def reward(self, examples, predictions):
        out = []
        for e, p in zip(examples, predictions):
            near = e.letters[(e.letters.index(e.answer) + 1) % len(e.letters)]
            out.append(1.0 if p == e.answer else 0.5 if p == near else -1.0)
        return out


def test_letter_rewards_ask_the_task_for_every_letter():
    ex = [Example("a", "Q?", "B", ("x", "y", "z")), Example("b", "Q?", "A", ("x", "y")), Example("c", "Q?", "C", ("x", "y", "z"))]
    assert MULTIPLE_CHOICE.letter_rewards(NearMiss(), ex) == [[-1.0, 1.0, 0.5], [1.0, 0.5], [0.5, -1.0, 1.0]]
    mcq = get_task("mcq")
    assert MULTIPLE_CHOICE.letter_rewards(mcq, ex[:1]) == [[-1.0, 1.0, -1.0]]  # the default: ±1
    assert right_or_wrong([True, False]) == [1.0, -1.0]


def test_generative_constant_is_the_most_frequent_training_answer():
    train = [Example(str(i), "Q", a) for i, a in enumerate(["7", "3", "7", "3", "12", ""])]
    const = GENERATIVE.constant(get_task("gsm8k"), train, train[:2])
    assert const.predictions == ["3", "3"] and const.best == "3"  # 7 and 3 tie at two: the smaller string
    with pytest.raises(DataError, match="no labelled question"):
        GENERATIVE.constant(get_task("gsm8k"), [Example("x", "Q", "")], train)
