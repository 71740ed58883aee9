"""The one two-pass pipeline: the Python API and `t2 generate --strategy` route, then answer with the chosen
expert; a request's own α skips pass 1; `fewshot` fits itself outside an evaluation; a strategy added as
one file (tests/strategy_first.py) works through the API, `t2 eval` and `t2 generate`."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import torch

from transformer_squared.adapt import Pipeline, Request, StrategyConfig, decisions
from transformer_squared.cli import main
from transformer_squared.errors import ConfigError
from transformer_squared.tasks import get_task

import strategy_first  # noqa: F401  (registers `first`)
from labelled_experts import write_questions

PROMPTS = ["What is the derivative of x^3?", "Who signed the Treaty of Versailles?", "Plan a birthday party."]


def test_pipeline_answers_each_prompt_with_its_routed_mixture(adapted):
    pipe = Pipeline(adapted, StrategyConfig.of("prompt"))
    answers = pipe.generate(PROMPTS, max_new_tokens=3)
    routed = Pipeline(adapted, "prompt").route([Request(p) for p in PROMPTS])  # pass 1 alone
    assert [a.expert for a in answers] == decisions(routed.alpha, adapted.labels) == routed.decisions
    for a, p, row in zip(answers, PROMPTS, routed.alpha):  # pass 2 alone, prompt by prompt
        assert a.alpha == row.tolist()
        assert a.text == adapted.generate([p], max_new_tokens=3, alpha=row[None])[0]
    assert pipe.timing.pass1 > 0 and pipe.timing.pass2 > 0
    mixed = Pipeline(adapted, "prompt", mixed=True).generate(PROMPTS, max_new_tokens=3)
    assert [a.text for a in mixed] == [a.text for a in answers]


class Counting:
    """A strategy object that counts its calls (it always picks expert 1)."""

    name = "counting"

    def __init__(self) -> None:
        self.mixed = self.fitted = 0

    def fit(self, task, examples):
        self.fitted += 1
        return ["q1"]

    def mix(self, requests):
        self.mixed += 1
        return torch.tensor([[0.0, 1.0]] * len(requests))

    def record(self):
        return {"name": self.name}


def test_a_requests_own_alpha_skips_pass1_and_fit_runs_once(adapted):
    s = Counting()
    pipe = Pipeline(adapted, s)
    own = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.3, 0.7]])
    answers = pipe.generate(PROMPTS, max_new_tokens=3, alpha=own)
    assert s.mixed == 0 and s.fitted == 0  # no pass 1, no fit
    assert [a.expert for a in answers] == ["STEM", "base", "mixture"]
    assert [a.text for a in answers] == [adapted.generate([p], max_new_tokens=3, alpha=r[None])[0]
                                         for p, r in zip(PROMPTS, own)]
    letters = [("A", "B")] * 3
    greedy, logp = pipe.score_letters(PROMPTS, letters)  # pass 1: expert 1 for every prompt
    want = adapted.score_letters(PROMPTS, letters, alpha=torch.tensor([[0.0, 1.0]] * 3))
    assert greedy == want[0] and all(torch.equal(a, b) for a, b in zip(logp, want[1]))
    lls = pipe.loglikelihood(PROMPTS, [" yes"] * 3, requests=[Request(p, task="t") for p in PROMPTS])
    assert lls == adapted.loglikelihood(PROMPTS, [" yes"] * 3, alpha=torch.tensor([[0.0, 1.0]] * 3))
    assert s.fitted == 1 and s.mixed == 2 and pipe.fit() == ["q1"] and s.fitted == 1  # fitted once
    base = Pipeline(adapted)  # no strategy: the fixed mixture, no routing
    assert base.route([Request("x")]).decisions == ["mixture"] and base.fit() == []


def test_fewshot_fits_from_its_settings_outside_an_evaluation(adapted, tmp_path):
    """generate with `fewshot` needs no --alpha-from: it searches α on shots of `fit_task`; the α equals the
    one found when fitted on the same examples as an evaluation would hand them over."""
    data = write_questions(tmp_path / "stem.jsonl", "STEM")
    settings = dict(shots=3, population=4, generations=2, fit_task="mcq", fit_data=str(data))
    pipe = Pipeline(adapted, StrategyConfig.of("fewshot", **settings))
    answers = pipe.generate(PROMPTS[:2], max_new_tokens=3)
    shots = pipe.fit()
    assert len(shots) == 3 and set(shots) <= {f"STEM-{k}" for k in range(8)}
    by_hand = Pipeline(adapted, StrategyConfig.of("fewshot", **settings))
    task = get_task("mcq")
    assert by_hand.fit(task, task.load(str(data), "train")) == shots
    alpha = by_hand.route([Request("x")]).alpha[0]
    assert all(a.alpha == alpha.tolist() for a in answers)
    assert answers[0].text == adapted.generate(PROMPTS[:1], max_new_tokens=3, alpha=alpha[None])[0]
    with pytest.raises(ConfigError, match="fewshot.fit_task"):
        Pipeline(adapted, StrategyConfig.of("fewshot")).generate(PROMPTS[:1], max_new_tokens=3)


def test_generate_cli_prints_the_chosen_expert(tiny_model_dir, expert_dirs, adapted, capsys):
    main(["generate", "--model", str(tiny_model_dir), "--device", "cpu", "--experts", *map(str, expert_dirs),
          "--strategy", "prompt", "--max-new-tokens", "3", PROMPTS[0]])
    captured = capsys.readouterr()
    want = Pipeline(adapted, "prompt").route([Request(PROMPTS[0])]).decisions[0]
    assert f"expert: {want}" in captured.err and captured.out.strip() != ""
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", str(tiny_model_dir), "--experts", *map(str, expert_dirs), "--strategy", "prompt",
              "--alpha", "1", "--alpha", "0", "x"])
    assert e.value.code == 2 and "exclude each other" in capsys.readouterr().err


def test_generate_cli_fewshot_without_alpha_from(tiny_model_dir, expert_dirs, tmp_path, capsys):
    data = write_questions(tmp_path / "stem.jsonl", "STEM")
    common = ["generate", "--model", str(tiny_model_dir), "--device", "cpu", "--experts", *map(str, expert_dirs),
              "--strategy", "fewshot", "--max-new-tokens", "3"]
    main(common + ["--fit-task", "mcq", "--fit-data", str(data), "--fit-split", "train", "--shots", "3",
                   "--population", "4", "--generations", "1", PROMPTS[0]])
    captured = capsys.readouterr()
    assert "expert: " in captured.err and captured.out.strip() != ""
    with pytest.raises(SystemExit) as e:
        main(common + [PROMPTS[0]])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "\n" not in err.strip() and "fit_task" in err


def test_a_strategy_added_as_one_file_runs_everywhere(tiny_model_dir, expert_dirs, adapted, tmp_path, capsys):
    """`first` (tests/strategy_first.py) through the Python API, `t2 generate` and `t2 eval`."""
    answers = Pipeline(adapted, StrategyConfig.of("first", expert=1)).generate(PROMPTS[:2], max_new_tokens=3)
    assert [a.expert for a in answers] == ["Humanities", "Humanities"]
    main(["generate", "--model", str(tiny_model_dir), "--device", "cpu", "--experts", *map(str, expert_dirs),
          "--strategy", "first", "--max-new-tokens", "3", PROMPTS[0]])
    assert "expert: STEM" in capsys.readouterr().err
    data = write_questions(tmp_path / "h.jsonl", "Humanities")
    out = tmp_path / "r.json"
    main(["eval", "--model", str(tiny_model_dir), "--device", "cpu", "--task", "mcq", "--data", str(data),
          "--split", "train", "--experts", *map(str, expert_dirs), "--strategy", "first", "--out", str(out),
          "--include-seen"])
    res = json.loads(out.read_text(encoding="utf-8"))
    assert res["label"] == "Transformer² (first)" and res["strategy"] == {
        "name": "first", "expert": 0, "excluded_ids": [], "n_excluded": 0, "mixed_batches": False}
    assert len(res["predictions"]) == 8
    assert all(r["routing"] == {"decision": "STEM", "alpha": [1.0, 0.0]} for r in res["predictions"])


def test_example_answers_mixed_prompts_and_shows_the_experts(tiny_model_dir, expert_dirs, adapted, capsys):
    example = runpy.run_path(str(Path(__file__).resolve().parents[2] / "examples" / "inference.py"))
    example["main"](["--model", str(tiny_model_dir), "--experts", *map(str, expert_dirs), "--max-new-tokens", "3"])
    out = capsys.readouterr().out
    routed = Pipeline(adapted, "prompt").route([Request(p) for p in example["PROMPTS"]])
    for prompt, expert in zip(example["PROMPTS"], routed.decisions):
        assert f"[{expert}] {prompt}" in out
    assert "pass 1" in out and "pass 2" in out
