"""Which questions an expert saw while it was made (its run's train and validation parts), so that
evaluation never scores it on them.

A question is identified by a 64-bit key, the BLAKE2b hash of its whitespace-normalised text and
options, not by its id: ids repeat across files (the `mcq` task numbers lines), while the same
question under another id or in another copy of the data is still the same question. An expert
folder keeps the sorted keys as one int64 tensor (8 bytes a question) in `seen.safetensors`
(`expert.Expert.save`); evaluation drops every question whose key any expert in use holds.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

import torch
from torch import Tensor

from ..tasks.base import Example


def question_key(e: Example) -> int:
    """A signed 64-bit key of the question's text and options (whitespace runs count as one space).

    A question derived from another (`route`'s routing prompt over a task question) carries the original
    in `meta["seen_as"]` and counts as it: a classification expert trained on it has seen that question.
    """
    if isinstance(e.meta.get("seen_as"), Example):
        return question_key(e.meta["seen_as"])
    text = "\x1f".join(" ".join(part.split()) for part in (e.question, *e.choices))
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


def keys(examples: Iterable[Example]) -> Tensor:
    """Sorted, unique keys of `examples` (n,) int64."""
    return torch.tensor(sorted({question_key(e) for e in examples}), dtype=torch.int64)


def union(records: Sequence[Tensor]) -> Tensor:
    """The keys in any of `records` (sorted, unique)."""
    if not records:
        return torch.empty(0, dtype=torch.int64)
    return torch.unique(torch.cat([r.to(torch.int64) for r in records]))


def split_seen(examples: list[Example], seen: Tensor) -> tuple[list[Example], list[Example]]:
    """(unseen, seen) parts of `examples`, each in data order."""
    held = set(seen.tolist())
    unseen = [e for e in examples if question_key(e) not in held]
    return unseen, [e for e in examples if question_key(e) in held]
