"""Batched decoding for the server: every row has its own sampling settings and stops on its own.

A batch is prefilled once (left-padded, positions counted from each row's first real token), then
decoded one token per step with a KV cache. A row ends at an end-of-sequence token, a stop string,
its token budget, the model's context, or when its client goes away (`cancelled`); finished rows
leave the batch (their cache rows are dropped), and the batch ends when its last row does.
Text reaches the row's `emit` callback as it becomes final: held back while it could still be the
start of a stop string or ends inside a multi-byte character.
"""

from __future__ import annotations

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


@torch.no_grad()
def decode(model: Any, tokenizer: Any, rows: list[Row], eos_ids: set[int], context_len: int | None,
           select: Callable[[Tensor], None] | None = None) -> None:
    """Run rows to their ends (see the module docstring); `select(keep)` follows the rows that stay."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    text = Text(tokenizer)
    gens = [_generator(r.sampling.seed) for r in rows]
    enc = pad_left([r.ids for r in rows], pad, device)
    everything = any(r.sampling.prompt_logprobs for r in rows)
    out = model(**enc, use_cache=True, logits_to_keep=0 if everything else keep_last(enc, 1))
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    T = enc["input_ids"].shape[1]
    for b, r in enumerate(rows):
        if r.sampling.prompt_logprobs:
            r.emit("prompt_logprobs", prompt_logprobs(out.logits[b, T - len(r.ids):], r.ids, r.sampling.logprobs or 1))
    logits = out.logits[:, -1, :].float()  # (B, V)
    mask, pos = enc["attention_mask"], enc["position_ids"][:, -1]  # (B, T), (B,)
    active = list(range(len(rows)))
    while True:
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
        if not keep:
            return
        if len(keep) < len(active):
            k = torch.tensor(keep, device=device)
            cache.batch_select_indices(k)
            mask, pos = mask[k], pos[k]
            if select is not None:
                select(k)
            active = [active[j] for j in keep]
            nxt = [nxt[j] for j in keep]
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
