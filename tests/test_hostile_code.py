"""`t2 eval` on tests/data/hostile_code.jsonl: every attack scores 0; only the documented harness limit passes.

The "model" answers each prompt with its row's `canonical_solution` (AdaptedModel.generate replaced), so each
row's attack is exactly what the task parses and the sandbox runs. Issue 19: on the old sandbox the exit
tricks, the forged token and the resource tricks all scored 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from transformer_squared.cli import main
from transformer_squared.experts.adapted import AdaptedModel

HOSTILE = Path(__file__).parent / "data" / "hostile_code.jsonl"
ROWS = [json.loads(line) for line in HOSTILE.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def answers_with_the_canonical_solution(monkeypatch):
    by_prompt = {row["prompt"]: row["canonical_solution"] for row in ROWS}
    monkeypatch.setattr(AdaptedModel, "generate", lambda self, prompts, *a, **k: [by_prompt[p] for p in prompts])


def _eval(model_dir: Path, data: Path, out: Path) -> None:
    main(["eval", "--model", str(model_dir), "--task", "humaneval", "--data", str(data), "--split", "test",
          "--device", "cpu", "--out", str(out)])


@pytest.mark.needs_bwrap
def test_every_attack_scores_zero_except_the_documented_harness_limits(tiny_model_dir, tmp_path,
                                                                       answers_with_the_canonical_solution):
    out = tmp_path / "r.json"
    _eval(tiny_model_dir, HOSTILE, out)
    res = json.loads(out.read_text(encoding="utf-8"))
    scored = {r["id"]: bool(r["correct"]["generate"]) for r in res["predictions"]}
    expected = {row["task_id"]: row["harness_limit"] for row in ROWS}
    assert scored == expected, {r["attack"]: scored[r["task_id"]] for r in ROWS}
    assert [row["attack"] for row in ROWS if row["harness_limit"]] == ["always_equal"]


def test_code_in_entry_point_is_a_one_line_data_error(tiny_model_dir, tmp_path, capsys,
                                                      answers_with_the_canonical_solution):
    """Issue 19: `"entry_point": "(__import__('os')._exit(0))"` made `t2 eval` report the problem as solved."""
    evil = tmp_path / "EVIL.jsonl"
    evil.write_text(json.dumps({**ROWS[0], "entry_point": "(__import__('os')._exit(0))"}) + "\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exc:
        _eval(tiny_model_dir, evil, tmp_path / "r.json")
    assert exc.value.code == 2 and not (tmp_path / "r.json").exists()
    err = capsys.readouterr().err.strip()
    assert f"{evil}:1: field 'entry_point' must be a Python name" in err and "\n" not in err
