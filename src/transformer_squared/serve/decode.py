"""Batched decoding for the server: every row has its own sampling settings and stops on its own.

A batch is prefilled once (left-padded, positions counted from each row's first real token), then
decoded one token per step with a KV cache. A row ends at an end-of-sequence token, a stop string,
its token budget, the model's context, or when its client goes away (`cancelled`); finished rows
leave the batch (their cache rows are dropped). Between steps `join` may hand over waiting rows:
they are prefilled on their own and appended to the running batch (continuous batching; the KV
caches are left-aligned with zero padding that the attention mask hides). The batch ends when its
last row does.
Text reaches the row's `emit` callback as it becomes final: held back while it could still be the
start of a stop string or ends inside a multi-byte character.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from ..models.engine import _cache_kwarg, keep_last, pad_left

Emit = Callable[[str, dict], None]  # (kind, payload): "prompt_logprobs", "delta", "done"


@dataclass
class Sampling:
    """How one row picks its tokens and when it stops (OpenAI's request fields)."""

    max_tokens: int = 16  # most new tokens; 0: score the prompt only
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0  # nucleus: sample among the most likely tokens holding this much probability
    seed: int | None = None  # seeds this row's sampler (None: a fresh random seed)
    stop: tuple[str, ...] = ()  # the text ends before the first of these
    logprobs: int | None = None  # log-probabilities of each new token and this many top alternatives
    prompt_logprobs: bool = False  # also those of the prompt's tokens (completions with echo)


@dataclass
class Row:
    """One sequence to decode and where its results go."""

    ids: list[int]  # prompt token ids
    sampling: Sampling
    emit: Emit
    cancelled: Callable[[], bool] = lambda: False
    out: list[int] = field(default_factory=list)  # new token ids
    logprobs: list[tuple[int, float, dict[int, float]]] = field(default_factory=list)  # (id, log p, top-k)
    sent: int = 0  # characters of the text already emitted
    finish: str | None = None  # "stop", "length" or "cancelled"
    cut: bool = False  # a stop string ended the text (its text up to the stop is emitted already)


def _generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def sample(logits: Tensor, s: Sampling, g: torch.Generator) -> int:
    """One token id from next-token logits (V,) float32: greedy at temperature 0, else top-p sampling."""
    if s.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / s.temperature, -1)  # (V,)
    if s.top_p < 1:
        p, idx = probs.sort(descending=True)  # (V,), (V,)
        keep = (p.cumsum(0) - p) < s.top_p  # tokens before which less than top_p is gathered; the first always
        probs = torch.zeros_like(probs).scatter(0, idx[keep], p[keep])
    return int(torch.multinomial(probs.cpu(), 1, generator=g))


def _top(logp: Tensor, k: int) -> dict[int, float]:
    v, i = logp.topk(max(k, 1))
    return dict(zip(i.tolist(), v.tolist()))


def prompt_logprobs(logits: Tensor, ids: list[int], k: int) -> dict[str, Any]:
    """Log-probability of each prompt token given the ones before (None for the first), and the top-k
    at each position; logits (T, V) of the row's real positions."""
    logp = torch.log_softmax(logits[:-1].float(), -1)  # (T-1, V): position j predicts token j+1
    nxt = torch.tensor(ids[1:], device=logp.device)  # (T-1,)
    chosen = logp.gather(-1, nxt[:, None])[:, 0].tolist() if len(ids) > 1 else []
    tops = [_top(logp[j], k) for j in range(len(ids) - 1)]
    return {"ids": list(ids), "token_logprobs": [None] + chosen, "top": [None] + tops}


class Text:
    """The text of a row's new tokens, and how much of it is final."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def step(self, row: Row) -> bool:
        """Emit the row's newly final text; True when a stop string ended it."""
        text = self.tokenizer.decode(row.out, skip_special_tokens=True)
        stops = row.sampling.stop
        cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
        if cut >= 0:
            self._emit(row, text[:cut])
            row.cut = True
            return True
        safe = len(text) - (max(map(len, stops)) - 1 if stops else 0)
        while safe > row.sent and text[safe - 1] == "\ufffd":  # a character still incomplete
            safe -= 1
        self._emit(row, text[:safe])
        return False

    def finish(self, row: Row) -> None:
        if not row.cut:  # the text held back for stop strings is final now
            self._emit(row, self.tokenizer.decode(row.out, skip_special_tokens=True))
        row.emit("done", {"finish_reason": row.finish, "completion_tokens": len(row.out), "logprobs": row.logprobs})

    @staticmethod
    def _emit(row: Row, text: str) -> None:
        if len(text) > row.sent:
            row.emit("delta", {"text": text[row.sent:]})
            row.sent = len(text)


Join = Callable[[int], "tuple[list[Row], AbstractContextManager] | None"]  # rows running → (new rows, prefill context)


def _prefill(model: Any, rows: list[Row], pad: int, device: torch.device) -> tuple[Any, Tensor, Tensor, Tensor]:
    """Forward over the rows' prompts: (KV cache, last logits (B, V), attention mask (B, T), last positions (B,));
    emits the prompt log-probabilities of rows that asked for them."""
    enc = pad_left([r.ids for r in rows], pad, device)
    everything = any(r.sampling.prompt_logprobs for r in rows)
    out = model(**enc, use_cache=True, logits_to_keep=0 if everything else keep_last(enc, 1))
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    T = enc["input_ids"].shape[1]
    for b, r in enumerate(rows):
        if r.sampling.prompt_logprobs:
            r.emit("prompt_logprobs", prompt_logprobs(out.logits[b, T - len(r.ids):], r.ids, r.sampling.logprobs or 1))
    return cache, out.logits[:, -1, :].float(), enc["attention_mask"], enc["position_ids"][:, -1]


def joinable(cache: Any) -> bool:
    """Whether rows can be appended to this KV cache: plain full-attention layers (keys, values (B, H, T, D))."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer).__name__ == "DynamicLayer" and getattr(layer, "keys", None) is not None
                                for layer in layers)


def _left(x: Tensor, T: int, dim: int) -> Tensor:
    """x zero-padded on the left of `dim` to length T (padding is masked out by the attention mask)."""
    n = T - x.shape[dim]
    if n == 0:
        return x
    shape = list(x.shape)
    shape[dim] = n
    return torch.cat([x.new_zeros(shape), x], dim)


def append_rows(cache: Any, mask: Tensor, other: Any, other_mask: Tensor) -> Tensor:
    """Rows of `other` appended to `cache` in place, both left-aligned to the longer; the joint mask (B, T)."""
    T = max(mask.shape[1], other_mask.shape[1])
    for a, b in zip(cache.layers, other.layers):
        a.keys = torch.cat([_left(a.keys, T, -2), _left(b.keys, T, -2)])  # (B_a + B_b, H, T, D)
        a.values = torch.cat([_left(a.values, T, -2), _left(b.values, T, -2)])
    return torch.cat([_left(mask, T, 1), _left(other_mask, T, 1)])  # (B_a + B_b, T)


def drop_padding(cache: Any, mask: Tensor) -> Tensor:
    """Cut the leading columns no row attends to (left by rows that left) from the mask (B, T) and, in place,
    from a joinable cache; else a batch that rows keep joining would grow its cache by one column a step."""
    start = int(mask.any(0).int().argmax())  # the first column some row attends to
    if start == 0 or not joinable(cache):
        return mask
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[..., start:, :], layer.values[..., start:, :]  # (B, H, T - start, D)
    return mask[:, start:]


@torch.no_grad()
def decode(model: Any, tokenizer: Any, rows: list[Row], eos_ids: set[int], context_len: int | None,
           select: Callable[[Tensor], None] | None = None, join: Join | None = None) -> None:
    """Run rows to their ends (see the module docstring); `select(keep)` follows the rows that stay, and
    `join(n_running)` may hand over waiting rows (with the context their prefill runs in) at each step."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    text = Text(tokenizer)
    rows = list(rows)
    gens = [_generator(r.sampling.seed) for r in rows]
    cache, logits, mask, pos = _prefill(model, rows, pad, device)
    active = list(range(len(rows)))
    while True:
        new = join(len(active)) if join is not None and joinable(cache) else None
        if new:
            new_rows, ctx = new
            with ctx:
                cache2, logits2, mask2, pos2 = _prefill(model, new_rows, pad, device)
            mask = append_rows(cache, mask, cache2, mask2)
            logits, pos = torch.cat([logits, logits2]), torch.cat([pos, pos2])
            active += range(len(rows), len(rows) + len(new_rows))
            rows += new_rows
            gens += [_generator(r.sampling.seed) for r in new_rows]
        nxt = []
        for j, b in enumerate(active):
            r = rows[b]
            if r.cancelled():
                r.finish = "cancelled"
            elif r.sampling.max_tokens == 0:
                r.finish = "length"
            else:
                _step(r, logits[j], gens[b], eos_ids, text, context_len)
            nxt.append(r.out[-1] if r.out else pad)
        keep = [j for j, b in enumerate(active) if rows[b].finish is None]
        for b in active:
            if rows[b].finish is not None and rows[b].finish != "cancelled":
                text.finish(rows[b])
        if not keep:  # the scheduler starts the next batch with whatever waits (pass 1 included)
            return
        if len(keep) < len(active):
            k = torch.tensor(keep, device=device)
            cache.batch_select_indices(k)
            mask, pos = mask[k], pos[k]
            if select is not None:
                select(k)
            rows, gens = [rows[active[j]] for j in keep], [gens[active[j]] for j in keep]  # finished rows leave
            active = list(range(len(keep)))
            nxt = [nxt[j] for j in keep]
            mask = drop_padding(cache, mask)
        mask = torch.cat([mask, mask.new_ones(len(active), 1)], 1)  # (B, T + 1)
        pos = pos + 1
        ids = torch.tensor(nxt, device=device)[:, None]  # (B, 1)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos[:, None], use_cache=True,
                    **{_cache_kwarg(type(model)): cache})
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        logits = out.logits[:, -1, :].float()  # (B, V)


def _step(r: Row, logits: Tensor, g: torch.Generator, eos_ids: set[int], text: Text, context_len: int | None) -> None:
    """Pick the row's next token and decide whether it ends here."""
    tok = sample(logits, r.sampling, g)
    if tok in eos_ids:
        r.finish = "stop"
        return
    r.out.append(tok)
    if r.sampling.logprobs is not None:
        logp = torch.log_softmax(logits, -1)  # (V,)
        r.logprobs.append((tok, float(logp[tok]), _top(logp, r.sampling.logprobs)))
    if text.step(r):
        r.finish = "stop"
    elif len(r.out) >= r.sampling.max_tokens or (context_len and len(r.ids) + len(r.out) >= context_len):
        r.finish = "length"
