"""Training data: pick a subset of labelled examples and split it, seeded and stratified by subject.

A split is saved as `split.json` in the run folder (ids of the train, validation and holdout
parts), so evaluation can prove it never sees a training question.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..errors import ConfigError, DataError
from ..tasks.base import Example

SUBSET_KEYS = ("category", "subject", "id")
PARTS = ("train", "val", "holdout")
SPLIT_FILE = "split.json"


def parse_subset(spec: str) -> dict[str, set[str]]:
    """'category=STEM' / 'subject=28,29' / 'category=STEM;subject=05' → {field: allowed values}.

    Values are comma-separated (any may match); filters joined by ';' must all match.
    """
    out: dict[str, set[str]] = {}
    for part in (p.strip() for p in spec.split(";")):
        if not part:
            continue
        key, eq, values = part.partition("=")
        key = key.strip().lower()
        if not eq or key not in SUBSET_KEYS or not values.strip():
            raise ConfigError(f"--subset '{part}': expected KEY=VALUE[,VALUE...] with KEY one of {', '.join(SUBSET_KEYS)}")
        out.setdefault(key, set()).update(v.strip().lower() for v in values.split(",") if v.strip())
    return out


def _matches(e: Example, key: str, allowed: set[str]) -> bool:
    if key == "subject":
        names = {e.subject, str(e.meta.get("subject_name", ""))}
        return any(n.lower() in allowed or n.lower().replace(" ", "_") in allowed for n in names if n)
    return str(getattr(e, key)).lower() in allowed


def select(examples: list[Example], subset: str) -> list[Example]:
    """The examples that pass every filter of `subset` ('' keeps all); an empty result is an error."""
    filters = parse_subset(subset)
    kept = [e for e in examples if all(_matches(e, k, v) for k, v in filters.items())]
    if not kept:
        cats = sorted({e.category for e in examples if e.category})
        raise ConfigError(f"--subset '{subset}' selects no example (categories in the data: {', '.join(cats) or 'none'})")
    return kept


def stratified_split(
    examples: list[Example], val_fraction: float, holdout_fraction: float = 0.0, seed: int = 0,
) -> dict[str, list[Example]]:
    """{'train', 'val', 'holdout'}: each subject (else category) is shuffled with `seed` and cut by the fractions.

    Per stratum of n questions, round(n·val_fraction) go to val and round(n·holdout_fraction) to
    holdout; at least one question of every stratum stays in train.
    """
    if not 0 <= val_fraction < 1 or not 0 <= holdout_fraction < 1 or val_fraction + holdout_fraction >= 1:
        raise ConfigError(f"val_fraction {val_fraction} + holdout_fraction {holdout_fraction}: each in [0, 1), sum < 1")
    strata: dict[str, list[Example]] = defaultdict(list)
    for e in examples:
        strata[e.subject or e.category].append(e)
    rng = random.Random(seed)
    parts: dict[str, list[Example]] = {p: [] for p in PARTS}
    for key in sorted(strata):
        group = sorted(strata[key], key=lambda e: e.id)
        rng.shuffle(group)
        n = len(group)
        n_val = min(round(n * val_fraction), n - 1)
        n_hold = min(round(n * holdout_fraction), n - 1 - n_val)
        parts["val"] += group[:n_val]
        parts["holdout"] += group[n_val : n_val + n_hold]
        parts["train"] += group[n_val + n_hold :]
    for p in PARTS:  # mix subjects, so the first N of a part (max_val) samples every subject alike
        rng.shuffle(parts[p])
    return parts


def split_record(parts: dict[str, list[Example]], **info: Any) -> dict[str, Any]:
    """The JSON form of a split: `info` (task, data, subset, seed, ...), counts and ids per part."""
    return info | {"counts": {p: len(parts[p]) for p in PARTS}, "ids": {p: [e.id for e in parts[p]] for p in PARTS}}


def save_split(record: dict[str, Any], run_dir: Path) -> Path:
    path = Path(run_dir) / SPLIT_FILE
    write_json(record, path)
    return path


def load_split(path: str | Path) -> dict[str, Any]:
    """A saved split (a run folder or its split.json); checks the parts are disjoint."""
    path = Path(path)
    if path.is_dir():
        path = path / SPLIT_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no split file (train writes it into the run folder)") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON ({e})") from None
    ids = record.get("ids", {})
    seen: dict[str, str] = {}
    for part in PARTS:
        for i in ids.get(part, []):
            if i in seen:
                raise DataError(f"{path}: id '{i}' is in both '{seen[i]}' and '{part}'")
            seen[i] = part
    return record


def restrict(examples: list[Example], record: dict[str, Any], part: str) -> list[Example]:
    """The examples whose ids are in one part of a saved split, in the split's order."""
    by_id = {e.id: e for e in examples}
    wanted = record["ids"][part]
    missing = [i for i in wanted if i not in by_id]
    if missing:
        raise DataError(f"split part '{part}' names id '{missing[0]}' that the data lacks ({len(missing)} missing)")
    return [by_id[i] for i in wanted]


def exclude_used(examples: list[Example], record: dict[str, Any]) -> list[Example]:
    """The examples a training run never used: drops the ids of its 'train' and 'val' parts."""
    used = set(record["ids"].get("train", [])) | set(record["ids"].get("val", []))
    return [e for e in examples if e.id not in used]
