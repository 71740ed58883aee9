"""Routing as a task (paper §3.2): which expert should answer a request. The classification prompt
shared by the `prompt` and `cls` strategies, and `route`, the task a classification expert trains on:
its questions are each expert's own training and validation questions (from the split.json of the
expert's `t2 train` run folder), labelled with the expert's number.

The prompt lists the experts as numbered choices ("1. label: description") plus "other" (the base
weights), then the request fenced in <request> tags, so the choices never share symbols with a
multiple-choice request's own lettered options; the answer is one digit, read from next-token
log-probabilities. The list may come in any cyclic order (`cyclic_order`): `route` gives each
question its own order, so a classification expert learns the expert, not its place in the list.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import read_json
from ..errors import ConfigError, DataError
from .base import TASKS, Example, chat_format
from .io import LETTERS
from .mcq import MultipleChoice

OTHER = "other: none of the above; answer with the base model"
HEADER = "Choose the expert best suited to answer the request below, by the skill it needs most."
SYMBOLS = "123456789"  # the choices' symbols: digits, never a multiple-choice request's option letters
MAX_EXPERTS = len(SYMBOLS) - 1  # one symbol is "other"
MAX_REQUEST_TOKENS = 256  # requests are cut to this many tokens before classification
SPLIT_PARTS = {"train": ("train", "val"), "test": ("holdout",)}  # route split → parts of each expert's split


def expert_options(labels: list[str], descriptions: list[str]) -> list[str]:
    """The option lines' texts: "label: description" per expert, then "other"."""
    opts = [f"{lab}: {d}" if d else lab for lab, d in zip(labels, descriptions, strict=True)]
    return opts + [OTHER]


def request_text(example: Example) -> str:
    """What the classifier sees of a task question: its text, and the options of a multiple-choice one."""
    if not example.choices:
        return example.question
    return example.question + "\n" + "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(example.choices))


def symbols(n_options: int) -> tuple[str, ...]:
    """The choices' symbols "1", "2", ... for n options (experts and "other")."""
    if n_options > len(SYMBOLS):
        raise ConfigError(f"routing among {n_options - 1} experts: at most {MAX_EXPERTS}")
    return tuple(SYMBOLS[:n_options])


def cyclic_order(n_options: int, shift: int) -> list[int]:
    """Option indices in list order for the cyclic shift `shift`: [shift, shift + 1, ..., shift − 1] mod n."""
    return [(shift + p) % n_options for p in range(n_options)]


def routing_prompt(text: str, options: list[str]) -> str:
    """The classification prompt for one request over numbered options, in the order given."""
    lines = "\n".join(f"{SYMBOLS[i]}. {o}" for i, o in enumerate(options))
    return (f"{HEADER}\n\nExperts:\n{lines}\n\nThe request is between <request> and </request>; letters or numbers "
            f"inside it are its own, not the experts'.\n<request>\n{text}\n</request>\n\n"
            f"Reply with the number of the expert (1 to {len(options)}).\nExpert number:")


def truncate(texts: list[str], tokenizer: Any, max_tokens: int = MAX_REQUEST_TOKENS) -> list[str]:
    """Each text cut to its first `max_tokens` tokens (shorter texts unchanged; no tokenizer: unchanged)."""
    if not callable(tokenizer):
        return list(texts)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [t if len(x) <= max_tokens else tokenizer.decode(x[:max_tokens]) for t, x in zip(texts, ids)]


def routing_prompts(texts: list[str], options: list[str], tokenizer: Any = None, chat: bool = False,
                    max_tokens: int = MAX_REQUEST_TOKENS) -> list[str]:
    """`routing_prompt` for each text (cut to `max_tokens` tokens), wrapped in the chat template with `chat`."""
    return chat_format([routing_prompt(t, options) for t in truncate(texts, tokenizer, max_tokens)], tokenizer, chat)


def expert_folders(data: str | list[str] | None) -> list[Path]:
    """Expert folders from route's `data`: a list, or one string of folders separated by '|'."""
    items = data if isinstance(data, (list, tuple)) else [d for d in str(data or "").split("|") if d]
    if len(items) < 1:
        raise ConfigError("task 'route' needs the experts to route between: t2 train --task route --experts E1 E2 ...")
    return [Path(x) for x in items]


def read_meta(folder: Path) -> dict[str, Any]:
    """An expert's expert.json (read as data: tasks sit below experts in the data flow)."""
    return read_json(folder / "expert.json", DataError, "missing; route needs expert folders written by `t2 train`")


def _sources(folder: Path) -> tuple[str, str | None, list[str], dict[str, list[str]]]:
    """(task, data, split names, ids per part) of the questions an expert was trained on, from the
    split.json of its `t2 train` run folder (beside best/ and latest/)."""
    path = folder.parent / "split.json"
    record = read_json(path, DataError, f"missing: the expert {folder} is not in a `t2 train` run folder, whose "
                                        "split.json names the questions route is built from")
    missing = [k for k in ("task", "splits", "ids") if k not in record]
    if missing:
        raise DataError(f"{path}: missing key(s) {', '.join(missing)}")
    return record["task"], record.get("data"), list(record["splits"]), record["ids"]


def shift_of(question_id: str, n_options: int) -> int:
    """The cyclic shift `route` lists the experts in for one question (a stable hash of its id)."""
    return zlib.crc32(question_id.encode("utf-8")) % n_options


@dataclass
class Route(MultipleChoice):
    """Which expert trained on a question; `data` names the expert folders. The choices are the experts and
    "other" in the question's own cyclic order (`shift_of`), answered by number; parsing and scoring are
    multiple choice's over those numbers."""

    name: str = "route"
    version: str = "2"

    def load(self, data: str | list[str] | None, split: str) -> list[Example]:
        if split not in SPLIT_PARTS:
            raise ConfigError(f"route: unknown split '{split}' (train = the experts' train and validation "
                              f"questions, test = their holdout)")
        folders = expert_folders(data)
        metas = [read_meta(f) for f in folders]
        options = expert_options([m.get("label", "") for m in metas], [m.get("description", "") for m in metas])
        numbers = symbols(len(options))
        owner: dict[str, int] = {}
        out: list[Example] = []
        for k, (folder, meta) in enumerate(zip(folders, metas)):
            task, task_data, names, ids = _sources(folder)
            by_id = {e.id: e for s in names for e in TASKS.get(task).load(task_data, s)}
            for part in SPLIT_PARTS[split]:
                for i in ids.get(part, []):
                    if i not in by_id:
                        raise DataError(f"{folder}: question id '{i}' of its '{part}' part is not in {task} {names}")
                    if i in owner:
                        raise DataError(f"route: question '{i}' is in the training data of experts "
                                        f"'{metas[owner[i]].get('label')}' and '{meta.get('label')}'; routing needs "
                                        f"experts trained on different questions")
                    owner[i] = k
                    order = cyclic_order(len(options), shift_of(i, len(options)))
                    out.append(Example(id=i, question=request_text(by_id[i]), answer=numbers[order.index(k)],
                                       choices=tuple(options[j] for j in order), subject=meta.get("label", ""),
                                       meta={"expert": k, "seen_as": by_id[i], "letters": numbers}))
        return out

    def format(self, examples: list[Example], tokenizer: Any = None, chat: bool = False) -> list[str]:
        texts = truncate([e.question for e in examples], tokenizer)
        return chat_format([routing_prompt(t, list(e.choices)) for t, e in zip(texts, examples)], tokenizer, chat)


TASKS.register("route", Route())
