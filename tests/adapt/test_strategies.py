"""Pass-1 strategies: every registered one honours the contract, and each one's decisions equal
hand-computed ones on the tiny model."""

from __future__ import annotations

import json
from typing import Callable

import pytest
import torch

from transformer_squared.adapt import (STRATEGIES, Request, StrategyConfig, build_strategy, decisions, one_hot)
from transformer_squared.errors import ConfigError, RegistryError
from transformer_squared.tasks import Example, get_task

REQUESTS = [Request("What is the derivative of x^3?", category="STEM"),
            Request("Who signed the Treaty of Versailles? " * 12, category="Humanities", subject="history"),
            Request("Plan a birthday party.", category="Other", task="mmlu")]


SETUPS: dict[str, Callable] = {  # name → config from the `routed` fixture (expert folders, classification expert)
    "prompt": lambda routed: StrategyConfig("prompt"),
    "cls": lambda routed: StrategyConfig("cls", cls_expert=str(routed[1])),
    "fewshot": lambda routed: StrategyConfig("fewshot", shots=3, population=10, generations=1),
    "oracle": lambda routed: StrategyConfig("oracle"),
    "uniform": lambda routed: StrategyConfig("uniform"),
}


def test_every_registered_strategy_is_covered():
    assert set(STRATEGIES.names()) == set(SETUPS)
    with pytest.raises(RegistryError, match="did you mean 'oracle'.*known: .*prompt.*uniform"):
        StrategyConfig("oracel")


@pytest.mark.parametrize("name", sorted(SETUPS))
def test_strategy_contract(name, adapted, routed):
    s = build_strategy(adapted, SETUPS[name](routed))
    assert s.name == name
    task = get_task("mcq")
    used = s.fit(task, [Example(id=str(i), question=f"{i} + 1?", answer="A", choices=(str(i + 1), "0"))
                        for i in range(12)])
    assert isinstance(used, list) and all(isinstance(i, str) for i in used)
    alpha = s.mix(REQUESTS)
    K, T = len(adapted.experts), len(adapted.targets)
    assert alpha.dtype == torch.float32 and tuple(alpha.shape) in ((3, K), (3, K, T))
    assert torch.isfinite(alpha).all() and (alpha >= 0).all() and (alpha <= 1).all()
    assert torch.equal(s.mix(REQUESTS), alpha)  # deterministic
    assert s.mix([]).shape[0] == 0
    json.dumps(s.record())
    assert s.record()["name"] == name


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
    s = build_strategy(adapted, StrategyConfig("prompt", max_request_tokens=16))
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
    raw = build_strategy(adapted, StrategyConfig("prompt", max_request_tokens=16, calibrate=False)).scores(REQUESTS)
    torch.testing.assert_close(raw, scores + empty, rtol=1e-4, atol=1e-4)  # calibration subtracts the empty request


def test_decisions_and_config_checks():
    alpha = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    assert decisions(alpha, ["a", "b"]) == ["a", "base", "mixture", "b"]
    per_target = torch.zeros(2, 2, 3)
    per_target[0, 1] = 1.0
    per_target[1, 0, 0] = 0.5
    assert decisions(per_target, ["a", "b"]) == ["b", "mixture"]
    with pytest.raises(ConfigError, match="shots 0: must be at least 1; elite 2: a share in \\(0, 1\\)"):
        StrategyConfig("prompt", shots=0, elite=2)
