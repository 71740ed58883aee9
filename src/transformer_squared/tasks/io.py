"""Reading task data: local JSONL (plain or .gz) or a Hugging Face dataset id, with checked fields.

Every row travels with `where`, the place an error message names: "FILE:LINE" for a local
file, "HUB_ID[split] row N" for the hub. Loaders never skip a bad row silently.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any, Iterable

from ..errors import ConfigError, DataError
from .base import Example

Record = tuple[str, dict[str, Any]]  # (where, row)

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?(:[\w.-]+)?")
_FILE_SUFFIXES = (".json", ".jsonl", ".gz")


def read_jsonl(path: Path) -> list[Record]:
    """Rows of a JSONL file (blank lines allowed); a bad line raises DataError naming FILE:LINE, and so
    does a file without any row (an empty split would otherwise evaluate or train on nothing)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    records: list[Record] = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{line_no}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
                records.append((where, row))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if not records:
        raise DataError(f"{path}: no rows (the file is empty)")
    return records


def is_hub_id(data: str) -> bool:
    """True when `data` is no local path and looks like "owner/name" or "owner/name:config"."""
    if Path(data).expanduser().exists() or data.startswith((".", "/", "~")) or data.endswith(_FILE_SUFFIXES):
        return False
    return _HUB_ID.fullmatch(data) is not None


def split_path(data: str | Path, split: str) -> Path:
    """A file as given, or the one file in a folder named for `split` ("test.jsonl", "ARC-Easy-Test.jsonl")."""
    path = Path(data).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    split = split.lower()
    found = []
    for f in sorted(path.iterdir()):
        name = f.name.lower()
        stem = name.removesuffix(".gz").removesuffix(".jsonl")
        if f.is_file() and name != stem and (stem == split or stem.endswith(("-" + split, "_" + split))):
            found.append(f)
    if len(found) != 1:
        what = "no file" if not found else f"{len(found)} files ({', '.join(f.name for f in found)})"
        raise DataError(f"{path}: {what} for split '{split}' (expected {split}.jsonl)")
    return found[0]


def load_hub(spec: str, split: str, default_config: str | None = None) -> list[Record]:
    """Rows of a split of a Hugging Face dataset "owner/name[:config]" (needs `datasets` and the network)."""
    name, _, config = spec.partition(":")
    try:
        import datasets
    except ImportError:
        raise DataError(f"{spec}: not a local file or folder; hub datasets need 'pip install datasets'") from None
    try:
        rows = datasets.load_dataset(name, config or default_config, split=split)
    except Exception as e:  # offline, unknown id, unknown split: all end here, as one line
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{spec}: cannot load split '{split}' from the Hugging Face hub ({reason})") from None
    if len(rows) == 0:
        raise DataError(f"{spec}: split '{split}' on the Hugging Face hub has no rows")
    return [(f"{spec}[{split}] row {i}", dict(row)) for i, row in enumerate(rows, 1)]


def load_records(data: str | Path, split: str, default_config: str | None = None) -> list[Record]:
    """Rows from a local JSONL file or folder, or from a hub id."""
    if isinstance(data, str) and is_hub_id(data):
        return load_hub(data, split, default_config)
    return read_jsonl(split_path(data, split))


def need_data(task: str, data: str | Path | None) -> str | Path:
    """`data` itself, or a ConfigError when a task has no default data."""
    if data is None:
        raise ConfigError(f"task '{task}' needs data: a local JSONL file or folder, or a Hugging Face dataset id")
    return data


def get(where: str, row: dict[str, Any], key: str, kind: type | tuple[type, ...] = str) -> Any:
    """The value of a required field, checked for type (bool never counts as int)."""
    if key not in row or row[key] is None:
        raise DataError(f"{where}: missing field '{key}'")
    value = row[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise DataError(f"{where}: field '{key}' must be {names}, got {type(value).__name__}")
    return value


def get_choices(where: str, row: dict[str, Any], key: str = "choices", max_n: int = len(LETTERS)) -> list[str]:
    """A non-empty list of strings, at most `max_n` of them."""
    choices = get(where, row, key, list)
    if not choices:
        raise DataError(f"{where}: empty choice list '{key}'")
    if len(choices) > max_n:
        raise DataError(f"{where}: {len(choices)} choices, at most {max_n} allowed")
    for i, c in enumerate(choices):
        if not isinstance(c, str):
            raise DataError(f"{where}: choice {i} must be a string, got {type(c).__name__}")
    return choices


def to_letter(where: str, answer: Any, n_choices: int) -> str:
    """A gold answer given as a letter ("B") or a 0-based index (1) as a letter among the choices."""
    if isinstance(answer, int) and not isinstance(answer, bool):
        letter = LETTERS[answer] if 0 <= answer < len(LETTERS) else "?"
    elif isinstance(answer, str):
        letter = answer.strip()
    else:
        raise DataError(f"{where}: answer must be a letter or an index, got {type(answer).__name__}")
    if letter not in LETTERS[:n_choices]:
        raise DataError(f"{where}: answer {answer!r} is not among the {n_choices} choices ({LETTERS[:n_choices]})")
    return letter


def unique(items: Iterable[tuple[str, Example]]) -> list[Example]:
    """The examples, after checking that ids do not repeat (the error names both places)."""
    first: dict[str, str] = {}
    out = []
    for where, ex in items:
        if ex.id in first:
            raise DataError(f"{where}: duplicate id '{ex.id}' (first at {first[ex.id]})")
        first[ex.id] = where
        out.append(ex)
    return out
