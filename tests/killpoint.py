"""SIGKILL at a chosen file-system event: the k-th start of an atomic write or rename under a root folder.

    python -c "import killpoint; killpoint.main()" K ROOT t2-args...   # dies by SIGKILL at event K

Events are calls of `tempfile.mkstemp`, `tempfile.mkdtemp`, `os.mkdir` and `os.replace` whose path lies
under ROOT, counted in call order; the kill comes before the call runs, so it lands between the steps
of an atomic write (temp file written but not renamed, folder half swapped, ...). `counting(root)`
counts the same events in-process, so a test can pick K from a seeded RNG over a real run's events.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

EVENTS = ((tempfile, "mkstemp"), (tempfile, "mkdtemp"), (os, "mkdir"), (os, "replace"))


def _paths(args: tuple, kwargs: dict) -> list[str]:
    found = [a for a in args if isinstance(a, (str, Path))]
    found += [v for k, v in kwargs.items() if k in ("dir", "src", "dst", "path") and isinstance(v, (str, Path))]
    return [os.path.abspath(p) for p in found]


def _patch(root: str, on_event: Callable[[str, list[str]], None]) -> list[tuple]:
    root = os.path.abspath(root)
    saved = []
    for mod, name in EVENTS:
        orig = getattr(mod, name)

        def wrapper(*args, _orig=orig, _name=name, **kwargs):
            paths = _paths(args, kwargs)
            if any(p == root or p.startswith(root + os.sep) for p in paths):
                on_event(_name, paths)
            return _orig(*args, **kwargs)

        saved.append((mod, name, orig))
        setattr(mod, name, wrapper)
    return saved


@contextmanager
def counting(root: str | Path) -> Iterator[list[str]]:
    """Record the events under `root` (as 'name path') while the block runs in this process."""
    seen: list[str] = []
    saved = _patch(str(root), lambda name, paths: seen.append(f"{name} {paths[-1]}"))
    try:
        yield seen
    finally:
        for mod, name, orig in saved:
            setattr(mod, name, orig)


def main() -> None:
    k, root, *args = sys.argv[1:]
    count = 0

    def on_event(name: str, paths: list[str]) -> None:
        nonlocal count
        count += 1
        if count == int(k):
            os.kill(os.getpid(), signal.SIGKILL)

    _patch(root, on_event)
    from transformer_squared.cli import main as t2

    t2(args)
