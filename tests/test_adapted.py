"""The adapted model: per-prompt mixtures run grouped (merged) and mixed (factored) give the same
results as each prompt run alone with its mixture merged; base rows run the base weights."""

from __future__ import annotations

import pytest
import torch

from transformer_squared.models import engine
from transformer_squared.errors import ConfigError
from transformer_squared.experts.svf import mix, mix_batch

from labelled_experts import make_experts

PROMPTS = ["Question: what is 2 + 2?\nAnswer:", "The capital of France is", "Name a prime number:",
           "Which war ended in 1945?", "Say A, B or C:"]
LETTERS = [("A", "B", "C", "D")] * len(PROMPTS)


@pytest.fixture()
def am(tiny):
    from transformer_squared.experts.adapted import AdaptedModel
    from transformer_squared.experts.expert import attach

    model, tok = tiny
    experts = make_experts(model)
    return AdaptedModel(model, tok, attach(model, experts), experts)


def _alpha(n_targets: int) -> torch.Tensor:
    """Rows: expert 0, expert 1, base, a mixture, expert 0 again — (5, K)."""
    return torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.3, 0.7], [1.0, 0.0]])


def _alone(am, i: int, row: torch.Tensor) -> torch.Tensor:
    """Independent path: prompt i alone, its mixture merged by hand (mix over post-sigmoid z)."""
    z = None if not bool(row.abs().sum()) else mix([e.z() for e in am.experts], row)
    weights = am.svf.merged({t: v.detach() for t, v in z.items()}) if z else torch.no_grad()
    with weights:
        return engine.score_letters(am.model, am.tokenizer, [PROMPTS[i]], [LETTERS[i]])[1][0]


def test_grouped_and_mixed_equal_each_prompt_alone(am):
    alpha = _alpha(len(am.targets))
    W0 = {t: am.model.get_submodule(t).weight.detach().clone() for t in am.targets}
    _, grouped = am.score_letters(PROMPTS, LETTERS, alpha, batch_size=2)
    _, mixed = am.score_letters(PROMPTS, LETTERS, alpha, mixed=True, batch_size=2)
    alone = [_alone(am, i, alpha[i]) for i in range(len(PROMPTS))]
    for g, m, a in zip(grouped, mixed, alone):
        torch.testing.assert_close(g, a, rtol=1e-4, atol=1e-4)  # float32 delta vs factored matmul order
        torch.testing.assert_close(m, a, rtol=1e-4, atol=1e-4)
    assert (alone[0] - alone[2]).abs().max() > 1e-3  # the experts really change the scores
    assert all(torch.equal(am.model.get_submodule(t).weight, W0[t]) for t in am.targets)  # restored bit for bit
    with pytest.raises(ConfigError, match=r"expected \(n, 2\)"):
        am.score_letters(PROMPTS, LETTERS, torch.ones(len(PROMPTS), 3))
    with pytest.raises(ConfigError, match="row"):
        am.score_letters(PROMPTS, LETTERS, torch.ones(2, 2))


def test_per_target_alpha_grouped_equals_mixed(am):
    T = len(am.targets)
    g = torch.Generator().manual_seed(3)
    alpha = torch.rand(len(PROMPTS), 2, T, generator=g)  # (n, K, n_targets)
    alpha[2] = 0  # a base row
    _, grouped = am.score_letters(PROMPTS, LETTERS, alpha)
    _, mixed = am.score_letters(PROMPTS, LETTERS, alpha, mixed=True)
    for a, b in zip(grouped, mixed):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    zs = [e.z() for e in am.experts]
    rows = mix_batch(zs, alpha)  # per-row z = Σₖ α[k, t] z_k[t], by hand for one row and target
    t = am.targets[1]
    torch.testing.assert_close(rows[t][0], alpha[0, 0, 1] * zs[0][t] + alpha[0, 1, 1] * zs[1][t])
    assert torch.equal(rows[t][2], torch.ones_like(rows[t][2]))


def test_generate_grouped_equals_mixed_and_merges_once_per_mixture(am, monkeypatch):
    alpha = _alpha(len(am.targets))
    grouped = am.generate(PROMPTS, max_new_tokens=4, alpha=alpha, chat=False, batch_size=2)
    mixed = am.generate(PROMPTS, max_new_tokens=4, alpha=alpha, mixed=True, chat=False, batch_size=2)
    assert grouped == mixed
    used = []
    real = am.engine.use
    monkeypatch.setattr(am.engine, "use", lambda z: used.append(z is None) or real(z))
    with am.holding():
        for rows in (alpha[[0, 4]], alpha[[0]], alpha[[1]], alpha[[1]]):  # consecutive calls with one mixture each
            am.score_letters(PROMPTS[: len(rows)], LETTERS[: len(rows)], rows)
    assert used == [False, False, True]  # expert 0 once, expert 1 once, base weights when the block ends
