"""`rg`: procedural, verifiable tasks from `reasoning-gym` (e.g. gsm_symbolic, basic_arithmetic), offline.

`data` names a reasoning-gym dataset, optionally with a size and generator parameters (the fields
of the dataset's config dataclass, typed by its annotations; `|` separates list items):
"gsm_symbolic", "basic_arithmetic:200", "basic_arithmetic:200:max_terms=2,max_digits=2,operators=+|-".
Several datasets joined by ";" make one mixed task (each question's subject and category is its
dataset, so results break down by dataset and the `oracle` strategy routes by it).
`rg-direct` asks for the answer without reasoning (short generations on a CPU).
Splits never share a question: each question belongs to one split by a hash of its text (train 60 %, valid 20 %, test 20 %), and each split draws from its own seeds
until it has `size` distinct questions. Answers go between <answer> tags and are scored with
the dataset's own `score_answer` (correct only at full score).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import hashlib
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, DataError
from .base import TASKS, Example, chat_format
from .kinds import GENERATIVE, TaskKind, right_or_wrong

SPLIT_BUCKETS = {"train": range(0, 6), "valid": range(6, 8), "test": range(8, 10)}  # of hash % 10
SPLIT_SEEDS = {"train": 0, "valid": 1, "test": 2}
INSTRUCTION = "Think step by step, then give only the final answer between <answer> and </answer>."
DIRECT_INSTRUCTION = "Give only the final answer between <answer> and </answer>, with no explanation."
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_MAX_ROUNDS = 50  # draws of `size` questions before giving up on a split


def bucket(question: str) -> int:
    """A stable number in 0-9 from the question text."""
    return hashlib.sha256(question.encode("utf-8")).digest()[0] % 10


def extract_answer(completion: str) -> str:
    """The text of the last <answer>...</answer>, else the last non-empty line."""
    found = _ANSWER.findall(completion)
    if found:
        return found[-1].strip()
    lines = [line.strip() for line in completion.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def parse_data(data: str) -> tuple[str, int | None, dict[str, Any]]:
    """"name[:size][:key=value,...]" → (dataset name, size or None, generator parameters as typed values)."""
    dataset, *fields = str(data).split(":")
    size, params = None, {}
    for text in fields:
        if "=" in text:
            if params:
                raise ConfigError(f"rg: '{data}': give the parameters as one comma-separated list")
            params = _parse_params(data, dataset, text)
        elif text.isdigit() and int(text) > 0 and size is None:
            size = int(text)
        else:
            raise ConfigError(f"rg: '{data}': '{text}' is neither a positive integer size nor key=value parameters")
    return dataset, size, params


def _parse_params(data: str, dataset: str, text: str) -> dict[str, Any]:
    rg = _import_rg()
    if dataset not in rg.factory.DATASETS:
        raise ConfigError(f"rg: Dataset '{dataset}' not registered")
    config = rg.factory.DATASETS[dataset][1]
    hints = typing.get_type_hints(config)  # field → annotated type
    fields = [f.name for f in dataclasses.fields(config) if f.name not in ("seed", "size")]
    params: dict[str, Any] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"rg: '{data}': '{item}' is not key=value with a parameter of {dataset}{hint}; "
                              f"known: {', '.join(fields)}")
        params[key] = _typed(data, key, value.strip(), hints[key])
    return params


def _typed(data: str, key: str, value: str, hint: Any) -> Any:
    """`value` converted to the parameter's annotated type: bool, int, float, a Literal, a list of those, str."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # Optional[X]: X
        return _typed(data, key, value, next(a for a in args if a is not type(None)))
    if origin in (list, tuple, collections.abc.Sequence):
        return [_typed(data, key, v, args[0] if args else str) for v in value.split("|")]
    if origin is typing.Literal and value not in args:
        raise ConfigError(f"rg: '{data}': {key}={value}: choose one of {', '.join(map(str, args))}")
    try:
        if hint is bool:
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
        if hint in (int, float):
            return hint(value)
    except ValueError:
        raise ConfigError(f"rg: '{data}': {key}={value} is not a {hint.__name__}") from None
    return value


def _import_rg() -> Any:
    try:
        import reasoning_gym
    except ImportError:
        raise ConfigError("task 'rg' needs 'pip install reasoning-gym==0.1.25'") from None
    return reasoning_gym


@dataclass
class ReasoningGym:
    """reasoning-gym datasets as train/valid/test splits with disjoint questions."""

    name: str = "rg"
    version: str = "1"
    kind: TaskKind = GENERATIVE
    categories: tuple[str, ...] = ()
    instruction: str = INSTRUCTION  # appended to every question
    size: int = 500  # questions per split when `data` gives none
    seed: int = 0  # base seed; splits and rounds derive their own

    def load(self, data: str | None, split: str) -> list[Example]:
        if not data:
            raise ConfigError(f"task '{self.name}' needs data: a reasoning-gym dataset, e.g. gsm_symbolic, "
                              "basic_arithmetic:200")
        if split not in SPLIT_BUCKETS:
            raise ConfigError(f"{self.name}: unknown split '{split}' (known: {', '.join(SPLIT_BUCKETS)})")
        specs = [parse_data(part.strip()) for part in str(data).split(";")]
        names = [dataset for dataset, _, _ in specs]
        if len(set(names)) < len(names):
            raise ConfigError(f"{self.name}: '{data}' names a dataset twice; give each dataset once")
        return [e for dataset, size, params in specs for e in self._load_one(dataset, size or self.size, params, split)]

    def _load_one(self, dataset: str, size: int, params: dict[str, Any], split: str) -> list[Example]:
        """`size` distinct questions of one generator whose text hashes into `split`."""
        rg = _import_rg()
        examples: dict[str, Example] = {}
        for round_ in range(_MAX_ROUNDS):
            seed = (self.seed * 1_000 + round_) * 10 + SPLIT_SEEDS[split]
            try:
                entries = rg.create_dataset(dataset, size=size, seed=seed, **params)
            except (ValueError, AssertionError) as e:  # unknown dataset; the config's validate() asserts
                raise ConfigError(f"{self.name}: '{dataset}': {e}") from None
            for entry in entries:
                question = entry["question"]
                if question in examples or bucket(question) not in SPLIT_BUCKETS[split]:
                    continue
                examples[question] = Example(
                    id=f"{dataset}-{split}-{len(examples):05d}", question=question, answer=str(entry["answer"]),
                    subject=dataset, category=dataset, meta={"entry": entry},
                )
                if len(examples) == size:
                    return list(examples.values())
        raise DataError(f"{self.name}: '{dataset}' gave only {len(examples)} distinct {split} questions of {size} asked")

    def format(self, examples: list[Example], tokenizer: Any = None, chat: bool = False) -> list[str]:
        return chat_format([f"{e.question}\n\n{self.instruction}" for e in examples], tokenizer, chat)

    def parse(self, examples: list[Example], completions: list[str]) -> list[str]:
        return [extract_answer(c) for _, c in zip(examples, completions, strict=True)]

    def score(self, examples: list[Example], predictions: list[str]) -> list[bool]:
        rg = _import_rg()
        scorers: dict[str, Any] = {}
        out = []
        for e, p in zip(examples, predictions, strict=True):
            if e.subject not in scorers:
                scorers[e.subject] = rg.get_score_answer_fn(e.subject)
            out.append(p != "" and scorers[e.subject](p, e.meta["entry"]) >= 1.0)
        return out

    def reward(self, examples: list[Example], predictions: list[str]) -> list[float]:
        return right_or_wrong(self.score(examples, predictions))


TASKS.register("rg", ReasoningGym())
# The same questions asking for the answer alone: short generations, for CPU training and evaluation.
TASKS.register("rg-direct", ReasoningGym(name="rg-direct", instruction=DIRECT_INSTRUCTION))
