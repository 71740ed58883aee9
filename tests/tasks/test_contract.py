"""Every registered task: loads a tiny file in its own format, formats (plain and chat), parses, scores and
rewards; its kind reads answers from a model, offers training objectives, writes a submission and a constant answer."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path
from typing import Callable

import pytest
import torch

from transformer_squared.errors import ConfigError, RegistryError
from transformer_squared.tasks import TASKS, Example, get_task
from transformer_squared.tasks.kinds import CodeKind, GenerativeKind, ModelCalls, MultipleChoiceKind, objective_of
from transformer_squared.training.rollout import OBJECTIVES


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def vmlu(tmp: Path) -> tuple[str, str]:
    write_jsonl(tmp / "dev.jsonl", [{"id": "07-0001", "question": "Q?", "choices": ["A. x", "B. y"], "answer": "B"}])
    return str(tmp), "dev"


def mmlu(tmp: Path) -> tuple[str, str]:
    row = {"question": "Q?", "answer_a": "w", "answer_b": "x", "answer_c": "y", "answer_d": "z",
           "correct_answer": "D", "topic": "anatomy"}
    return str(write_jsonl(tmp / "mmlu.jsonl", [row])), "test"


def mcq(tmp: Path) -> tuple[str, str]:
    return str(write_jsonl(tmp / "q.jsonl", [{"question": "Q?", "choices": ["x", "y", "z"], "answer": 2}])), "test"


def arc(tmp: Path) -> tuple[str, str]:
    choices = [{"label": "1", "text": "x"}, {"label": "2", "text": "y"}]
    row = {"id": "A1", "question": {"stem": "Q?", "choices": choices},
           "answerKey": "1"}
    return str(write_jsonl(tmp / "arc.jsonl", [row])), "test"


def gsm8k(tmp: Path) -> tuple[str, str]:
    return str(write_jsonl(tmp / "test.jsonl", [{"question": "1 + 1?", "answer": "1+1=2\n#### 2"}])), "test"


def math(tmp: Path) -> tuple[str, str]:
    row = {"problem": "1 + 1?", "solution": "$\\boxed{2}$", "type": "Prealgebra"}
    return str(write_jsonl(tmp / "m.jsonl", [row])), "test"


def mbpp(tmp: Path) -> tuple[str, str]:
    row = {"task_id": 11, "text": "Return one.", "code": "def one():\n    return 1", "test_list": ["assert one() == 1"]}
    return str(write_jsonl(tmp / "mbpp.jsonl", [row])), "test"


def humaneval(tmp: Path) -> tuple[str, str]:
    row = {"task_id": "T/0", "prompt": "def one():\n", "canonical_solution": "    return 1\n", "entry_point": "one",
           "test": "def check(f):\n    assert f() == 1\n"}
    return str(write_jsonl(tmp / "he.jsonl", [row])), "test"


def rg(tmp: Path) -> tuple[str, str]:
    pytest.importorskip("reasoning_gym")
    return "basic_arithmetic:2", "test"


def route(tmp: Path) -> tuple[str, str]:
    """Two `t2 train` run folders (metadata and split.json only), two questions each of an mcq file."""
    data = write_jsonl(tmp / "q.jsonl", [{"id": f"q{i}", "question": f"Q{i}?", "choices": ["x", "y"], "answer": 0}
                                         for i in range(4)])
    folders = []
    for k in range(2):
        (tmp / f"run{k}" / "best").mkdir(parents=True)
        (tmp / f"run{k}" / "best" / "expert.json").write_text(json.dumps({"label": f"e{k}", "task": "mcq"}))
        split = {"task": "mcq", "data": str(data), "splits": ["test"], "ids": {"train": [f"q{2 * k}"], "val": [f"q{2 * k + 1}"]}}
        (tmp / f"run{k}" / "split.json").write_text(json.dumps(split), encoding="utf-8")
        folders.append(str(tmp / f"run{k}" / "best"))
    return "|".join(folders), "train"


def right_answer(name: str, e: Example) -> str:
    """A completion the task should score as correct."""
    if e.choices:
        return f" {e.answer}"
    return {"gsm8k": f"#### {e.answer}", "math": f"\\boxed{{{e.answer}}}", "rg": f"<answer>{e.answer}</answer>",
            "rg-direct": f"<answer>{e.answer}</answer>",
            "mbpp": f"{e.answer}\n[DONE]", "humaneval": e.answer}[name]


WRITERS: dict[str, Callable[[Path], tuple[str, str]]] = {
    "vmlu": vmlu, "mmlu": mmlu, "mcq": mcq, "arc": arc, "gsm8k": gsm8k, "math": math, "mbpp": mbpp,
    "humaneval": humaneval, "rg": rg, "rg-direct": rg, "route": route,
}


def test_every_registered_task_is_covered():
    assert set(TASKS.names()) == set(WRITERS)
    with pytest.raises(RegistryError, match="did you mean 'vmlu'"):
        get_task("vmlx")


SANDBOXED = {"mbpp", "humaneval"}  # score by running code in the sandbox


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.needs_bwrap) if n in SANDBOXED else n
                                  for n in sorted(WRITERS)])
def test_task_contract(name, tmp_path, chat_tokenizer):
    task = get_task(name)
    assert task.name == name and isinstance(task.version, str)
    assert isinstance(task.categories, tuple)
    data, split = WRITERS[name](tmp_path)
    ex = task.load(data, split)
    assert ex and all(isinstance(e, Example) and e.id for e in ex)
    assert len({e.id for e in ex}) == len(ex)
    if task.categories:
        assert all(e.category in task.categories for e in ex)
    if task.kind.letters:
        assert all(e.answer in e.letters for e in ex)
    prompts = task.format(ex)
    assert len(prompts) == len(ex) and all(isinstance(p, str) and p for p in prompts)
    assert task.format(ex, chat_tokenizer, chat=True) == [f"<user>{p}</user><assistant>" for p in prompts]
    right = [right_answer(name, e) for e in ex]
    assert task.score(ex, task.parse(ex, right)) == [True] * len(ex)
    assert task.score(ex, task.parse(ex, ["I am not sure."] * len(ex))) == [False] * len(ex)
    assert task.reward(ex, task.parse(ex, right)) == [1.0] * len(ex)  # the paper's ±1
    assert task.reward(ex, task.parse(ex, ["I am not sure."] * len(ex))) == [-1.0] * len(ex)


KINDS = {"vmlu": "mcq", "mmlu": "mcq", "mcq": "mcq", "arc": "mcq", "route": "mcq", "gsm8k": "generate",
         "math": "generate", "rg": "generate", "rg-direct": "generate", "mbpp": "code", "humaneval": "code"}


def _calls(name: str, ex: list[Example]) -> ModelCalls:
    """A model that answers every question right: the gold letter's text and log-probs peaked on it, or a right completion."""
    def letters(prompts, letter_sets):
        assert len(prompts) == len(ex) and letter_sets == [e.letters for e in ex]
        logp = [torch.log_softmax(torch.tensor([4.0 if x == e.answer else 0.0 for x in e.letters]), 0) for e in ex]
        return [f" {e.answer}" for e in ex], logp

    return ModelCalls(letters, lambda prompts: [right_answer(name, e) for e in ex])


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_kind_contract(name, tmp_path):
    """Each task's kind: its protocols, its answers read from a model, objectives, submission and constant answer."""
    task = get_task(name)
    kind = task.kind
    assert kind.name == KINDS[name] and set(KINDS) == set(WRITERS)
    assert isinstance(kind, {"mcq": MultipleChoiceKind, "generate": GenerativeKind, "code": CodeKind}[kind.name])
    assert kind.selection in kind.protocols and kind.letters == (kind.name == "mcq")
    assert all(OBJECTIVES.get(v) for v in kind.objectives.values())  # every objective the kind names exists
    assert objective_of(kind, name, "auto") == ("exact-letters" if kind.letters else "rollouts")
    data, split = WRITERS[name](tmp_path)
    ex = task.load(data, split)
    answers = kind.predict(task, ex, task.format(ex), _calls(name, ex))
    assert set(answers.predictions) == set(kind.protocols) and len(answers.completions) == len(ex)
    for protocol in kind.protocols:
        assert task.score(ex, answers.predictions[protocol]) == [True] * len(ex), protocol
    assert (answers.letter_logp is not None) == kind.letters
    preds = answers.predictions[kind.selection]
    if not kind.letters:  # rollouts: the float reward of each answer, and whether its program ended early
        assert kind.rollout_rewards(task, ex, preds) == ([1.0] * len(ex), [False] * len(ex))
    text = kind.submission(tmp_path / "sub", [e.id for e in ex], preds, answers.completions)
    if kind.name == "mcq":
        assert list(csv.reader(io.StringIO(text))) == [["id", "answer"]] + [[e.id, e.answer] for e in ex]
    elif kind.name == "generate":
        assert [json.loads(line) for line in text.splitlines()] == [
            {"id": e.id, "answer": p, "completion": c} for e, p, c in zip(ex, preds, answers.completions)]
    else:
        assert [json.loads(line) for line in text.splitlines()] == [{"task_id": e.id, "completion": p} for e, p in zip(ex, preds)]
    if kind.name == "code":
        with pytest.raises(ConfigError, match="code task"):
            kind.constant(task, ex, ex)
    else:
        const = kind.constant(task, ex, ex)
        counts = Counter(e.answer for e in ex)
        assert const.best == min(counts, key=lambda a: (-counts[a], a))  # most frequent, ties: the first in order
        assert const.predictions == [const.best if not kind.letters or const.best in e.letters else e.letters[0]
                                     for e in ex]
