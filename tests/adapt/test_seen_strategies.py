"""Two-pass evaluation leaves out what any expert it runs saw, the classification expert included: a
`route` expert records the task questions behind its routing prompts, and `t2 eval --strategy cls`
excludes them (checked against the question sets written here)."""

from __future__ import annotations

import json

import pytest
import torch

from transformer_squared.evaluation import seen
from transformer_squared.adapt import StrategyConfig
from transformer_squared.cli import main
from transformer_squared.evaluation.evaluate import strategy_experts
from transformer_squared.experts.expert import Expert
from transformer_squared.tasks import get_task


def test_a_classification_expert_records_the_questions_behind_its_prompts(routed):
    dirs, cls_dir = routed
    questions = [q for label in ("STEM", "Humanities")
                 for q in get_task("mcq").load(str(dirs[0].parents[1] / f"{label}.jsonl"), "train")]
    split = json.loads((cls_dir.parent / "split.json").read_text(encoding="utf-8"))
    saw = set(split["ids"]["train"]) | set(split["ids"]["val"])
    assert len(saw) == 16 and torch.equal(Expert.load(cls_dir).seen, seen.keys([q for q in questions if q.id in saw]))
    assert strategy_experts(StrategyConfig.of("cls", cls_expert=str(cls_dir))) == [str(cls_dir)]
    assert strategy_experts(StrategyConfig.of("prompt")) == [] and strategy_experts(None) == []


@pytest.mark.parametrize("strategy, n_excluded", [("cls", 8), ("uniform", 0)])
def test_eval_leaves_out_what_the_classification_expert_saw(routed, tiny_model_dir, tmp_path, capsys, strategy,
                                                            n_excluded):
    dirs, cls_dir = routed
    stem = (dirs[0].parents[1] / "STEM.jsonl").read_text(encoding="utf-8").splitlines()
    new = [{"id": f"new-{k}", "question": f"What is {k} plus 11?", "choices": [str(k), str(k + 11), "none"],
            "answer": 1} for k in range(4)]
    data = tmp_path / "mix.jsonl"
    data.write_text("\n".join(stem + [json.dumps(r) for r in new]) + "\n", encoding="utf-8")
    out = tmp_path / "r.json"
    extra = ["--cls-expert", str(cls_dir)] if strategy == "cls" else []
    main(["eval", "--model", str(tiny_model_dir), "--task", "mcq", "--data", str(data), "--split", "test",
          "--experts", *map(str, dirs), "--strategy", strategy, *extra, "--protocol", "letter", "--device", "cpu",
          "--out", str(out)])
    res = json.loads(out.read_text(encoding="utf-8"))
    assert res["seen"]["n_excluded"] == n_excluded
    kept = [r["id"] for r in res["predictions"]]
    assert kept == ([f"new-{k}" for k in range(4)] if n_excluded else [f"STEM-{k}" for k in range(8)] + kept[8:])
    assert (f"excluded {n_excluded} question(s)" in capsys.readouterr().out) == bool(n_excluded)
