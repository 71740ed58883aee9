"""fewshot: CEM finds a known optimum and is seeded; the fitness equals a hand computation; the α is
saved beside the results, reused with --alpha-from, and its shots are left out of the evaluation."""

from __future__ import annotations

import json

import pytest
import torch

from transformer_squared.models import engine
from transformer_squared.adapt import StrategyConfig, build_strategy
from transformer_squared.adapt.cem import CEMConfig, cem, rank
from transformer_squared.errors import ConfigError
from transformer_squared.evaluation.evaluate import EvalConfig, alpha_path, evaluate
from transformer_squared.experts.svf import mix
from transformer_squared.tasks import get_task

from vmlu_files import write_vmlu

TARGET = torch.tensor([0.2, 0.9, 0.5, 0.0])


def _synthetic(pop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Accuracy-like score (coordinates within 0.05 of TARGET) with a smooth tie-break (−squared distance)."""
    d = (pop - TARGET).abs()
    return (d < 0.05).sum(1).float(), -(d**2).sum(1)


def test_cem_finds_the_known_optimum_deterministically():
    cfg = CEMConfig(seed=3)
    a = cem(_synthetic, torch.full((4,), 0.25), cfg)
    b = cem(_synthetic, torch.full((4,), 0.25), cfg)
    assert torch.equal(a.best, b.best) and a.history == b.history  # seeded
    assert (a.best - TARGET).abs().max() < 0.05 and a.score == 4
    assert a.converged and a.generations < cfg.generations  # the elite converged: early stop
    assert ((a.best >= 0) & (a.best <= 1)).all()
    assert not torch.equal(cem(_synthetic, torch.full((4,), 0.25), CEMConfig(seed=4)).best, a.best)
    assert rank(torch.tensor([1.0, 2.0, 2.0]), torch.tensor([0.0, -1.0, -0.5])) == [2, 1, 0]  # ties by log-likelihood


def test_a_small_population_keeps_two_elite_and_does_not_stop_at_once():
    """Population 4 at elite 20 % would keep one point (no spread: "converged" after one generation)."""
    assert CEMConfig(population=4).n_elite == 2 and CEMConfig(population=32).n_elite == 6
    assert CEMConfig(population=1).n_elite == 1
    r = cem(_synthetic, torch.full((4,), 0.25), CEMConfig(population=4, generations=5, seed=0))
    assert r.generations == 5 and not r.converged  # two distinct random points keep a spread above tol
    assert all(h["elite_std_max"] > 1e-3 for h in r.history)
    one = cem(_synthetic, torch.full((4,), 0.25), CEMConfig(population=1, generations=3, seed=0))
    assert one.generations == 3 and not one.converged  # one point never counts as a converged elite


def test_fewshot_fitness_equals_hand_computation(adapted, tmp_path):
    task = get_task("vmlu")
    shots = task.load(str(write_vmlu(tmp_path / "vmlu", per_subject=1)), "valid")[:3]
    fs = build_strategy(adapted, StrategyConfig.of("fewshot", shots=3))
    pop = torch.tensor([[1.0, 0.0], [0.2, 0.7]])
    acc, ll = fs.fitness(task, shots, pop)
    prompts = task.format(shots)
    for c in range(2):  # independent: merge each candidate by hand, score the shots one by one
        z = mix([e.z() for e in adapted.experts], pop[c])
        hits, lls = [], []
        with adapted.svf.merged({t: v.detach() for t, v in z.items()}):
            for e, p in zip(shots, prompts):
                lp = engine.score_letters(adapted.model, adapted.tokenizer, [p], [e.letters])[1][0]
                hits.append(e.letters[int(lp.argmax())] == e.answer)
                lls.append(float(lp[e.letters.index(e.answer)]))
        assert acc[c] == pytest.approx(sum(hits) / 3)
        assert ll[c] == pytest.approx(sum(lls) / 3, abs=1e-4)


def test_fewshot_saves_alpha_excludes_shots_and_reuses_it(adapted, tmp_path):
    data = write_vmlu(tmp_path / "vmlu", per_subject=1)
    cfg = EvalConfig(task="vmlu", data=str(data), protocol="letter", batch_size=8)
    scfg = StrategyConfig.of("fewshot", shots=3, population=6, generations=3, alpha_per="target")
    out = tmp_path / "r.json"
    res = evaluate(adapted, cfg, out, strategy=scfg)
    shots = res["strategy"]["shots"]
    assert len(shots) == 3 and res["strategy"]["excluded_ids"] == shots
    assert not {r["id"] for r in res["predictions"]} & set(shots) and len(res["predictions"]) == 5
    saved = json.loads(alpha_path(out).read_text(encoding="utf-8"))
    alpha = torch.tensor(saved["alpha"])
    assert alpha.shape == (2, len(adapted.targets)) and ((alpha >= 0) & (alpha <= 1)).all()
    assert saved["search"]["generations"] <= 3 and len(saved["search"]["history"]) == saved["search"]["generations"]
    assert all(r["routing"] == {"decision": "mixture", "alpha": None} for r in res["predictions"])
    again = evaluate(adapted, cfg, strategy=scfg)  # seeded: the same α
    assert again["strategy"]["alpha"] == saved["alpha"]
    reused = evaluate(adapted, cfg, strategy=StrategyConfig.of("fewshot", alpha_per="target", alpha_from=str(alpha_path(out))))
    assert "search" not in reused["strategy"] and reused["strategy"]["excluded_ids"] == shots
    assert [r["prediction"] for r in reused["predictions"]] == [r["prediction"] for r in res["predictions"]]
    with pytest.raises(ConfigError, match="need \\(2,\\)"):
        build_strategy(adapted, StrategyConfig.of("fewshot", alpha_from=str(alpha_path(out))))


def test_fewshot_scores_alpha_the_way_evaluation_runs_it_in_bfloat16(tiny_model_dir, tmp_path):
    """In bfloat16 the factored and merged forms round differently. By default the fitness of a candidate is
    the evaluation's own number: the gold letter's log-probability with that α merged (pass 2, grouped)."""
    from transformer_squared.experts.adapted import AdaptedModel
    from transformer_squared.experts.expert import attach
    from transformer_squared.models.load import load_model

    from labelled_experts import make_experts

    model, tok = load_model(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    experts = make_experts(model)
    am = AdaptedModel(model, tok, attach(model, experts), experts)
    task = get_task("vmlu")
    shots = task.load(str(write_vmlu(tmp_path / "vmlu", per_subject=1)), "valid")[:4]
    fs = build_strategy(am, StrategyConfig.of("fewshot", shots=4))
    pop = torch.tensor([[0.3, 0.6], [0.9, 0.1]])
    _, ll = fs.fitness(task, shots, pop)
    for c in range(2):  # evaluation: one α for every question, run grouped (merged)
        _, logp = am.score_letters(task.format(shots), [e.letters for e in shots], alpha=pop[c].expand(4, -1))
        want = sum(float(lp[e.letters.index(e.answer)]) for e, lp in zip(shots, logp)) / 4
        assert float(ll[c]) == pytest.approx(want, rel=0, abs=1e-6)
    assert fs.record()["scored"] == "merged"
    factored = build_strategy(am, StrategyConfig.of("fewshot", shots=4, mixed=True))
    _, ll_f = factored.fitness(task, shots, pop)
    assert factored.record()["scored"] == "factored"
    assert not torch.equal(ll_f, ll)  # the two forms do round differently in bfloat16
