"""Every registered task: loads a tiny file in its own format, formats (plain and chat), parses and scores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

from transformer_squared.errors import RegistryError
from transformer_squared.tasks import TASKS, Example, get_task


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
    assert task.name == name and isinstance(task.version, str) and task.kind in ("mcq", "generate")
    assert isinstance(task.categories, tuple)
    data, split = WRITERS[name](tmp_path)
    ex = task.load(data, split)
    assert ex and all(isinstance(e, Example) and e.id for e in ex)
    assert len({e.id for e in ex}) == len(ex)
    if task.categories:
        assert all(e.category in task.categories for e in ex)
    if task.kind == "mcq":
        assert all(e.answer in e.letters for e in ex)
    prompts = task.format(ex)
    assert len(prompts) == len(ex) and all(isinstance(p, str) and p for p in prompts)
    assert task.format(ex, chat_tokenizer, chat=True) == [f"<user>{p}</user><assistant>" for p in prompts]
    right = [right_answer(name, e) for e in ex]
    assert task.score(ex, task.parse(ex, right)) == [True] * len(ex)
    assert task.score(ex, task.parse(ex, ["I am not sure."] * len(ex))) == [False] * len(ex)
