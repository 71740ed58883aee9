"""Pass 1 must not follow the place of an expert in the list. An engine double rigged to favour the first
choice (+5 to the log-odds of "1", whatever the request) and to read the request (+2 to the choice whose label
the request names): uncalibrated, the decision follows the place; calibrated (or averaged over every cyclic
order) it follows the expert, and reordering the experts changes no decision. The position-bias block counts it."""

from __future__ import annotations

import re

import pytest
import torch

from transformer_squared.adapt import Request, StrategyConfig, build_strategy, decisions
from transformer_squared.experts.adapted import AdaptedModel

REQUESTS = [Request("A STEM question: what is 7 times 3?\nA. 21\nB. 12"),
            Request("A humanities question: who wrote the Iliad?\nA. Homer\nB. Virgil")]
RIGGED, CONTENT = 5.0, 2.0  # log-odds for place 1; for the choice the request names


class PositionRigged:
    """Engine double: scores the choices' numbers from the prompt text alone."""

    supports_factored = False

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.prompts: list[str] = []

    def use(self, z) -> None:
        pass

    def score_letters(self, prompts, letters, batch_size=8, progress=None, z_rows=None):
        out = []
        for p, symbols in zip(prompts, letters):
            self.prompts.append(p)
            head, _, rest = p.partition("\n<request>\n")  # the fence, not its mention in the instructions
            if not rest:  # pass 2's task prompt: no preference
                out.append(torch.log_softmax(torch.zeros(len(symbols)), 0))
                continue
            request = rest.partition("\n</request>")[0].lower()
            labels = dict(re.findall(r"^(\d)\. ([^:\n]+)", head, re.M))  # number → label, in list order
            s = torch.tensor([(RIGGED if x == "1" else 0.0) + (CONTENT if labels[x].lower() in request else 0.0)
                              for x in symbols])
            out.append(torch.log_softmax(s, 0))
        return [""] * len(prompts), out


def _am(adapted, reverse: bool = False) -> AdaptedModel:
    experts = adapted.experts[::-1] if reverse else adapted.experts
    return AdaptedModel(adapted.model, adapted.tokenizer, adapted.svf, experts,
                        engine=PositionRigged(adapted.tokenizer))


def _route(adapted, reverse: bool = False, **settings) -> tuple[list[str], dict]:
    am = _am(adapted, reverse)
    s = build_strategy(am, StrategyConfig.of("prompt", position_bias=True, **settings))
    return decisions(s.mix(REQUESTS), am.labels), s.position_bias()


def test_uncalibrated_router_follows_the_rigged_place(adapted):
    decided, bias = _route(adapted, calibrate=False)
    assert decided == ["STEM", "STEM"]  # the first listed expert, whatever the request
    assert _route(adapted, reverse=True, calibrate=False)[0] == ["Humanities", "Humanities"]  # reordered: it follows
    assert bias["n"] == 2 and bias["orders"] == 3
    assert bias["follows_position"] == 1.0 and bias["follows_expert"] == 0.0
    assert bias["share_by_position"] == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("settings", [{"calibrate": True}, {"calibrate": False, "cyclic": True}])
def test_calibrated_or_cyclic_router_follows_the_expert(adapted, settings):
    decided, bias = _route(adapted, **settings)
    assert decided == ["STEM", "Humanities"]
    assert _route(adapted, reverse=True, **settings)[0] == decided  # the experts reordered: same decisions
    if settings["calibrate"]:  # every order decides alike once the place's preference is subtracted
        assert bias["follows_expert"] == 1.0 and bias["follows_position"] == 0.0


def test_calibration_is_the_empty_request_of_the_same_order(adapted):
    """Calibrated score = log p(choice | request) − log p(choice | empty request), by hand from the rigged scores."""
    am = _am(adapted)
    s = build_strategy(am, StrategyConfig.of("prompt"))
    got = s.scores(REQUESTS[:1])[0]
    want = (torch.log_softmax(torch.tensor([RIGGED + CONTENT, 0.0, 0.0]), 0)
            - torch.log_softmax(torch.tensor([RIGGED, 0.0, 0.0]), 0))
    torch.testing.assert_close(got, want)
    assert sum("<request>\n\n</request>" in p for p in am.engine.prompts) == 1  # one empty request, cached
    s.scores(REQUESTS)
    assert sum("<request>\n\n</request>" in p for p in am.engine.prompts) == 1


def test_results_record_the_position_bias_block(adapted, tmp_path):
    """evaluate() with position_bias: results["routing"]["position_bias"] counts every routed question; without
    it there is no block (the extra K passes are optional)."""
    from transformer_squared.evaluation.evaluate import EvalConfig, evaluate

    from vmlu_files import write_vmlu

    am = _am(adapted)
    cfg = EvalConfig(task="vmlu", data=str(write_vmlu(tmp_path / "vmlu", per_subject=1)), protocol="letter")
    res = evaluate(am, cfg, tmp_path / "r.json", strategy=StrategyConfig.of("prompt", position_bias=True))
    bias = res["routing"]["position_bias"]
    assert bias["n"] == len(res["predictions"]) == 8 and bias["orders"] == 3 and bias["calibrated"] is True
    assert sum(bias["share_by_position"]) == pytest.approx(1.0)
    assert bias["seconds"] >= 0
    from transformer_squared.report.tables import routing_lines

    assert any(x.startswith("position bias over 3 cyclic orders (n = 8): decision follows the expert")
               for x in routing_lines(res))
    assert "position_bias" not in evaluate(am, cfg, tmp_path / "s.json", strategy="prompt")["routing"]
