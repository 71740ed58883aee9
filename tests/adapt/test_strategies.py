"""Pass-1 strategies: every registered one honours the contract, and each one's decisions equal
hand-computed ones on the tiny model."""

from __future__ import annotations

import dataclasses
import json
from typing import Callable

import pytest
import torch

from transformer_squared.adapt import (STRATEGIES, Pipeline, Request, StrategyConfig, build_strategy, decisions,
                                       one_hot)
from transformer_squared.config import load_config
from transformer_squared.errors import ConfigError, RegistryError
from transformer_squared.tasks import Example, get_task

import strategy_first  # noqa: F401  (registers `first`, a strategy added as one file)

REQUESTS = [Request("What is the derivative of x^3?", category="STEM"),
            Request("Who signed the Treaty of Versailles? " * 12, category="Humanities", subject="history"),
            Request("Plan a birthday party.", category="Other", task="mmlu")]


SETUPS: dict[str, Callable] = {  # name → config from the `routed` fixture (expert folders, classification expert)
    "prompt": lambda routed: StrategyConfig.of("prompt"),
    "cls": lambda routed: StrategyConfig.of("cls", cls_expert=str(routed[1])),
    "fewshot": lambda routed: StrategyConfig.of("fewshot", shots=3, population=10, generations=1),
    "oracle": lambda routed: StrategyConfig.of("oracle"),
    "uniform": lambda routed: StrategyConfig.of("uniform"),
    "first": lambda routed: StrategyConfig.of("first", expert=1),
}


def test_every_registered_strategy_is_covered():
    assert set(STRATEGIES.names()) == set(SETUPS)
    with pytest.raises(RegistryError, match="did you mean 'oracle'.*known: .*prompt.*uniform"):
        StrategyConfig.of("oracel")


@pytest.mark.parametrize("name", sorted(SETUPS))
def test_strategy_contract(name, adapted, routed):
    """Through the pipeline, as every caller runs a strategy: fit once, route, record; its settings section
    is a field of StrategyConfig with a help line, and every setting has a default."""
    cfg = SETUPS[name](routed)
    spec = STRATEGIES.get(name)
    section = next(f for f in dataclasses.fields(StrategyConfig) if f.name == name)
    assert section.metadata["help"].startswith(f"settings of strategy {name}") and section.type is spec.settings
    assert all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
               for f in dataclasses.fields(spec.settings))
    assert spec.needs in ("nothing", "classifier", "shots", "labels")
    pipe = Pipeline(adapted, cfg)
    assert pipe.strategy.name == name and pipe.labels == adapted.labels
    task = get_task("mcq")
    pool = [Example(id=str(i), question=f"{i} + 1?", answer="A", choices=(str(i + 1), "0")) for i in range(12)]
    used = pipe.fit(task, pool)
    assert isinstance(used, list) and all(isinstance(i, str) for i in used)
    assert pipe.fit(task, pool[:1]) == used  # idempotent
    routed_ = pipe.route(REQUESTS)
    alpha = routed_.alpha
    K, T = len(adapted.experts), len(adapted.targets)
    assert alpha.dtype == torch.float32 and tuple(alpha.shape) in ((3, K), (3, K, T))
    assert torch.isfinite(alpha).all() and (alpha >= 0).all() and (alpha <= 1).all()
    assert routed_.decisions == decisions(alpha, adapted.labels) and routed_.seconds >= 0
    assert torch.equal(pipe.route(REQUESTS).alpha, alpha)  # deterministic
    assert pipe.route([]).alpha.shape[0] == 0
    json.dumps(pipe.record())
    assert pipe.record()["name"] == name


def test_uniform_and_oracle_alpha_are_exact(adapted):
    assert torch.equal(build_strategy(adapted, "uniform").mix(REQUESTS), torch.full((3, 2), 0.5))
    oracle = build_strategy(adapted, "oracle").mix(REQUESTS + [Request("x", subject="stem"), Request("x", task="humanities")])
    assert torch.equal(oracle, torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))


def routing_content(text: str, options: list[str]) -> str:
    """The routing prompt spelled out by hand: numbered experts, the request fenced."""
    lines = "".join(f"{i + 1}. {o}\n" for i, o in enumerate(options))
    return ("Choose the expert best suited to answer the request below, by the skill it needs most.\n\n"
            f"Experts:\n{lines}\nThe request is between <request> and </request>; letters or numbers inside it are "
            f"its own, not the experts'.\n<request>\n{text}\n</request>\n\n"
            f"Reply with the number of the expert (1 to {len(options)}).\nExpert number:")


def digit_logp(model, tok, prompt: str, n: int) -> torch.Tensor:
    """log-softmax over the numbers 1..n ("1" or " 1" as the next token), one forward pass of `prompt` alone."""
    with torch.no_grad():
        logits = model(input_ids=tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]).logits[0, -1]
    per = []
    for d in "123456789"[:n]:
        variants = {tok.encode(v, add_special_tokens=False)[0] for v in (d, " " + d)
                    if len(tok.encode(v, add_special_tokens=False)) == 1}
        per.append(torch.logsumexp(logits[sorted(variants)], 0))
    return torch.log_softmax(torch.stack(per), 0)


def test_prompt_strategy_equals_a_direct_forward(adapted):
    """The routing prompt spelled out by hand, in the chat template, one forward pass per request: the
    numbers' log-probabilities minus those under an empty request (calibration), and their argmax."""
    s = build_strategy(adapted, StrategyConfig.of("prompt", max_request_tokens=16))
    tok, model = adapted.tokenizer, adapted.model
    options = ["STEM: Science, technology, engineering and mathematics questions.",
               "Humanities: History, law and philosophy questions.",
               "other: none of the above; answer with the base model"]

    def chat(text):
        return tok.apply_chat_template([{"role": "user", "content": routing_content(text, options)}],
                                       add_generation_prompt=True, tokenize=False)

    empty = digit_logp(model, tok, chat(""), 3)
    scores = s.scores(REQUESTS)
    for i, r in enumerate(REQUESTS):
        ids = tok(r.text, add_special_tokens=False)["input_ids"]
        text = tok.decode(ids[:16]) if len(ids) > 16 else r.text
        want = digit_logp(model, tok, chat(text), 3) - empty
        torch.testing.assert_close(scores[i], want, rtol=1e-4, atol=1e-4)  # batched, left-padded vs alone
    choice = scores.argmax(-1).tolist()
    assert torch.equal(s.mix(REQUESTS), one_hot(choice, 2))
    long_prompt = s.prompts(REQUESTS[1:2])[0]  # cut to 16 tokens
    assert REQUESTS[1].text.strip() not in long_prompt and "<request>\nWho signed the Treaty" in long_prompt
    raw = build_strategy(adapted, StrategyConfig.of("prompt", max_request_tokens=16, calibrate=False)).scores(REQUESTS)
    torch.testing.assert_close(raw, scores + empty, rtol=1e-4, atol=1e-4)  # calibration subtracts the empty request


def test_decisions_and_config_checks():
    alpha = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    assert decisions(alpha, ["a", "b"]) == ["a", "base", "mixture", "b"]
    per_target = torch.zeros(2, 2, 3)
    per_target[0, 1] = 1.0
    per_target[1, 0, 0] = 0.5
    assert decisions(per_target, ["a", "b"]) == ["b", "mixture"]
    assert decisions(torch.zeros(3, 0), []) == ["base"] * 3 and decisions(torch.zeros(0, 2), ["a", "b"]) == []
    with pytest.raises(ConfigError, match="^fewshot.shots 0: must be at least 1; fewshot.elite 2: a share in \\(0, 1\\)$"):
        StrategyConfig.of("fewshot", shots=0, elite=2)
    with pytest.raises(ConfigError, match="strategy 'prompt' has no setting 'shots'"):
        StrategyConfig.of("prompt", shots=3)  # a setting of another strategy is not taken silently


def test_config_checks_report_every_problem_together():
    """YAML or flags fill the sections after construction; the checks then report shared, section and
    chosen-strategy problems in one message (cls without its expert, a bad setting of an unchosen one)."""
    with pytest.raises(ConfigError) as e:
        load_config(StrategyConfig, flags=["--name", "cls", "--batch_size", "0", "--fewshot.population", "0",
                                           "--first.expert", "-1"])
    assert str(e.value) == ("batch_size 0: must be at least 1; fewshot.population 0: must be at least 1; "
                            "first.expert -1: an index, at least 0; strategy cls needs --cls-expert DIR, its "
                            "classification expert (cls.expert; train one with `t2 train --task route --experts ...`)")
    cfg = load_config(StrategyConfig, flags=["--name", "first", "--first.expert", "1", "--seed", "3"])
    assert cfg.section() == cfg.first and cfg.first.expert == 1 and cfg.seed == 3
