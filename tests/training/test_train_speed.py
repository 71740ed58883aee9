"""The faster training step (issue 17 item 3) against the old one: same gradients, exact KL reference, sorted micro-batches."""

from __future__ import annotations

import torch

from transformer_squared.experts.expert import attach
from transformer_squared.training import rollout
from transformer_squared.training.train import SVFRun

from test_train import TinyGen, TinyMCQ, _cfg

OLD = dict(mode="factored", sort_micro=False)  # the step as it was before issue 17 item 3


def _grads(run: SVFRun) -> dict[str, torch.Tensor]:
    run.setup()
    run.train_step(0)
    return {t: v.grad.clone() for t, v in run.p.items()}


def test_merged_sorted_micro_step_gives_the_old_generative_gradient_with_kl(tmp_path, tiny_model_dir):
    """Greedy rollouts (identical under both settings), λ = 0.1: the merged step with the base weights swapped
    in for the KL reference and length-sorted micro-batches of 1 gives the factored, unsorted gradient."""
    kw = dict(task="tiny-gen", kl=0.1, batch_size=6, val_fraction=0.25, max_new_tokens=5, temperature=0.0, lr=0.0)
    old = _grads(SVFRun(_cfg(tiny_model_dir, micro_batch_size=6, **OLD, **kw), tmp_path / "old", TinyGen()))
    new = _grads(SVFRun(_cfg(tiny_model_dir, micro_batch_size=1, mode="merged", sort_micro=True, **kw), tmp_path / "new",
                        TinyGen()))
    for t in old:
        assert old[t].abs().max() > 0
        # float32 sums in another order (merged W' vs factored, per-row vs padded): relative 1e-4 of the largest entry
        torch.testing.assert_close(new[t], old[t], rtol=1e-4, atol=1e-4 * old[t].abs().max().item())


def test_merged_sorted_micro_step_gives_the_old_multiple_choice_gradient(tmp_path, tiny_model_dir):
    kw = dict(lr=0.0, kl=0.3)
    old = _grads(SVFRun(_cfg(tiny_model_dir, micro_batch_size=8, **OLD, **kw), tmp_path / "old", TinyMCQ()))
    new = _grads(SVFRun(_cfg(tiny_model_dir, micro_batch_size=3, mode="merged", sort_micro=True, **kw), tmp_path / "new",
                        TinyMCQ()))
    for t in old:
        assert old[t].abs().max() > 0
        torch.testing.assert_close(new[t], old[t], rtol=1e-4, atol=1e-4 * old[t].abs().max().item())


def test_base_weights_under_a_merged_expert_are_the_base_model_bit_for_bit(tiny):
    """The KL reference on the CPU runs the saved originals, not W' − ΔW (which carries W′'s rounding)."""
    model, tok = tiny
    svf = attach(model)
    ids = tok(["The river is", "A stone"], return_tensors="pt", padding=True)
    with torch.no_grad():
        base = model(**ids).logits
        z = {t: torch.linspace(0.1, 1.9, f.S.numel()) for t, f in svf.factors.items()}  # far from uniform
        with svf.merged(z):
            adapted = model(**ids).logits
            with svf.base_weights():
                reference = model(**ids).logits
            assert torch.equal(model(**ids).logits, adapted)  # W' back after the block
    assert not torch.allclose(adapted, base, atol=1e-3)  # the expert really changes the model
    assert torch.equal(reference, base)


def test_by_length_puts_the_longest_items_first(tiny):
    _, tok = tiny
    items = [rollout.Item("a b", answer_ids=[1, 2, 3]), rollout.Item("a b c d e f"), rollout.Item("a", answer_ids=[1])]
    lengths = [len(tok(it.prompt)["input_ids"]) + len(it.answer_ids) for it in items]
    out = rollout.by_length(tok, items)
    assert sorted(items, key=lambda it: -lengths[items.index(it)]) == out
    assert [lengths[items.index(it)] for it in out] == sorted(lengths, reverse=True)
