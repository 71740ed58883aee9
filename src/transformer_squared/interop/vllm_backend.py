"""Optional vLLM backend (extra `vllm`): the `engine.Engine` protocol (use / score_letters /
loglikelihood / generate) on vLLM, and `load_vllm`, an adapted model that runs pass 2 on it.

Experts run merged: W' = W + U·diag(s' − s)·Vᵀ is pushed into the engine through the model's own
`load_weights` (HF checkpoint names, so fused layers such as gate_up_proj are filled by vLLM's
own loader), and the prefix cache is reset after every swap so no KV block computed with other
weights is reused. Scores come from prompt log-probabilities, so they match engine.py's exactly
up to the numerics of the two stacks. With vLLM's multiprocess V1 engine, `LLM.apply_model` ships
the weights to the workers by pickling: set VLLM_ALLOW_INSECURE_SERIALIZATION=1 before starting it.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from ..models import engine
from ..experts.adapted import AdaptedModel, fixed_alpha, load_experts
from ..errors import ConfigError, ExpertError
from ..experts.expert import Expert, attach
from ..models.load import load_model, resolve_model
from ..experts.svf import SVFModel, adapted_weight, delta_w


def _load_into(model: Any, weights: list[tuple[str, Tensor]]) -> None:
    """Runs inside each vLLM worker (module-level so it pickles by reference)."""
    model.load_weights(weights)


def _no_rows(z_rows: Any) -> None:
    if z_rows is not None:
        raise ConfigError("the vLLM backend runs one mixture at a time (grouped); mixed batches need the HF engine")


class VLLMBackend:
    """A vLLM `LLM` plus the SVF factors and base weights of its targets (an `engine.Engine`, grouped only)."""

    supports_factored = False

    def __init__(self, llm: Any, tokenizer: Any, svf: SVFModel, dtype: torch.dtype = torch.bfloat16) -> None:
        self.llm = llm
        self.tokenizer = tokenizer
        self.svf = svf
        self.dtype = dtype  # dtype of the weights handed to vLLM
        self._base = {n: svf.model.get_submodule(n).weight.detach() for n in svf.targets}  # (out, in) each
        self._loaded: dict[str, Tensor] | None = None  # z now in the engine; None = base weights

    @classmethod
    def create(
        cls, model: str, experts: Sequence[str | Path | Expert] = (), targets: str = "mlp", dtype: str = "bfloat16",
        **llm_kwargs: Any,
    ) -> "VLLMBackend":
        """Start vLLM on `model` (prefix caching on); the HF copy on the CPU supplies factors and base W."""
        try:
            from vllm import LLM
        except ImportError:
            raise ConfigError("the vLLM backend needs vllm: pip install 'transformer-squared[vllm]'") from None
        hf, tok = load_model(model, device="cpu", dtype="float32")
        svf = attach(hf, load_experts(experts), targets)
        llm = LLM(model=resolve_model(model), dtype=dtype, enable_prefix_caching=True, **llm_kwargs)
        return cls(llm, tok, svf, getattr(torch, dtype))

    def use(self, z: dict[str, Tensor] | None) -> None:
        """Put W'(z) (or the base weights for None) into the engine, then drop the prefix cache.

        Passing the same mapping object again is a no-op (no reload)."""
        if z is self._loaded:
            return
        if z is not None and set(z) != set(self.svf.factors):
            raise ExpertError("mixture targets differ from the backend's targets; experts must share targets")
        weights = []
        for name, f in self.svf.factors.items():
            W0 = self._base[name]
            W = W0 if z is None else adapted_weight(
                name, W0, delta_w(f.U, f.S, f.V, z[name].detach().float(), self.svf.normalise))  # (out, in)
            weights.append((f"{name}.weight", W.to(self.dtype)))  # HF checkpoint name
        if hasattr(self.llm, "apply_model"):
            self.llm.apply_model(functools.partial(_load_into, weights=weights))
        else:  # older vLLM: the in-process driver worker
            self.llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights(weights)
        self.llm.reset_prefix_cache()
        self._loaded = z

    def _run(self, token_ids: list[list[int]], params: list[Any]) -> list[Any]:
        prompts = [{"prompt_token_ids": ids} for ids in token_ids]
        return self.llm.generate(prompts, params, use_tqdm=False)

    def generate(
        self, prompts: list[str], max_new_tokens: int = 128, batch_size: int | None = None, do_sample: bool = False,
        temperature: float = 1.0, seed: int | None = None, progress: engine.Progress | None = None,
        z_rows: engine.RowZ | None = None,
    ) -> list[str]:
        """Completions of already-formatted prompts, in input order (vLLM batches by itself)."""
        from vllm import SamplingParams

        _no_rows(z_rows)
        p = SamplingParams(max_tokens=max_new_tokens, temperature=temperature if do_sample else 0.0, seed=seed)
        outs = self._run(engine.tokenize(self.tokenizer, prompts), [p] * len(prompts))
        if progress:
            progress(len(prompts))
        return [o.outputs[0].text for o in outs]

    def _continuation_logprobs(self, seqs: list[list[int]], n_last: list[int]) -> list[list[float]]:
        """log p of the last n tokens of each sequence given what precedes them (prompt log-probs)."""
        from vllm import SamplingParams

        p = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outs = self._run(seqs, [p] * len(seqs))
        return [[o.prompt_logprobs[j][s[j]].logprob for j in range(len(s) - n, len(s))]
                for o, s, n in zip(outs, seqs, n_last)]

    def score_letters(
        self, prompts: list[str], letters: list[tuple[str, ...]], batch_size: int | None = None,
        progress: engine.Progress | None = None, z_rows: engine.RowZ | None = None,
    ) -> tuple[list[str], list[Tensor]]:
        """engine.score_letters: greedy next token's text and log-probabilities over the valid letters."""
        from vllm import SamplingParams

        _no_rows(z_rows)
        ids = engine.tokenize(self.tokenizer, prompts)
        greedy_outs = self._run(ids, [SamplingParams(max_tokens=1, temperature=0.0)] * len(ids))
        greedy = [self.tokenizer.decode([o.outputs[0].token_ids[0]]) for o in greedy_outs]
        variants = [engine.letter_token_ids(self.tokenizer, ls) for ls in letters]  # per prompt: per letter: ids
        seqs = [ids[i] + [t] for i, v in enumerate(variants) for letter in v for t in letter]
        flat = iter(lp[0] for lp in self._continuation_logprobs(seqs, [1] * len(seqs)))
        logp = []
        for v in variants:
            per_letter = torch.tensor([torch.logsumexp(torch.tensor([next(flat) for _ in letter]), 0) for letter in v])
            logp.append(torch.log_softmax(per_letter, 0))
        if progress:
            progress(len(prompts))
        return greedy, logp

    def loglikelihood(
        self, contexts: list[str], continuations: list[str], batch_size: int | None = None,
        progress: engine.Progress | None = None, z_rows: engine.RowZ | None = None,
    ) -> list[tuple[float, int]]:
        """engine.loglikelihood: (sum of log p(continuation | context), number of continuation tokens)."""
        _no_rows(z_rows)
        ctx = engine.tokenize(self.tokenizer, contexts)
        cont = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
        if any(not c for c in cont):
            raise ValueError("every continuation must have at least one token")
        lps = self._continuation_logprobs([a + b for a, b in zip(ctx, cont)], [len(c) for c in cont])
        if progress:
            progress(len(contexts))
        return [(math.fsum(lp), len(lp)) for lp in lps]


def load_vllm(model: str, experts: Sequence[str | Path | Expert] = (), alpha: Sequence[float] | None = None,
              dtype: str = "bfloat16", **llm_kwargs: Any) -> AdaptedModel:
    """An adapted model whose pass 2 runs on vLLM (grouped: one mixture merged at a time)."""
    loaded = load_experts(experts)
    a = None if alpha is None else fixed_alpha(alpha, len(loaded))
    backend = VLLMBackend.create(model, loaded, dtype=dtype, **llm_kwargs)
    return AdaptedModel(backend.svf.model, backend.tokenizer, backend.svf, loaded, a, engine=backend)
