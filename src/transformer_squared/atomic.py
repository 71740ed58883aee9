"""Atomic writes (temp file in the same folder, then rename): a killed process never leaves half a file.

`check_file_target` and `check_folder_target` test an output location before any work starts, so a
command that cannot write its result fails at once instead of after hours of computation.
`read_json` is the reading side: a missing or broken file is one typed line naming it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .errors import ConfigError

if TYPE_CHECKING:
    import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path) -> Iterator[str]:
    """Yield a temp path beside `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def recover_folder(final: Path) -> None:
    """Finish a folder swap that a kill interrupted: the old folder comes back if the new one never landed."""
    final = Path(final)
    old = final.with_name(f".{final.name}.old")
    if not final.exists() and old.exists():
        os.replace(old, final)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """Yield a fresh temp folder `.NAME.tmp` beside `final`; on success it replaces `final`.

    The swap is two renames (final → .NAME.old, tmp → final); a kill between them is undone by
    `recover_folder`, which every call runs first, and a leftover temp folder is cleared on the next call.
    """
    final = Path(final)
    recover_folder(final)
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _probe(folder: Path, what: str) -> None:
    """Create and remove a temp file in `folder`: the one test that sees permissions, read-only mounts,
    immutable folders and quotas alike (root passes permission bits but not these)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".t2-probe.", dir=folder)
    except OSError as e:
        raise ConfigError(f"{what}: cannot write in {folder} ({e.strerror or e})") from None
    os.close(fd)
    os.remove(tmp)


def check_file_target(path: str | Path | None, flag: str) -> None:
    """Fail unless `path` can be written as a file: its folder exists and is writable, and it is no folder."""
    if path is None:
        return
    path = Path(path)
    what = f"{flag} {path}"
    if path.is_dir():
        raise ConfigError(f"{what}: is a folder; give a file path")
    parent = path.parent
    if not parent.exists():
        raise ConfigError(f"{what}: folder {parent} does not exist")
    if not parent.is_dir():
        raise ConfigError(f"{what}: {parent} is not a folder")
    _probe(parent, what)


def check_folder_target(path: str | Path, flag: str) -> None:
    """Fail unless `path` can be (or is) a folder we write into; missing parents are created later."""
    path = Path(path)
    what = f"{flag} {path}"
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what}: is a file, not a folder")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{what}: {ancestor} is a file, not a folder")
    _probe(ancestor, what)


def write_json(obj: object, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_text(text: str, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_safetensors(tensors: dict[str, "torch.Tensor"], path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file  # imported here so JSON-only users need not load torch

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)


def read_json(path: str | Path, error: type[Exception], missing: str = "no such file") -> Any:
    """The parsed JSON of `path`; a missing file or invalid JSON raises `error` with one line naming the file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except json.JSONDecodeError as e:
        raise error(f"{path}: invalid JSON ({e})") from None
