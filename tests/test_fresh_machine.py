"""`make test` on a fresh machine: the install step installs bubblewrap where it can, and otherwise the sandbox
tests skip with one reason instead of failing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox_skip import NO_BWRAP, bwrap_installed

REPO = Path(__file__).resolve().parents[1]


def test_without_bwrap_the_sandbox_tests_skip_with_one_reason(tmp_path):
    """Before the `needs_bwrap` marker, a machine without bubblewrap ended `make test` with these tests failed."""
    env = {**os.environ, "PATH": str(tmp_path)}  # an empty folder: no bwrap (the interpreter is called by path)
    tests = ["tests/tasks/test_code_tasks.py", "tests/test_sandbox.py"]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", *tests],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    summary = out.strip().splitlines()[-1]
    assert "failed" not in summary and " skipped" in summary, summary
    n_skipped = int(summary.split(" skipped")[0].split()[-1])
    skip_lines = [line for line in out.splitlines() if line.startswith("SKIPPED")]
    where = f"tests/sandbox_skip.py:{bwrap_installed.__code__.co_firstlineno}"
    assert n_skipped >= 20 and skip_lines == [f"SKIPPED [{n_skipped}] {where}: {NO_BWRAP}"]


def _install_step(tmp_path: Path) -> Path:
    """A Makefile holding only the install step's bubblewrap command, copied from the real Makefile."""
    lines = (REPO / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("\t@command -v bwrap"))
    end = start
    while lines[end].endswith("\\"):
        end += 1
    makefile = tmp_path / "Makefile"
    makefile.write_text("bwrap:\n" + "\n".join(lines[start:end + 1]) + "\n")
    return makefile


def _fake_bin(tmp_path: Path, uid: int, apt: bool) -> Path:
    """A PATH folder without bwrap: `id` answers `uid`, and `apt-get` (if any) logs its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {"id": f"#!/bin/sh\necho {uid}\n"}
    if apt:
        scripts["apt-get"] = f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'apt.log'}\n"
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("uid, apt, installs", [(0, True, True), (1000, True, False), (0, False, False)])
def test_the_install_step_installs_bubblewrap_as_root_with_apt_and_never_fails(tmp_path, uid, apt, installs):
    """The old install step only printed a note; as root with apt-get it now installs bubblewrap, as .ci/run does."""
    makefile = _install_step(tmp_path)
    env = {"PATH": str(_fake_bin(tmp_path, uid, apt))}
    run = subprocess.run([shutil.which("make"), "-s", "-f", str(makefile), "bwrap"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    log = tmp_path / "apt.log"
    if installs:
        assert log.read_text().splitlines() == ["update -qq", "install -y -qq bubblewrap"]
        assert run.stdout == ""
    else:
        assert not log.exists() and "note: bubblewrap not installed" in run.stdout
