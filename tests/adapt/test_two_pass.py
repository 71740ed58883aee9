"""The two-pass Python API and `t2 generate --strategy`: route, then answer with the chosen expert."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from transformer_squared.adapt import StrategyConfig, TwoPass, build_strategy, decisions
from transformer_squared.adapt.registry import Request
from transformer_squared.cli import main

PROMPTS = ["What is the derivative of x^3?", "Who signed the Treaty of Versailles?", "Plan a birthday party."]


def test_two_pass_answers_each_prompt_with_its_routed_mixture(adapted):
    tp = TwoPass(adapted, StrategyConfig("prompt"))
    answers = tp.generate(PROMPTS, max_new_tokens=3)
    alpha = build_strategy(adapted, "prompt").mix([Request(p) for p in PROMPTS])  # pass 1 alone
    assert [a.expert for a in answers] == decisions(alpha, adapted.labels) == tp.route(PROMPTS)
    for a, p, row in zip(answers, PROMPTS, alpha):  # pass 2 alone, prompt by prompt
        assert a.alpha == row.tolist()
        assert a.text == adapted.generate([p], max_new_tokens=3, alpha=row[None])[0]
    assert tp.timing.pass1 > 0 and tp.timing.pass2 > 0
    mixed = TwoPass(adapted, "prompt", mixed=True).generate(PROMPTS, max_new_tokens=3)
    assert [a.text for a in mixed] == [a.text for a in answers]


def test_generate_cli_prints_the_chosen_expert(tiny_model_dir, expert_dirs, adapted, capsys):
    main(["generate", "--model", str(tiny_model_dir), "--device", "cpu", "--experts", *map(str, expert_dirs),
          "--strategy", "prompt", "--max-new-tokens", "3", PROMPTS[0]])
    captured = capsys.readouterr()
    want = TwoPass(adapted, "prompt").route(PROMPTS[:1])[0]
    assert f"expert: {want}" in captured.err and captured.out.strip() != ""
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", str(tiny_model_dir), "--experts", *map(str, expert_dirs), "--strategy", "prompt",
              "--alpha", "1", "--alpha", "0", "x"])
    assert e.value.code == 2 and "exclude each other" in capsys.readouterr().err


def test_example_answers_mixed_prompts_and_shows_the_experts(tiny_model_dir, expert_dirs, adapted, capsys):
    example = runpy.run_path(str(Path(__file__).resolve().parents[2] / "examples" / "inference.py"))
    example["main"](["--model", str(tiny_model_dir), "--experts", *map(str, expert_dirs), "--max-new-tokens", "3"])
    out = capsys.readouterr().out
    for prompt, expert in zip(example["PROMPTS"], TwoPass(adapted, "prompt").route(example["PROMPTS"])):
        assert f"[{expert}] {prompt}" in out
    assert "pass 1" in out and "pass 2" in out
