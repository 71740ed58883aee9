"""vLLM backend: weight swaps through load_weights, prefix-cache resets, and engine-equal scores.

vLLM cannot be installed here, so most tests drive the backend through a small stand-in that
follows vLLM's API (LLM.apply_model / reset_prefix_cache / generate with prompt_logprobs) over the
tiny HF model; the last test uses the real vLLM and is skipped where it is absent.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import pytest
import torch

from test_export import make_expert
from transformer_squared.models import engine
from transformer_squared.experts.expert import attach
from transformer_squared.experts.svf import mix
from transformer_squared.interop.vllm_backend import VLLMBackend


@dataclass
class SamplingParams:  # the fields of vllm.SamplingParams the backend uses
    max_tokens: int = 16
    temperature: float = 1.0
    seed: int | None = None
    prompt_logprobs: int | None = None


@dataclass
class Logprob:
    logprob: float


class FakeModel:
    """vLLM's model object: load_weights takes (HF checkpoint name, tensor) pairs."""

    def __init__(self, hf):
        self.hf = hf

    def load_weights(self, weights):
        with torch.no_grad():
            for name, w in weights:
                self.hf.get_parameter(name).copy_(w)
        return {n for n, _ in weights}


class FakeLLM:
    def __init__(self, hf):
        self.hf, self.model = hf, FakeModel(hf)
        self.events: list[str] = []

    def apply_model(self, fn):
        self.events.append("load")
        return [fn(self.model)]

    def reset_prefix_cache(self):
        self.events.append("reset")

    @torch.no_grad()
    def generate(self, prompts, params, use_tqdm=True):
        outs = []
        for prompt, p in zip(prompts, params):
            ids = torch.tensor([prompt["prompt_token_ids"]])
            logp = torch.log_softmax(self.hf(ids).logits[0].float(), -1)  # (T, V)
            gen = self.hf.generate(ids, max_new_tokens=p.max_tokens, do_sample=False, top_p=None, top_k=None)
            new = gen[0, ids.shape[1]:].tolist()
            pl = None
            if p.prompt_logprobs is not None:
                toks = prompt["prompt_token_ids"]
                pl = [None] + [{toks[j]: Logprob(float(logp[j - 1, toks[j]]))} for j in range(1, len(toks))]
            outs.append(types.SimpleNamespace(prompt_logprobs=pl, outputs=[types.SimpleNamespace(token_ids=new, text="")]))
        return outs


@pytest.fixture()
def fake_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=SamplingParams))


def _backend(tiny_model_dir):
    from transformer_squared.models.load import load_model

    hf, tok = load_model(str(tiny_model_dir), device="cpu")   # the HF copy: factors and base W
    engine_model, _ = load_model(str(tiny_model_dir), device="cpu")  # stands in for vLLM's weights
    e = make_expert(hf, scale=2.0)
    svf = attach(hf, [e])
    return VLLMBackend(FakeLLM(engine_model), tok, svf, dtype=torch.float32), e, engine_model


def test_swaps_weights_and_resets_prefix_cache(tiny_model_dir, fake_vllm):
    be, e, engine_model = _backend(tiny_model_dir)
    name = e.meta.targets[0]
    W0 = engine_model.get_submodule(name).weight.detach().clone()
    z = mix([e.z()], torch.tensor([1.0]))
    be.use(z)
    be.use(z)  # same mixture: no reload
    assert be.llm.events == ["load", "reset"]
    with be.svf.merged(z):
        torch.testing.assert_close(engine_model.get_submodule(name).weight, be.svf.model.get_submodule(name).weight)
    be.use(None)
    assert be.llm.events == ["load", "reset", "load", "reset"]
    assert torch.equal(engine_model.get_submodule(name).weight, W0)  # base weights back, bit for bit


def test_a_non_finite_mixture_is_refused_before_anything_loads(tiny_model_dir, fake_vllm):
    from transformer_squared.errors import ExpertError

    be, e, _ = _backend(tiny_model_dir)
    z = {t: v.clone() for t, v in mix([e.z()], torch.tensor([1.0])).items()}
    last = e.meta.targets[-1]
    z[last][0] = float("inf")
    with pytest.raises(ExpertError, match=f"adapted weight of '{last}' is not finite"):
        be.use(z)
    assert be.llm.events == []


def test_scores_match_hf_engine(tiny_model_dir, fake_vllm):
    be, e, _ = _backend(tiny_model_dir)
    tok, hf = be.tokenizer, be.svf.model
    prompts = ["Question: 2+2? Answer:", "The best letter is"]
    letters = [("A", "B", "C", "D"), ("A", "B", "C")]
    z = mix([e.z()], torch.tensor([1.0]))
    be.use(z)
    greedy, logp = be.score_letters(prompts, letters)
    ll = be.loglikelihood(["The sky is", "One plus one is"], [" blue", " two"])
    gen = be.generate(prompts, max_new_tokens=3)
    with be.svf.merged(z):
        g_ref, lp_ref = engine.score_letters(hf, tok, prompts, letters)
        ll_ref = engine.loglikelihood(hf, tok, ["The sky is", "One plus one is"], [" blue", " two"])
    assert greedy == g_ref and len(gen) == 2
    for a, b in zip(logp, lp_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    for (a, n), (b, m) in zip(ll, ll_ref):
        assert n == m and a == pytest.approx(b, abs=1e-3)


def test_real_vllm_swap(tiny_model_dir):
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a GPU")
    be = VLLMBackend.create(str(tiny_model_dir), gpu_memory_utilization=0.2, enforce_eager=True)
    base = be.score_letters(["The best letter is"], [("A", "B")])[1][0]
    e = make_expert(be.svf.model, scale=2.0)
    be.use(mix([e.z()], torch.tensor([1.0])))
    assert not torch.allclose(be.score_letters(["The best letter is"], [("A", "B")])[1][0], base)


def test_adapted_model_runs_per_prompt_mixtures_on_the_backend(tiny_model_dir, fake_vllm):
    """The same AdaptedModel calls over the vLLM engine (grouped) and the HF engine agree; mixed batches are refused."""
    from transformer_squared.experts.adapted import AdaptedModel
    from transformer_squared.errors import ConfigError

    be, e, _ = _backend(tiny_model_dir)
    on_vllm = AdaptedModel(be.svf.model, be.tokenizer, be.svf, [e], engine=be)
    on_hf = AdaptedModel(be.svf.model, be.tokenizer, be.svf, [e])
    prompts, letters = ["Question: 2+2? Answer:", "The best letter is"], [("A", "B", "C")] * 2
    alpha = torch.tensor([[1.0], [0.0]])  # the expert, then the base weights
    for a, b in zip(on_vllm.score_letters(prompts, letters, alpha)[1], on_hf.score_letters(prompts, letters, alpha)[1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert be.llm.events[-2:] == ["load", "reset"] and be._loaded is None  # base weights back in the engine
    with pytest.raises(ConfigError, match="mixed batches"):
        on_vllm.score_letters(prompts, letters, alpha, mixed=True)
