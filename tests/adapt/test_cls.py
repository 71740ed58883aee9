"""cls: the route task is built from the experts' own training questions; `t2 train --task route`
trains a classification expert; its pass-1 decisions equal a direct forward with its weights."""

from __future__ import annotations

import json

import pytest
import torch

from transformer_squared.adapt import Request, StrategyConfig, build_strategy, one_hot
from transformer_squared.experts.adapted import load_adapted
from transformer_squared.errors import ConfigError, ExpertError
from transformer_squared.experts.expert import Expert
from transformer_squared.tasks import get_task
from transformer_squared.tasks.route import OTHER

from labelled_experts import DESCRIPTIONS, LABELS

REQUESTS = [Request("What is 7 times 3?"), Request("In which century did the French Revolution happen?")]


def test_route_task_is_the_experts_training_questions(routed):
    dirs, cls_dir = routed
    ex = get_task("route").load("|".join(map(str, dirs)), "train")
    want = {f"{label}-{k}": "AB"[i] for i, label in enumerate(LABELS) for k in range(8)}  # train + val ids, by expert
    assert {e.id: e.answer for e in ex} == want
    assert ex[0].choices == (f"STEM: {DESCRIPTIONS[0]}", f"Humanities: {DESCRIPTIONS[1]}", OTHER)
    assert ex[1].question == "What is 1 times 3?\nA. 1\nB. 3\nC. none" and ex[1].subject == "STEM"
    assert get_task("route").load([str(d) for d in dirs], "test") == []  # no holdout questions
    route_split = json.loads((cls_dir.parent / "split.json").read_text(encoding="utf-8"))
    assert Expert.load(cls_dir).meta.task == "route" and route_split["splits"] == ["train"]
    assert sorted(sum(route_split["ids"].values(), [])) == sorted(want)
    with pytest.raises(ConfigError, match="unknown split 'valid'"):
        get_task("route").load(str(dirs[0]), "valid")


def test_cls_decisions_equal_a_direct_forward_with_the_route_expert(routed, tiny_model_dir):
    dirs, cls_dir = routed
    am = load_adapted(str(tiny_model_dir), experts=dirs, device="cpu")
    s = build_strategy(am, StrategyConfig.of("cls", cls_expert=str(cls_dir)))
    scores = s.scores(REQUESTS)
    route = Expert.load(cls_dir)
    tok = am.tokenizer
    with am.svf.merged({t: z.detach() for t, z in route.z().items()}):
        for i, r in enumerate(REQUESTS):  # the prompt spelled out by hand, no chat template (as trained)
            prompt = ("Choose the expert best suited to answer the request below, by the skill it needs most.\n\n"
                      f"Experts:\nA. STEM: {DESCRIPTIONS[0]}\nB. Humanities: {DESCRIPTIONS[1]}\nC. {OTHER}\n\n"
                      f"Request:\n{r.text}\n\nReply with the letter of the expert.\nExpert:")
            with torch.no_grad():
                logits = am.model(input_ids=tok(prompt, return_tensors="pt")["input_ids"]).logits[0, -1]
            ids = [[tok.encode(v, add_special_tokens=False)[0] for v in (x, " " + x)] for x in "ABC"]
            want = torch.log_softmax(torch.stack([torch.logsumexp(logits[v], 0) for v in ids]), 0)
            torch.testing.assert_close(scores[i], want, rtol=1e-4, atol=1e-4)
    assert torch.equal(s.mix(REQUESTS), one_hot(scores.argmax(-1).tolist(), 2))
    assert not torch.equal(scores, build_strategy(am, "prompt").scores(REQUESTS))  # its own weights, not the base's
    swapped = load_adapted(str(tiny_model_dir), experts=dirs[::-1], device="cpu")
    with pytest.raises(ExpertError, match="trained to route between experts \\['STEM', 'Humanities'\\]"):
        build_strategy(swapped, StrategyConfig.of("cls", cls_expert=str(cls_dir)))
    with pytest.raises(ExpertError, match="not 'route'"):
        build_strategy(am, StrategyConfig.of("cls", cls_expert=str(dirs[0])))
