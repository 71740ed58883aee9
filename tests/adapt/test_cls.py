"""cls: the route task is built from the experts' own training questions; `t2 train --task route`
trains a classification expert; its pass-1 decisions equal a direct forward with its weights."""

from __future__ import annotations

import json
import zlib

import pytest
import torch

from transformer_squared.adapt import Request, StrategyConfig, build_strategy, one_hot
from transformer_squared.experts.adapted import load_adapted
from transformer_squared.errors import ConfigError, ExpertError
from transformer_squared.experts.expert import Expert
from transformer_squared.tasks import get_task
from transformer_squared.tasks.route import OTHER

from labelled_experts import DESCRIPTIONS, LABELS
from test_strategies import digit_logp, routing_content

REQUESTS = [Request("What is 7 times 3?"), Request("In which century did the French Revolution happen?")]


def _order(question_id: str) -> list[int]:
    shift = zlib.crc32(question_id.encode("utf-8")) % 3
    return [(shift + p) % 3 for p in range(3)]


def test_route_task_is_the_experts_training_questions(routed):
    dirs, cls_dir = routed
    ex = get_task("route").load("|".join(map(str, dirs)), "train")
    # each question lists the experts in its own cyclic order (shift = crc32 of its id mod 3); the answer is the
    # number of its expert's place in that order
    want = {f"{label}-{k}": str(_order(f"{label}-{k}").index(i) + 1) for i, label in enumerate(LABELS) for k in range(8)}
    assert {e.id: e.answer for e in ex} == want
    options = (f"STEM: {DESCRIPTIONS[0]}", f"Humanities: {DESCRIPTIONS[1]}", OTHER)
    assert all(e.choices == tuple(options[j] for j in _order(e.id)) and e.letters == ("1", "2", "3") for e in ex)
    assert len({_order(e.id)[0] for e in ex}) == 3  # every expert comes first for some questions
    prompt = get_task("route").format(ex[:1])[0]
    assert "1. " + ex[0].choices[0] in prompt and "<request>\n" + ex[0].question + "\n</request>" in prompt
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
    options = [f"STEM: {DESCRIPTIONS[0]}", f"Humanities: {DESCRIPTIONS[1]}", OTHER]
    bos = tok.bos_token or ""
    with am.svf.merged({t: z.detach() for t, z in route.z().items()}):  # no chat template (as trained)
        empty = digit_logp(am.model, tok, bos + routing_content("", options), 3)
        for i, r in enumerate(REQUESTS):  # the prompt spelled out by hand, calibrated by the empty request
            want = digit_logp(am.model, tok, bos + routing_content(r.text, options), 3) - empty
            torch.testing.assert_close(scores[i], want, rtol=1e-4, atol=1e-4)
    assert torch.equal(s.mix(REQUESTS), one_hot(scores.argmax(-1).tolist(), 2))
    assert not torch.equal(scores, build_strategy(am, "prompt").scores(REQUESTS))  # its own weights, not the base's
    swapped = load_adapted(str(tiny_model_dir), experts=dirs[::-1], device="cpu")
    with pytest.raises(ExpertError, match="trained to route between experts \\['STEM', 'Humanities'\\]"):
        build_strategy(swapped, StrategyConfig.of("cls", cls_expert=str(cls_dir)))
    with pytest.raises(ExpertError, match="not 'route'"):
        build_strategy(am, StrategyConfig.of("cls", cls_expert=str(dirs[0])))


def test_a_classification_expert_of_another_route_version_is_refused(routed, tiny_model_dir, tmp_path):
    """Issue 17: a cls expert trained on the lettered v1 routing prompt (or before versions were recorded) would be
    asked with the numbered v2 prompt; it is refused with what to do, and the freshly trained one says v2."""
    dirs, cls_dir = routed
    assert Expert.load(cls_dir).meta.provenance["task_version"] == get_task("route").version == "2"
    am = load_adapted(str(tiny_model_dir), experts=dirs, device="cpu")
    for version in ("1", None):
        old = Expert.load(cls_dir)
        old.meta.provenance = {k: v for k, v in old.meta.provenance.items() if k != "task_version"}
        if version:
            old.meta.provenance["task_version"] = version
        folder = tmp_path / f"v{version}"
        old.save(folder)
        with pytest.raises(ExpertError, match="routing prompts of version 1 .*retrain it"):
            build_strategy(am, StrategyConfig.of("cls", cls_expert=str(folder)))
