"""Engine: batched results equal unbatched ones and independent forward passes; OOM back-off."""

from __future__ import annotations

import pytest
import torch

from transformer_squared.models import engine
from transformer_squared.errors import ResourceError

PROMPTS = [
    "Question: 2 + 2 = ?\nA. 3\nB. 4\nC. 5\nAnswer:",
    "Hi",
    "A much longer question about the history of the Roman empire and its many emperors?\nA. yes\nB. no\nAnswer:",
    "Pick one.\nA. x\nB. y\nC. z\nD. w\nE. v\nAnswer:",
    "Short one\nA. a\nB. b\nAnswer:",
]
LETTERS = [("A", "B", "C"), ("A", "B"), ("A", "B"), ("A", "B", "C", "D", "E"), ("A", "B")]


def _unpadded_last_logits(model, tok, text: str) -> torch.Tensor:
    ids = tok(text, return_tensors="pt")["input_ids"]  # (1, T), no padding at all
    with torch.no_grad():
        return model(input_ids=ids).logits[0, -1].float()  # (V,)


def test_letter_protocol_equals_argmax_of_unpadded_forward(tiny):
    model, tok = tiny
    greedy, logp = engine.score_letters(model, tok, PROMPTS, LETTERS, batch_size=3)
    for text, letters, g, lp in zip(PROMPTS, LETTERS, greedy, logp):
        logits = _unpadded_last_logits(model, tok, text)  # (V,)
        per_letter = []
        for letter in letters:  # logsumexp over the one-token spellings "A" and " A"
            ids = {tok.encode(s, add_special_tokens=False)[0] for s in (letter, " " + letter)
                   if len(tok.encode(s, add_special_tokens=False)) == 1}
            per_letter.append(torch.logsumexp(logits[sorted(ids)], 0))
        expected = torch.log_softmax(torch.stack(per_letter), 0)
        torch.testing.assert_close(lp, expected, rtol=1e-4, atol=1e-4)  # padded batch vs no padding: float noise
        assert int(lp.argmax()) == int(expected.argmax())
        assert g == tok.decode([int(logits.argmax())])


def test_batched_scoring_equals_unbatched(tiny):
    model, tok = tiny
    g1, lp1 = engine.score_letters(model, tok, PROMPTS, LETTERS, batch_size=1)
    g5, lp5 = engine.score_letters(model, tok, PROMPTS, LETTERS, batch_size=5)
    assert g1 == g5
    for a, b in zip(lp1, lp5):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_generate_batched_equals_single_hf_generate(tiny):
    model, tok = tiny
    batched = engine.generate(model, tok, PROMPTS, max_new_tokens=4, batch_size=4)
    for text, out in zip(PROMPTS, batched):
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
        assert out == tok.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def test_loglikelihood_equals_manual_sum(tiny):
    model, tok = tiny
    contexts, conts = ["The sky is", "2 + 2 =", "Hello"], [" blue", " 4", " world and more"]
    got = engine.loglikelihood(model, tok, contexts, conts, batch_size=2)
    for ctx, cont, (ll, n) in zip(contexts, conts, got):
        a = tok(ctx)["input_ids"]
        b = tok(cont, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([a + b])).logits[0].float(), -1)  # (T, V)
        expected = sum(logp[len(a) - 1 + j, t].item() for j, t in enumerate(b))
        assert n == len(b)
        assert ll == pytest.approx(expected, abs=1e-3)


class _OOMAbove:
    """Wrap a model so that a forward pass over more than `limit` rows raises torch.OutOfMemoryError."""

    def __init__(self, model, limit: int) -> None:
        self.model, self.limit, self.sizes = model, limit, []

    def parameters(self):
        return self.model.parameters()

    def __call__(self, **kw):
        self.sizes.append(kw["input_ids"].shape[0])
        if kw["input_ids"].shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.model(**kw)


def test_out_of_memory_halves_the_batch_and_keeps_results(tiny):
    model, tok = tiny
    ref = engine.score_letters(model, tok, PROMPTS, LETTERS, batch_size=1)
    wrapped = _OOMAbove(model, limit=1)
    got = engine.score_letters(wrapped, tok, PROMPTS, LETTERS, batch_size=4)
    assert wrapped.sizes[:3] == [4, 2, 1]  # halved twice, then every batch fits
    assert got[0] == ref[0]
    for a, b in zip(got[1], ref[1]):
        torch.testing.assert_close(a, b)


def test_out_of_memory_at_batch_one_is_a_typed_error(tiny):
    model, tok = tiny
    with pytest.raises(ResourceError, match="batch size 1"):
        engine.score_letters(_OOMAbove(model, limit=0), tok, PROMPTS, LETTERS, batch_size=2)


def test_run_batches_keeps_other_errors_and_reports_progress():
    done: list[int] = []
    assert engine.run_batches(list(range(7)), 3, lambda idx: None, done.append) == 3
    assert done == [3, 3, 1]

    def boom(idx):
        raise ValueError("not memory")

    with pytest.raises(ValueError):
        engine.run_batches([0, 1], 2, boom)


def test_shared_prefix_gives_the_logits_of_full_prompts(tiny):
    """Prompts with a long common prefix: the prefix's KV cache is shared; logits equal full forwards."""
    model, tok = tiny
    head = "Choose the expert best suited to answer the request below. " * 4
    prompts = [head + t for t in ("What is 2 + 2?", "Write a function that sorts a list of numbers.", "Hi")]
    rows = engine.tokenize(tok, prompts)
    assert engine.common_prefix(rows) >= engine.MIN_SHARED_PREFIX
    shared = engine.forward_last_shared(model, rows, tok.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        for i, r in enumerate(rows):
            alone = model(input_ids=torch.tensor([r])).logits[0, -1]
            torch.testing.assert_close(shared[i], alone, rtol=1e-4, atol=1e-4)  # cache + padding vs one forward
    assert engine.common_prefix([[1, 2, 3], [1, 2, 4]]) == 2 and engine.common_prefix([[1, 2], [1, 2, 5]]) == 1


def test_lm_head_gets_unstrided_hidden_states(tiny):
    """The kept positions reach the output layer as a plain contiguous tensor: HF's int `logits_to_keep`
    hands it a strided view, on which a CPU bfloat16 Linear is ~100× slower (engine.keep_last)."""
    model, tok = tiny
    seen = []
    hook = model.get_output_embeddings().register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        engine.score_letters(model, tok, PROMPTS[:1], LETTERS[:1])  # batch of one: the int form's view looks contiguous
        engine.loglikelihood(model, tok, PROMPTS[:2], [" B", " A"], batch_size=2)
    finally:
        hook.remove()
    assert [tuple(h.shape[:2]) for h in seen] == [(1, 1), (2, 2)]  # k = longest continuation + 1
    for h in seen:
        assert h.stride() == torch.empty(h.shape).stride()
