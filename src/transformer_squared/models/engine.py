"""Batched scoring and generation with Hugging Face models, and the `Engine` protocol.

Prompts are tokenized once, sorted by token length (longest first, so an out-of-memory error
shows up on the first batch), left-padded into batches, and results put back in input order
(lm-eval's `Collator`). A batch that runs out of memory is halved and retried. A `context`
callable, given the input indices of a batch's prompts, wraps each forward pass (factored SVF
weights with one mixture per row use it). In `score_letters`, a batch whose prompts share a long
token prefix (pass 1's classification prompt: instructions and expert list) computes the prefix
once and shares its KV cache across the batch (same logits to float rounding, tested).

`Engine` is the small protocol the adapted model runs pass 2 on: `use` (merged weights for the
calls that follow), `score_letters`, `loglikelihood` and `generate`, each a list in and a list out.
`HFEngine` implements it with the functions below; `interop.vllm_backend.VLLMBackend` with vLLM.
"""

from __future__ import annotations

import functools
import inspect
import logging
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable, Protocol

import torch
from torch import Tensor

from ..errors import ConfigError, DataError, ResourceError

log = logging.getLogger(__name__)

Progress = Callable[[int], None]  # called with the number of prompts just finished
BatchContext = Callable[[list[int]], AbstractContextManager]  # input indices of a batch → context around its forward
RowZ = Callable[[list[int]], dict[str, Tensor]]  # input indices of a batch → z per target, (B, r) each


def tokenize(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, unpadded. A chat-formatted text already carries BOS; plain text gets the default."""
    if not texts:  # nothing left to score (a resumed run, a rank's empty shard): tokenizers refuse []
        return []
    bos = getattr(tokenizer, "bos_token", None)
    special = not (bos and all(t.startswith(bos) for t in texts))
    return tokenizer(texts, add_special_tokens=special)["input_ids"]


def check_context(model: Any, tokenizer: Any, prompts: list[str], names: list[str] | None = None,
                  ids: list[list[int]] | None = None) -> None:
    """DataError naming the first prompt that leaves no room for one new token in the model's context."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not limit:
        return
    ids = tokenize(tokenizer, prompts) if ids is None else ids
    for i, x in enumerate(ids):
        if len(x) >= limit:
            who = names[i] if names else f"prompt {i + 1} of {len(ids)}"
            raise DataError(f"{who}: {len(x):,} tokens, longer than the model's context of {limit:,} "
                            "(max_position_embeddings); shorten it or leave it out")


def pad_left(ids: list[list[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask and position_ids (counting from each row's first real token)."""
    T = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), T), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(ids), T), dtype=torch.long)  # (B, T)
    for row, x in enumerate(ids):
        input_ids[row, T - len(x) :] = torch.tensor(x, dtype=torch.long)
        mask[row, T - len(x) :] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), "position_ids": position_ids.to(device)}


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.OutOfMemoryError):
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def run_batches(order: list[int], batch_size: int, fn: Callable[[list[int]], None], progress: Progress | None = None,
                context: BatchContext | None = None) -> int:
    """Call `fn` on consecutive slices of `order` (inside `context(slice)` if given); on out-of-memory
    halve the batch and retry the slice.

    Returns the batch size that finally worked (callers may reuse it for the next call).
    """
    if batch_size < 1:
        raise ResourceError(f"batch size {batch_size}: must be at least 1")
    start = 0
    while start < len(order):
        idx = order[start : start + batch_size]
        try:
            with context(idx) if context is not None else nullcontext():
                fn(idx)
        except Exception as e:
            if not _is_oom(e):
                raise
            if batch_size == 1:
                raise ResourceError(f"out of memory with batch size 1 on a prompt of index {idx[0]}: use a smaller model, "
                                    "a shorter prompt, --dtype bfloat16 or another device") from None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            batch_size = max(1, batch_size // 2)
            log.warning("out of memory: retrying with batch size %d", batch_size)
            continue
        start += len(idx)
        if progress is not None:
            progress(len(idx))
    return batch_size


def _length_order(ids: list[list[int]]) -> list[int]:
    return sorted(range(len(ids)), key=lambda i: -len(ids[i]))


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


@torch.no_grad()
def generate(
    model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int = 128, batch_size: int = 8,
    do_sample: bool = False, temperature: float = 1.0, seed: int | None = None, progress: Progress | None = None,
    context: BatchContext | None = None,
) -> list[str]:
    """Completions for already-formatted prompts (greedy unless `do_sample`), in input order."""
    if seed is not None:
        torch.manual_seed(seed)
    device, pad = _device(model), _pad_id(tokenizer)
    ids = tokenize(tokenizer, prompts)
    check_context(model, tokenizer, prompts, ids=ids)
    out: list[str] = [""] * len(prompts)
    sampling = dict(do_sample=True, temperature=temperature) if do_sample else dict(do_sample=False)

    def step(idx: list[int]) -> None:
        enc = pad_left([ids[i] for i in idx], pad, device)
        enc.pop("position_ids")  # generate derives positions from the attention mask itself
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=pad, top_p=None, top_k=None, **sampling)
        new = gen[:, enc["input_ids"].shape[1] :]  # (B, new_tokens)
        for i, text in zip(idx, tokenizer.batch_decode(new, skip_special_tokens=True)):
            out[i] = text

    run_batches(_length_order(ids), batch_size, step, progress, context)
    return out


def letter_token_ids(tokenizer: Any, letters: tuple[str, ...]) -> list[list[int]]:
    """Token ids that spell each letter as the next token: "A" and " A" where each is one token."""
    out = []
    for letter in letters:
        ids = []
        for text in (letter, " " + letter):
            enc = tokenizer.encode(text, add_special_tokens=False)
            if len(enc) == 1 and enc[0] not in ids:
                ids.append(enc[0])
        if not ids:
            raise ValueError(f"letter '{letter}' is not a single token for this tokenizer")
        out.append(ids)
    return out


def keep_last(batch: dict[str, torch.Tensor], k: int) -> torch.Tensor:
    """`logits_to_keep` for the last k positions, as indices (k,). The int form makes HF slice
    hidden states to a strided view, and a bfloat16 Linear on such a view runs ~100× slower on the
    CPU (torch 2.13: 27 s instead of 0.25 s for Llama-3's lm_head); indexing copies k rows."""
    T = batch["input_ids"].shape[1]
    return torch.arange(T - k, T, device=batch["input_ids"].device)  # (k,)


def forward_last(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token logits at the last position of a left-padded batch, (B, V), float32."""
    out = model(**batch, logits_to_keep=keep_last(batch, 1), use_cache=False)
    return out.logits[:, -1, :].float()  # (B, V)


MIN_SHARED_PREFIX = 32  # tokens: a batch whose prompts all start with this many equal tokens runs them once


def common_prefix(rows: list[list[int]]) -> int:
    """Number of leading tokens all rows share, leaving every row at least one token of its own."""
    n = min(len(r) for r in rows) - 1
    for i in range(max(n, 0)):
        if any(r[i] != rows[0][i] for r in rows):
            return i
    return max(n, 0)


@functools.lru_cache(maxsize=None)
def _cache_kwarg(model_type: type) -> str:
    """The name a model class's forward takes its KV cache by (transformers ≥ 5.x: `cache`), read once per class."""
    return "cache" if "cache" in inspect.signature(model_type.forward).parameters else "past_key_values"


def forward_last_shared(model: Any, rows: list[list[int]], pad_id: int, device: torch.device) -> torch.Tensor:
    """`forward_last` of token rows; a common prefix of ≥ MIN_SHARED_PREFIX tokens is computed once and
    its KV cache repeated over the batch, the rest left-padded after it. (B, V), float32."""
    P = common_prefix(rows) if len(rows) > 1 else 0
    if P < MIN_SHARED_PREFIX:
        return forward_last(model, pad_left(rows, pad_id, device))
    prefix = torch.tensor([rows[0][:P]], dtype=torch.long, device=device)  # (1, P)
    first = model(input_ids=prefix, use_cache=True, logits_to_keep=keep_last({"input_ids": prefix}, 1))
    cache = getattr(first, "cache", None) or getattr(first, "past_key_values", None)  # transformers ≥ 5.x: `cache`
    if not hasattr(cache, "batch_repeat_interleave"):  # a model whose cache cannot be shared: the plain way
        return forward_last(model, pad_left(rows, pad_id, device))
    cache.batch_repeat_interleave(len(rows))
    rest = pad_left([r[P:] for r in rows], pad_id, device)  # (B, S) each
    ones = torch.ones(len(rows), P, dtype=torch.long, device=device)  # (B, P)
    mask = torch.cat([ones, rest["attention_mask"]], 1)  # (B, P + S)
    out = model(input_ids=rest["input_ids"], attention_mask=mask, position_ids=rest["position_ids"] + P,
                use_cache=True, logits_to_keep=keep_last(rest, 1), **{_cache_kwarg(type(model)): cache})
    return out.logits[:, -1, :].float()  # (B, V)


def last_logits(model: Any, tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """Next-token logits after each text, (B, V), in one forward pass (grad flows if enabled)."""
    batch = pad_left(tokenize(tokenizer, texts), _pad_id(tokenizer), _device(model))
    return forward_last(model, batch)  # (B, V)


def letter_logits(logits: torch.Tensor, ids: list[list[int]]) -> torch.Tensor:
    """Per-letter logit = logsumexp over the letter's token variants; logits (V,) → (n_letters,)."""
    return torch.stack([torch.logsumexp(logits[v], 0) for v in ids])


@torch.no_grad()
def score_letters(
    model: Any, tokenizer: Any, prompts: list[str], letters: list[tuple[str, ...]], batch_size: int = 8,
    progress: Progress | None = None, context: BatchContext | None = None,
) -> tuple[list[str], list[torch.Tensor]]:
    """One forward pass per batch gives both MCQ protocols, in input order:
    the greedy next token's text (`generate` protocol: one greedy token) and the
    log-probabilities over each prompt's valid letters (`letter` protocol)."""
    device, pad = _device(model), _pad_id(tokenizer)
    ids = tokenize(tokenizer, prompts)
    check_context(model, tokenizer, prompts, ids=ids)
    greedy: list[str] = [""] * len(prompts)
    logp: list[torch.Tensor] = [torch.empty(0)] * len(prompts)
    id_cache: dict[tuple[str, ...], list[list[int]]] = {}

    def step(idx: list[int]) -> None:
        rows = [ids[i] for i in idx]
        if context is None:
            logits = forward_last_shared(model, rows, pad, device)  # (B, V)
        else:  # per-row weights give each row its own prefix keys and values: nothing to share
            logits = forward_last(model, pad_left(rows, pad, device))  # (B, V)
        top = logits.argmax(-1).tolist()
        for row, i in enumerate(idx):
            greedy[i] = tokenizer.decode([top[row]])
            if letters[i] not in id_cache:
                id_cache[letters[i]] = letter_token_ids(tokenizer, letters[i])
            logp[i] = torch.log_softmax(letter_logits(logits[row], id_cache[letters[i]]), 0).cpu()

    run_batches(_length_order(ids), batch_size, step, progress, context)
    return greedy, logp


@torch.no_grad()
def loglikelihood(
    model: Any, tokenizer: Any, contexts: list[str], continuations: list[str], batch_size: int = 8,
    progress: Progress | None = None, context: BatchContext | None = None,
) -> list[tuple[float, int]]:
    """(sum of log p(continuation tokens | context), number of continuation tokens) per pair, in input order."""
    device, pad = _device(model), _pad_id(tokenizer)
    ctx = tokenize(tokenizer, contexts)
    cont = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
    if any(not c for c in cont):
        raise ValueError("every continuation must have at least one token")
    full = [a + b for a, b in zip(ctx, cont)]
    out: list[tuple[float, int]] = [(0.0, 0)] * len(full)

    def step(idx: list[int]) -> None:
        k = max(len(cont[i]) for i in idx) + 1
        batch = pad_left([full[i] for i in idx], pad, device)
        logits = model(**batch, logits_to_keep=keep_last(batch, k), use_cache=False).logits  # (B, k, V)
        logp = torch.log_softmax(logits.float(), -1)  # (B, k, V)
        for row, i in enumerate(idx):
            c = torch.tensor(cont[i], device=logp.device)  # (n,)
            pred = logp[row, k - 1 - len(c) : k - 1]  # (n, V): positions that predict the continuation
            out[i] = (pred.gather(-1, c[:, None]).sum().item(), len(c))

    run_batches(_length_order(full), batch_size, step, progress, context)
    return out


class Engine(Protocol):
    """What pass 2 runs on. Prompts are already formatted; every method is a list in, a list out, same order.

    `z_rows`, where given, makes each batch run factored with one z per row (engines that cannot,
    such as vLLM, raise ConfigError); otherwise the weights set by `use` apply to every prompt.
    """

    tokenizer: Any
    supports_factored: bool  # whether `z_rows` (one mixture per batch row) is available

    def use(self, z: dict[str, Tensor] | None) -> None:
        """Merge W'(z) into the weights for the calls that follow (None: the base weights)."""
        ...

    def score_letters(self, prompts: list[str], letters: list[tuple[str, ...]], batch_size: int = 8,
                      progress: Progress | None = None, z_rows: RowZ | None = None) -> tuple[list[str], list[Tensor]]:
        """Greedy next token's text, and log-probabilities over each prompt's valid letters."""
        ...

    def loglikelihood(self, contexts: list[str], continuations: list[str], batch_size: int = 8,
                      progress: Progress | None = None, z_rows: RowZ | None = None) -> list[tuple[float, int]]:
        """(sum of log p(continuation | context), number of continuation tokens) per pair."""
        ...

    def generate(self, prompts: list[str], max_new_tokens: int = 128, batch_size: int = 8, do_sample: bool = False,
                 temperature: float = 1.0, seed: int | None = None, progress: Progress | None = None,
                 z_rows: RowZ | None = None) -> list[str]:
        """Completions (greedy unless `do_sample`)."""
        ...


class HFEngine:
    """`Engine` over a Hugging Face model (any `nn.Module` causal LM: plain, PEFT-wrapped, ...).

    `svf` (an `svf.SVFModel` on the same model) is needed only for adapted weights: `use` merges
    through it and `z_rows` swaps its targets for factored layers batch by batch.
    """

    supports_factored = True

    def __init__(self, model: Any, tokenizer: Any, svf: Any = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.svf = svf

    def use(self, z: dict[str, Tensor] | None) -> None:
        if self.svf is None:
            if z is not None:
                raise ConfigError("adapted weights need SVF factors: build the engine with an SVFModel")
            return
        self.svf.restore()
        if z is not None:
            self.svf.merge(z)

    def _context(self, z_rows: RowZ | None) -> BatchContext | None:
        if z_rows is None:
            return None
        if self.svf is None:
            raise ConfigError("mixed batches need SVF factors: build the engine with an SVFModel")
        return lambda idx: self.svf.factored(z_rows(idx))

    def score_letters(self, prompts: list[str], letters: list[tuple[str, ...]], batch_size: int = 8,
                      progress: Progress | None = None, z_rows: RowZ | None = None) -> tuple[list[str], list[Tensor]]:
        return score_letters(self.model, self.tokenizer, prompts, letters, batch_size, progress, self._context(z_rows))

    def loglikelihood(self, contexts: list[str], continuations: list[str], batch_size: int = 8,
                      progress: Progress | None = None, z_rows: RowZ | None = None) -> list[tuple[float, int]]:
        return loglikelihood(self.model, self.tokenizer, contexts, continuations, batch_size, progress,
                             self._context(z_rows))

    def generate(self, prompts: list[str], max_new_tokens: int = 128, batch_size: int = 8, do_sample: bool = False,
                 temperature: float = 1.0, seed: int | None = None, progress: Progress | None = None,
                 z_rows: RowZ | None = None) -> list[str]:
        return generate(self.model, self.tokenizer, prompts, max_new_tokens, batch_size, do_sample, temperature, seed,
                        progress, self._context(z_rows))
