"""Rollouts and the per-item terms of the REINFORCE objective (paper §3.1, eq. 1), one training objective per
name in `OBJECTIVES` (a task's kind names the ones it offers, tasks/kinds.py).

For item i with reward R (a float from Task.reward: +1 correct, −1 wrong by default, graded if the task
says so) the trainer maximises
  J_i = A · Σ_t log π'(a_t)                         (sampled letters or generated answers)
where A = R (the paper), or with the group baseline A = R − mean of R over the samples of the same prompt
(a prompt whose samples all got the same reward then adds nothing, instead of pushing its answer down),
  J_i = Σ_letters π'(letter) · R(letter)            (MCQ "exact": the expected reward, no sampling)
and penalises KL_i = Σ_t Σ_v π'(v) (log π'(v) − log π_base(v)) over the answer tokens
(for MCQ: over the option letters). π' runs the adapted weights W', π_base the base weights.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..models import engine
from ..registry import Registry


@dataclass
class Item:
    """One training item: a formatted prompt and what is scored after it."""

    prompt: str  # formatted prompt text
    letters: tuple[str, ...] = ()  # MCQ: valid option letters
    letter_rewards: tuple[float, ...] = ()  # MCQ: the reward of answering each letter
    answer_ids: list[int] = field(default_factory=list)  # generate: token ids of the rolled-out answer
    reward: float = 0.0  # generate: reward of that answer
    advantage: float | None = None  # generate with the group baseline: reward − mean reward of the prompt's samples
    exited: bool = False  # code tasks: the answer's program ended before its checks (reward hacking, issue 19)


class LetterIds:
    """Caches engine.letter_token_ids per letter tuple."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[tuple[str, ...], list[list[int]]] = {}

    def __call__(self, letters: tuple[str, ...]) -> list[list[int]]:
        if letters not in self._cache:
            self._cache[letters] = engine.letter_token_ids(self.tokenizer, letters)
        return self._cache[letters]


def by_length(tokenizer: Any, items: list[Item]) -> list[Item]:
    """The items longest first (prompt + answer tokens; ties keep their order), so a micro-batch pads little."""
    lengths = [len(x) + len(it.answer_ids) for x, it in zip(engine.tokenize(tokenizer, [it.prompt for it in items]), items)]
    return [items[i] for i in sorted(range(len(items)), key=lambda i: -lengths[i])]


def letter_logprobs(model: Any, tokenizer: Any, items: list[Item], ids: LetterIds) -> list[Tensor]:
    """log π(letter | prompt) over each item's valid letters; one forward pass, grad flows."""
    logits = engine.last_logits(model, tokenizer, [it.prompt for it in items])  # (B, V)
    return [torch.log_softmax(engine.letter_logits(logits[row], ids(it.letters)), 0)  # (n_letters,)
            for row, it in enumerate(items)]


def answer_logprobs(model: Any, tokenizer: Any, items: list[Item]) -> tuple[Tensor, Tensor, Tensor]:
    """(log π of each answer token (B, L), full log π at those positions (B, L, V), mask (B, L)).

    Prompt + answer are left-padded, so every answer ends at the last position and the logits
    of the last L+1 positions cover all of them (L = longest answer).
    """
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompts = engine.tokenize(tokenizer, [it.prompt for it in items])
    L = max(len(it.answer_ids) for it in items)
    batch = engine.pad_left([p + it.answer_ids for p, it in zip(prompts, items)], pad, device)
    logits = model(**batch, logits_to_keep=engine.keep_last(batch, L + 1), use_cache=False).logits.float()  # (B, L+1, V)
    logp = torch.log_softmax(logits[:, :L], -1)  # (B, L, V): position j predicts answer slot j
    targets = torch.full((len(items), L), pad, dtype=torch.long, device=device)  # (B, L)
    mask = torch.zeros((len(items), L), dtype=torch.bool, device=device)  # (B, L)
    for row, it in enumerate(items):
        n = len(it.answer_ids)
        targets[row, L - n :] = torch.tensor(it.answer_ids, dtype=torch.long)
        mask[row, L - n :] = True
    token_logp = logp.gather(-1, targets[..., None]).squeeze(-1) * mask  # (B, L)
    return token_logp, logp, mask


@torch.no_grad()
def letter_base(model: Any, tokenizer: Any, items: list[Item], ids: LetterIds) -> list[Tensor]:
    """What the letters' KL term needs from the base weights: log π_base over each item's letters."""
    return [lp.detach() for lp in letter_logprobs(model, tokenizer, items, ids)]


@torch.no_grad()
def answer_base(model: Any, tokenizer: Any, items: list[Item]) -> Tensor:
    """What the answers' KL term needs from the base weights: full log π_base at the answer positions (B, L, V)."""
    return answer_logprobs(model, tokenizer, items)[1].detach()


def mcq_terms(
    model: Any, tokenizer: Any, items: list[Item], ids: LetterIds, objective: str, base: list[Tensor] | None,
    temperature: float = 1.0, samples: int = 1, generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(J (B,), KL (B,), reward (B,)) for multiple-choice items; J and KL carry the graph."""
    J, KL, reward = [], [], []
    for i, (it, lp) in enumerate(zip(items, letter_logprobs(model, tokenizer, items, ids))):
        R = torch.tensor(it.letter_rewards, dtype=lp.dtype, device=lp.device)  # (n_letters,)
        prob = lp.exp()  # (n_letters,)
        if objective == "exact":
            J.append((prob * R).sum())  # expected reward
            reward.append(J[-1].detach())
        else:
            sample_p = torch.softmax(lp.detach() / temperature, 0)  # (n_letters,)
            k = torch.multinomial(sample_p.cpu(), samples, replacement=True, generator=generator)  # (samples,)
            J.append((R[k] * lp[k]).mean())  # REINFORCE: R · log π(sampled letter)
            reward.append(R[k].mean())
        KL.append((prob * (lp - base[i])).sum() if base is not None else lp.new_zeros(()))
    return torch.stack(J), torch.stack(KL), torch.stack(reward)


def generate_terms(
    model: Any, tokenizer: Any, items: list[Item], base: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(J (B,), KL (B,), reward (B,)) for rolled-out answers; J and KL carry the graph."""
    token_logp, logp, mask = answer_logprobs(model, tokenizer, items)  # (B, L), (B, L, V), (B, L)
    R = torch.tensor([it.reward for it in items], dtype=token_logp.dtype, device=token_logp.device)  # (B,)
    A = torch.tensor([it.reward if it.advantage is None else it.advantage for it in items], dtype=token_logp.dtype,
                     device=token_logp.device)  # (B,)
    J = A * token_logp.sum(-1)  # (B,)
    if base is None:
        KL = torch.zeros_like(J)
    else:
        KL = ((logp.exp() * (logp - base)).sum(-1) * mask).sum(-1)  # (B,)
    return J, KL, R


def generate_rollouts(
    model: Any, tokenizer: Any, task: Any, examples: list[Any], prompts: list[str], samples: int,
    max_new_tokens: int, temperature: float, seed: int, batch_size: int,
) -> list[Item]:
    """Answer each prompt `samples` times (greedy when temperature is 0), reward (the task's kind: Task.reward, or
    the sandbox's verdict for code), tokenize the answers."""
    ex = [e for e in examples for _ in range(samples)]
    pr = [p for p in prompts for _ in range(samples)]
    texts = engine.generate(model, tokenizer, pr, max_new_tokens=max_new_tokens, batch_size=batch_size,
                            do_sample=temperature > 0, temperature=temperature or 1.0, seed=seed)
    rewards, exited = task.kind.rollout_rewards(task, ex, task.parse(ex, texts))  # code: early exits too
    items = []
    for p, text, reward, early in zip(pr, texts, rewards, exited, strict=True):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) < max_new_tokens and tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]  # the answer stopped: learn to stop too
        items.append(Item(p, answer_ids=ids[:max_new_tokens] or [tokenizer.eos_token_id],
                          reward=float(reward), exited=early))
    return items


# ---- the training objectives a task's kind can name --------------------------------------------------------
Terms = tuple[Tensor, Tensor, Tensor]  # (J, KL, reward), (B,) each


class LetterObjective:
    """Multiple choice: one option letter; `exact` maximises the expected reward over the letters, else
    REINFORCE on sampled letters. The letters' rewards come from the kind (Task.reward of each letter)."""

    def __init__(self, exact: bool) -> None:
        self.exact = exact
        self.name = "exact-letters" if exact else "sampled-letters"

    def check(self, cfg: Any) -> list[str]:
        if not self.exact and cfg.temperature <= 0:
            return ["objective 'sample' on a multiple-choice task needs temperature > 0 (e.g. 1.0)"]
        return []

    def items(self, trainer: Any, step: int, examples: list[Any], prompts: list[str]) -> list[Item]:
        rewards = trainer.task.kind.letter_rewards(trainer.task, examples)
        return [Item(p, letters=e.letters, letter_rewards=tuple(r)) for p, e, r in zip(prompts, examples, rewards)]

    def terms(self, trainer: Any, items: list[Item], base: Any, generator: torch.Generator) -> Terms:
        cfg = trainer.cfg
        how = "exact" if self.exact else "sample"
        return mcq_terms(trainer.model, trainer.tokenizer, items, trainer.letter_ids, how, base, cfg.temperature,
                         cfg.samples_per_prompt, generator)

    def base_terms(self, trainer: Any, items: list[Item]) -> list[Tensor]:
        return letter_base(trainer.model, trainer.tokenizer, items, trainer.letter_ids)


def group_advantages(items: list[Item], samples: int) -> list[Item]:
    """Each item's advantage: its reward minus the mean reward of its prompt's `samples` consecutive items."""
    for start in range(0, len(items), samples):
        group = items[start : start + samples]
        mean = sum(it.reward for it in group) / len(group)
        for it in group:
            it.advantage = it.reward - mean
    return items


class RolloutObjective:
    """Free text (generative and code tasks): answers rolled out with the current z, REINFORCE on their tokens."""

    name = "rollouts"

    def check(self, cfg: Any) -> list[str]:
        return []

    def items(self, trainer: Any, step: int, examples: list[Any], prompts: list[str]) -> list[Item]:
        cfg = trainer.cfg
        merged = nullcontext() if trainer.svf.is_merged else trainer.svf.merged({t: z.detach() for t, z in trainer.z().items()})
        with torch.no_grad(), merged:  # a merged training step has written W'(z) already: generate with it
            items = generate_rollouts(trainer.model, trainer.tokenizer, trainer.task, examples, prompts,
                                      cfg.samples_per_prompt, cfg.max_new_tokens, cfg.temperature,
                                      seed=trainer.step_seed(step), batch_size=cfg.eval_batch_size)
        return group_advantages(items, cfg.samples_per_prompt) if cfg.baseline == "group" else items

    def terms(self, trainer: Any, items: list[Item], base: Any, generator: torch.Generator) -> Terms:
        return generate_terms(trainer.model, trainer.tokenizer, items, base)

    def base_terms(self, trainer: Any, items: list[Item]) -> Tensor:
        return answer_base(trainer.model, trainer.tokenizer, items)


OBJECTIVES: Registry[Any] = Registry("training objective")
for _objective in (LetterObjective(exact=True), LetterObjective(exact=False), RolloutObjective()):
    OBJECTIVES.register(_objective.name, _objective)
