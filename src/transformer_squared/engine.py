"""Batched scoring and generation with Hugging Face models.

Requests are sorted by length, padded (left) into batches, and results put back in input order.
"""

from __future__ import annotations

from typing import Any

import torch


def chat_prompts(tokenizer: Any, prompts: list[str]) -> list[str]:
    """Wrap each prompt as one user turn with the tokenizer's chat template."""
    if not getattr(tokenizer, "chat_template", None):
        return prompts
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]


def _encode(tokenizer: Any, texts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
    # A chat-formatted text already carries BOS; plain text gets the tokenizer's default.
    special = not (getattr(tokenizer, "bos_token", None) and all(t.startswith(tokenizer.bos_token) for t in texts))
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=special)
    return {k: v.to(device) for k, v in enc.items()}


@torch.no_grad()
def generate(
    model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int = 128, batch_size: int = 8,
    do_sample: bool = False, temperature: float = 1.0, seed: int | None = None,
) -> list[str]:
    """Completions for already-formatted prompts (greedy unless `do_sample`), in input order."""
    if seed is not None:
        torch.manual_seed(seed)
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = _encode(tokenizer, [prompts[i] for i in idx], device)
        kwargs = dict(do_sample=do_sample, temperature=temperature) if do_sample else dict(do_sample=False)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             top_p=None, top_k=None, **kwargs)
        new = gen[:, enc["input_ids"].shape[1] :]  # (B, new_tokens)
        for i, text in zip(idx, tokenizer.batch_decode(new, skip_special_tokens=True)):
            out[i] = text
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


def last_logits(model: Any, tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """Next-token logits after each text, (B, V), in one forward pass (grad flows if enabled)."""
    device = next(model.parameters()).device
    enc = _encode(tokenizer, texts, device)
    out = model(**enc, logits_to_keep=1, use_cache=False)
    return out.logits[:, -1, :].float()  # (B, V)


def letter_logits(logits: torch.Tensor, ids: list[list[int]]) -> torch.Tensor:
    """Per-letter logit = logsumexp over the letter's token variants; logits (V,) → (n_letters,)."""
    return torch.stack([torch.logsumexp(logits[v], 0) for v in ids])


@torch.no_grad()
def score_letters(
    model: Any, tokenizer: Any, prompts: list[str], letters: list[tuple[str, ...]], batch_size: int = 8,
) -> tuple[list[str], list[torch.Tensor]]:
    """One forward pass per batch gives both MCQ protocols, in input order:
    the greedy next token's text (`generate` protocol: one greedy token) and the
    log-probabilities over each prompt's valid letters (`letter` protocol)."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    greedy: list[str] = [""] * len(prompts)
    logp: list[torch.Tensor] = [torch.empty(0)] * len(prompts)
    id_cache: dict[tuple[str, ...], list[list[int]]] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        logits = last_logits(model, tokenizer, [prompts[i] for i in idx])  # (B, V)
        top = logits.argmax(-1).tolist()
        for row, i in enumerate(idx):
            greedy[i] = tokenizer.decode([top[row]])
            ids = id_cache.setdefault(letters[i], letter_token_ids(tokenizer, letters[i]))
            logp[i] = torch.log_softmax(letter_logits(logits[row], ids), 0).cpu()
    return greedy, logp
