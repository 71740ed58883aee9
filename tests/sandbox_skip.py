"""Where bubblewrap is missing, tests marked `needs_bwrap` skip (tests/conftest.py) with this one reason."""

from __future__ import annotations

import shutil

NO_BWRAP = "bubblewrap (bwrap) not installed: apt-get install bubblewrap"


def bwrap_installed() -> bool:
    """Whether the sandbox's bubblewrap is on PATH (`make install` installs it where it runs as root with apt-get)."""
    return shutil.which("bwrap") is not None
