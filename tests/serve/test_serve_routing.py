"""The server's pass 1: one Pipeline per offered strategy, built from ServeConfig; a strategy that needs
labelled shots searches its α once at startup from `--settings.fit_task` (no saved α needed)."""

from __future__ import annotations

import pytest
import torch

from transformer_squared.adapt import Pipeline, Request, StrategyConfig
from transformer_squared.errors import ConfigError
from transformer_squared.serve.config import ServeConfig
from transformer_squared.serve.routing import Router, offered
from transformer_squared.tasks import get_task

from labelled_experts import write_questions


@pytest.fixture()
def adapted(tiny):
    from labelled_experts import make_experts
    from transformer_squared.experts.adapted import AdaptedModel
    from transformer_squared.experts.expert import attach

    model, tok = tiny
    experts = make_experts(model)
    return AdaptedModel(model, tok, attach(model, experts), experts)


def test_fewshot_fits_at_startup_from_settings(adapted, tmp_path):
    data = write_questions(tmp_path / "stem.jsonl", "STEM")
    settings = {"fit_task": "mcq", "fit_data": str(data), "shots": "3", "population": "4", "generations": "2"}
    cfg = ServeConfig(experts=["a", "b"], strategy="fewshot", settings=settings)  # flag values arrive as strings
    names = offered(cfg)  # (a strategy another test registered, e.g. `first`, may follow)
    assert names[:3] == ["fewshot", "prompt", "uniform"] and not {"oracle", "cls"} & set(names)  # oracle needs
    # true labels; cls has no expert
    router = Router(adapted, cfg)
    fitted = router.pipelines["fewshot"]
    assert fitted.strategy.alpha is not None and len(fitted.strategy.shot_ids) == 3  # searched before any request
    alpha, decided, _ = router.route("fewshot", ["What is 2 + 2?", "Who wrote Hamlet?"])
    by_hand = Pipeline(adapted, StrategyConfig.of("fewshot", shots=3, population=4, generations=2))
    task = get_task("mcq")
    by_hand.fit(task, task.load(str(data), "train"))
    expected = by_hand.route([Request("x")]).alpha[0]
    assert torch.equal(alpha, expected.expand(2, -1)) and decided[0] == decided[1]


def test_shots_and_unknown_settings_are_config_errors():
    with pytest.raises(ConfigError, match="--settings.fit_task"):
        ServeConfig(experts=["a"], strategy="fewshot")
    with pytest.raises(ConfigError, match="settings.shts: no strategy has this setting"):
        ServeConfig(experts=["a"], settings={"shts": 3})
    with pytest.raises(ConfigError, match="shots"):
        ServeConfig(experts=["a"], strategy="fewshot", settings={"fit_task": "mcq", "shots": "many"})
