"""The sandbox stops or refuses hostile programs, scores them as failed, and leaves the test process unharmed."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from transformer_squared.sandbox import NOBODY, run_code, run_many

ROOT = os.geteuid() == 0


def nobody_processes() -> int:
    """Live (not zombie) processes of uid nobody: the sandbox's, when we are root."""
    n = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if fields.get("Uid", "").split()[:1] == [str(NOBODY)] and not fields.get("State", "").strip().startswith("Z"):
            n += 1
    return n


def test_correct_program_passes_and_wrong_assert_fails():
    assert run_code("assert sorted([3, 1, 2]) == [1, 2, 3]").status == "passed"
    result = run_code("assert 1 + 1 == 3")
    assert not result.passed and result.status == "failed" and "AssertionError" in result.stderr_tail


def test_clean_environment_and_fresh_directory():
    program = (
        "import os, tempfile\n"
        "assert set(os.environ) <= {'PATH', 'TMPDIR', 'LC_CTYPE', 'OMP_NUM_THREADS'}, os.environ\n"
        "assert os.getcwd().startswith(tempfile.gettempdir()) and os.listdir('.') == ['program.py']\n"
        "open('scratch.txt', 'w').write('inside is fine')\n"
    )
    assert run_code(program).passed


def test_sleep_forever_times_out():
    start = time.monotonic()
    result = run_code("import time\nwhile True:\n    time.sleep(1)", timeout_s=1)
    assert result.status == "timeout" and not result.passed
    assert time.monotonic() - start < 3


def test_unbounded_allocation_is_stopped():
    result = run_code("chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))", memory_mb=256)
    assert not result.passed and result.status in ("memory", "killed")


def test_fork_bomb_is_stopped():
    before = nobody_processes()
    # posix.fork bypasses the Python guard, so the OS limits (RLIMIT_NPROC, timeout, namespace) must hold.
    bomb = "import posix\nwhile True:\n    try:\n        posix.fork()\n    except OSError:\n        pass\n"
    result = run_code(bomb, timeout_s=1)
    assert not result.passed and result.status == "timeout"
    assert "disabled in the sandbox" in run_code("import os\nos.fork()").stderr_tail  # the guard refuses
    if ROOT:
        time.sleep(0.2)
        assert nobody_processes() <= before  # every bomb process was killed


def test_write_outside_the_directory_fails(tmp_path):
    target = tmp_path / "escaped.txt"
    assert not run_code(f"open({str(target)!r}, 'w').write('x')").passed  # refused by the guard
    assert not run_code(f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')").passed
    if ROOT:  # past the guard, the OS refuses nobody
        assert "Permission denied" in run_code(f"import _io\n_io.open({str(target)!r}, 'w')").stderr_tail
    assert not target.exists()


def test_socket_is_refused():
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0)
        port = server.getsockname()[1]
        refused = run_code(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)")
        assert not refused.passed and "disabled" in refused.stderr_tail
        if ROOT:  # past the guard, the empty network namespace has no route at all
            raw = run_code(f"import _socket\ns = _socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))")
            assert not raw.passed and "unreachable" in raw.stderr_tail
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing ever connected


def test_run_many_keeps_order():
    results = run_many(["pass", "raise SystemExit(1)", "import sys\nsys.exit(0)", "1/0"], n_workers=2)
    assert [r.passed for r in results] == [True, False, True, False]
    assert "ZeroDivisionError" in results[3].stderr_tail


def test_future_imports_stay_first():
    program = "from __future__ import annotations\ndef f(x: Undefined) -> int:\n    return 1\nassert f(0) == 1"
    assert run_code(program).passed
