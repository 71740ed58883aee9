"""The sandbox runs each program isolated and limited, scores hostile ones as failed, and leaves nothing behind.

Hostile programs use Python-level bypasses (`posix`, `_io`, `_socket`, ctypes) on purpose: the isolation
must come from the OS. Canary files live in pytest's tmp folders and are never anything that matters.
Tests (a)-(h) are the holes of issue 11, each of which the old in-process sandbox let through; the
forgeries and resource tricks of issue 19 (exits before the checks, host file handles, sockets, io_uring,
a shared uid) follow them.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import stat
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from transformer_squared.sandbox import bwrap as sandbox
from transformer_squared.sandbox.bwrap import run_code, run_many

ROOT = os.geteuid() == 0
BYPASS = "import sys\nfor m in ('ctypes', '_ctypes'):\n    sys.modules.pop(m, None)\nimport ctypes, posix, _io\n"


def marked(marker: str) -> str:
    """Program prologue: name this process `marker` (children inherit it) and undo what ties it to its parent."""
    return (BYPASS + "libc = ctypes.CDLL(None)\n"
            f"libc.prctl(15, {marker.encode()!r}, 0, 0, 0)  # PR_SET_NAME\n"
            "libc.prctl(1, 0, 0, 0, 0)  # PR_SET_PDEATHSIG = none\n"
            "try:\n    posix.setsid()\nexcept OSError:\n    pass\n")


def processes_named(marker: str) -> list[int]:
    """Live (not zombie) processes whose name is `marker`."""
    pids = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            status = (d / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("Name", "").strip() == marker and not fields.get("State", "").strip().startswith("Z"):
            pids.append(int(d.name))
    return pids


@pytest.fixture
def marker():
    """A unique process name; whatever still carries it at teardown is killed (the old sandbox leaked some)."""
    name = "t2leak" + uuid.uuid4().hex[:8]
    yield name
    for pid in processes_named(name):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def run_cgroups() -> list[Path]:
    """Run cgroups of this process that still exist."""
    try:
        from transformer_squared.sandbox import cgroup
    except ImportError:  # the old sandbox made none
        return []
    return [d for parent in cgroup._parents()[1] for d in parent.glob(f"{cgroup.PREFIX}{os.getpid()}-*")]


def has_cgroups() -> bool:
    try:
        from transformer_squared.sandbox import cgroup
    except ImportError:
        return True
    return bool(cgroup._parents()[1])


def temp_entries() -> set[str]:
    """Host temp folders a sandbox run could leave: the old design's work folders, the unsafe mode's.

    Only these prefixes: other t2 processes on the machine (benchmarks, other test runs) make t2-* folders too.
    """
    tmp = Path(tempfile.gettempdir())
    return {p.name for prefix in ("t2-sandbox-", "t2-unsafe-") for p in tmp.glob(prefix + "*")}


# ---- behaviour ------------------------------------------------------------------------------------

@pytest.mark.needs_bwrap
def test_correct_program_passes_and_wrong_assert_fails():
    assert run_code("assert sorted([3, 1, 2]) == [1, 2, 3]").status == "passed"
    result = run_code("assert 1 + 1 == 3")
    assert not result.passed and result.status == "failed" and "AssertionError" in result.stderr_tail


@pytest.mark.needs_bwrap
def test_runs_as_an_unprivileged_uid_in_a_fresh_folder_with_a_minimal_environment(monkeypatch):
    monkeypatch.setenv("T2_TEST_SECRET", "hunter2")
    uids = range(sandbox.UID_BASE, sandbox.UID_BASE + sandbox.N_UIDS) if ROOT else range(65534, 65535)
    program = (
        "import os, sys, tempfile\n"
        "assert set(os.environ) <= {'PATH', 'HOME', 'TMPDIR', 'LANG', 'PWD', 'LC_CTYPE'}, os.environ\n"
        f"assert os.getuid() == os.geteuid() == os.getgid() in {uids!r} and os.getgroups() == [], os.getuid()\n"
        "caps = [l for l in open('/proc/self/status') if l.startswith(('CapEff', 'CapPrm', 'CapBnd', 'NoNewPrivs'))]\n"
        "assert [l.split()[1] for l in caps] == ['0' * 16] * 3 + ['1'], caps\n"
        f"assert not os.path.exists('/proc/{os.getpid()}'), 'the test process is visible'\n"
        "assert os.getcwd() == tempfile.gettempdir() and os.listdir('.') == ['program.py']\n"
        "open('scratch.txt', 'w').write('inside is fine')\n"
    )
    result = run_code(program)
    assert result.passed, result.stderr_tail


@pytest.mark.needs_bwrap
def test_home_and_venv_are_not_visible():
    venv = Path(os.path.realpath(sys.prefix))
    with tempfile.NamedTemporaryFile(dir=Path.home(), prefix=".t2-canary-") as canary:
        program = (BYPASS + f"home = {str(Path.home())!r}\n"
                   f"seen = posix.listdir(home) if posix.access(home, posix.X_OK) else []\n"
                   f"assert {Path(canary.name).name!r} not in seen, seen\n"
                   f"assert not posix.access({canary.name!r}, posix.F_OK)\n"
                   f"assert not posix.access({str(venv / 'pyvenv.cfg')!r}, posix.F_OK)\n")
        result = run_code(program)
    assert result.passed, result.stderr_tail


@pytest.mark.needs_bwrap
def test_no_new_user_namespaces():
    """A user namespace would hand the program capabilities over it: bwrap --disable-userns, or seccomp as root."""
    program = BYPASS + "assert ctypes.CDLL(None).unshare(0x10000000) == -1  # CLONE_NEWUSER\n"
    result = run_code(program)
    assert result.passed, result.stderr_tail


@pytest.mark.needs_bwrap
def test_no_key_shared_through_the_kernel_keyring():
    """Every sandbox used to be uid nobody of the machine, sharing one user keyring: a channel between runs."""
    numbers = {"x86_64": (248, 249), "aarch64": (217, 218)}.get(os.uname().machine)  # add_key, request_key
    if numbers is None:
        pytest.skip("no syscall numbers for this machine")
    add = BYPASS + (f"libc = ctypes.CDLL(None)\nlibc.syscall.restype = ctypes.c_long\n"
                    f"libc.syscall({numbers[0]}, b'user', b't2-key', b'secret', 6, -4)  # KEY_SPEC_USER_KEYRING\n")
    find = BYPASS + (f"libc = ctypes.CDLL(None)\nlibc.syscall.restype = ctypes.c_long\n"
                     f"assert libc.syscall({numbers[1]}, b'user', b't2-key', None, 0) == -1\n")
    assert run_code(add).status in ("passed", "failed")
    result = run_code(find)
    assert result.passed, result.stderr_tail


@pytest.mark.needs_bwrap
def test_sleep_forever_times_out():
    start = time.monotonic()
    result = run_code("import time\nwhile True:\n    time.sleep(1)", timeout_s=1)
    assert result.status == "timeout" and not result.passed
    assert time.monotonic() - start < 3


@pytest.mark.needs_bwrap
def test_unbounded_allocation_is_stopped():
    result = run_code("chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))", memory_mb=256)
    assert not result.passed and result.status == "memory"


@pytest.mark.needs_bwrap
def test_fork_bomb_is_stopped_and_leaves_nothing(marker):
    bomb = marked(marker) + "while True:\n    try:\n        posix.fork()\n    except OSError:\n        pass\n"
    result = run_code(bomb, timeout_s=1)
    assert not result.passed and result.status == "timeout"
    assert processes_named(marker) == [] and run_cgroups() == []


@pytest.mark.needs_bwrap
def test_no_network_at_all():
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0)
        port = server.getsockname()[1]
        local = run_code(f"import _socket\ns = _socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))")
        assert not local.passed and "refused" in local.stderr_tail  # its own empty loopback
        outside = run_code("import _socket\ns = _socket.socket()\ns.settimeout(1)\ns.connect(('192.0.2.1', 80))")
        assert not outside.passed and "unreachable" in outside.stderr_tail
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing ever connected


@pytest.mark.needs_bwrap
def test_runs_cannot_see_each_other():
    name = "t2-" + uuid.uuid4().hex
    write = f"open('/tmp/{name}', 'w').write('x')\nopen('/dev/shm/{name}', 'w').write('x')\n"
    read = f"import os\nassert not os.path.exists('/tmp/{name}') and not os.path.exists('/dev/shm/{name}')\n"
    assert [r.passed for r in run_many([write, read, write, read], n_workers=2)] == [True] * 4


@pytest.mark.needs_bwrap
def test_run_many_keeps_order():
    results = run_many(["pass", "raise SystemExit(1)", "import sys\nsys.exit(0)", "1/0"], n_workers=2)
    assert [r.status for r in results] == ["passed", "exited", "exited", "failed"]
    assert "ZeroDivisionError" in results[3].stderr_tail


@pytest.mark.needs_bwrap
def test_future_imports_stay_first():
    program = "from __future__ import annotations\ndef f(x: Undefined) -> int:\n    return 1\nassert f(0) == 1"
    assert run_code(program).passed


def test_bad_limits_are_config_errors():
    from transformer_squared.errors import ConfigError

    with pytest.raises(ConfigError, match="must be positive"):
        run_code("pass", timeout_s=0)
    with pytest.raises(ConfigError, match="n_workers"):
        run_many(["pass"], n_workers=0)


# ---- the holes of issue 11 ------------------------------------------------------------------------

@pytest.mark.needs_bwrap
def test_a_future_import_line_runs_confined(tmp_path):
    """(a) `from __future__ import x; code` was hoisted above the confinement and ran as root."""
    canary = tmp_path / "a.txt"
    line = f"from __future__ import annotations; import _io; _io.open({str(canary)!r}, 'w').write('root')"
    assert not run_code(f"x = 1\n{line}\n").passed  # mid-program: a syntax error, never run
    assert not run_code(f"{line}\n").passed  # first line: runs, confined, and cannot reach the canary
    assert not canary.exists()


@pytest.mark.needs_bwrap
def test_b_no_other_process_can_rewrite_a_program(tmp_path, marker):
    """(b) the work folder was nobody's before program.py was read: a leftover nobody process rewrote programs."""
    canary = tmp_path / "b.txt"
    payload = f"import _io\n_io.open({str(canary)!r}, 'w').write('root')\n"
    watcher = marked(marker) + (
        "import glob, time\nend = time.time() + 6\nwhile time.time() < end:\n"
        f"    for path in glob.glob({tempfile.gettempdir() + '/*/program.py'!r}):\n"
        f"        try:\n            posix.unlink(path)\n            _io.open(path, 'w').write({payload!r})\n"
        "        except OSError:\n            pass\n"
    )
    run_code(watcher, timeout_s=1)
    for _ in range(5):
        run_code("import time\ntime.sleep(0.05)")
    assert not canary.exists()


@pytest.mark.needs_bwrap
def test_c_program_cannot_outlive_its_timeout(marker):
    """(c) clearing the parent-death signal and calling setsid kept a program alive after its timeout."""
    program = marked(marker) + "if posix.fork() == 0:\n    posix.setsid()\nimport time\ntime.sleep(30)\n"
    start = time.monotonic()
    result = run_code(program, timeout_s=1)
    assert result.status == "timeout" and time.monotonic() - start < 3
    assert processes_named(marker) == []


@pytest.mark.needs_bwrap
def test_d_root_only_file_is_unreadable(tmp_path):
    """(d) the child kept CAP_DAC_READ_SEARCH and read any file."""
    canary = tmp_path / "d.txt"
    canary.write_text("top secret d")
    canary.chmod(0o600)
    result = run_code(BYPASS + f"print(_io.open({str(canary)!r}).read(), file=sys.stderr)")
    assert not result.passed and "top secret" not in result.stderr_tail


@pytest.mark.needs_bwrap
def test_e_writes_outside_the_work_folder_do_not_persist():
    """(e) files written to /tmp and /dev/shm outside the work folder stayed on the machine."""
    paths = [Path("/tmp") / f"t2-canary-{uuid.uuid4().hex}", Path("/dev/shm") / f"t2-canary-{uuid.uuid4().hex}"]
    program = BYPASS + "".join(f"_io.open({str(p)!r}, 'w').write('x')\n" for p in paths)
    try:
        assert run_code(program).passed  # the sandbox's own /tmp and /dev/shm are writable...
        assert [p.exists() for p in paths] == [False, False]  # ...and vanish with it
    finally:
        for p in paths:
            p.unlink(missing_ok=True)


@pytest.mark.needs_bwrap
@pytest.mark.skipif(not has_cgroups(), reason="per-run memory limits need a writable cgroup")
def test_f_memory_is_limited_per_run_not_per_process():
    """(f) RLIMIT_AS is per process: four children of 150 MiB each fitted under 256 MiB."""
    program = ("import posix, time\npids = []\nfor _ in range(4):\n    pid = posix.fork()\n    if pid == 0:\n"
               "        block = b'x' * (150 * 2**20)\n        time.sleep(1)\n        posix._exit(0)\n"
               "    pids.append(pid)\n"
               "assert all(posix.waitstatus_to_exitcode(posix.waitpid(p, 0)[1]) == 0 for p in pids)\n")
    result = run_code(program, timeout_s=10, memory_mb=256)
    assert not result.passed and result.status == "memory"


@pytest.mark.needs_bwrap
@pytest.mark.skipif(ROOT and not has_cgroups(), reason="as root, per-run task limits need a writable cgroup")
def test_f_tasks_are_limited_per_run_not_per_user():
    """(f) RLIMIT_NPROC counted every sandbox of uid nobody: one program holding 30 made the others fail."""
    hog = ("import posix, time\nfor _ in range(30):\n    try:\n        if posix.fork() == 0:\n"
           "            time.sleep(4)\n            posix._exit(0)\n    except OSError:\n        pass\ntime.sleep(4)\n")
    worker = ("import posix, time\ntime.sleep(1.5)\npid = posix.fork()\nif pid == 0:\n    posix._exit(0)\n"
              "assert posix.waitstatus_to_exitcode(posix.waitpid(pid, 0)[1]) == 0\n")
    results = run_many([hog] + [worker] * 8, timeout_s=10, n_workers=9)
    assert [r.passed for r in results[1:]] == [True] * 8, [r.stderr_tail[-200:] for r in results[1:]]


@pytest.mark.needs_bwrap
def test_g_unix_sockets_of_the_machine_are_unreachable(tmp_path):
    """(g) filesystem Unix sockets (here a world-writable one) stayed reachable."""
    path = tmp_path / "g.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        path.chmod(0o777)
        server.listen()
        server.settimeout(0)
        result = run_code(f"import _socket\ns = _socket.socket(_socket.AF_UNIX)\ns.connect({str(path)!r})")
        assert not result.passed
        with pytest.raises(BlockingIOError):
            server.accept()


@pytest.mark.needs_bwrap
def test_h_python_level_bypasses_change_nothing():
    """(h) the in-process guard fell to `posix.system` and `importlib.reload(os)`; the OS must hold alone."""
    shared = Path(tempfile.mkdtemp(prefix="t2-h-"))
    shared.chmod(0o777)  # even a world-writable folder of the machine is out of reach
    try:
        run_code(f"import posix\nposix.system('touch {shared}/h1')")
        run_code(f"import importlib, os\nos = importlib.reload(os)\nos.close(os.open('{shared}/h2', os.O_CREAT))")
        assert sorted(os.listdir(shared)) == []
    finally:
        shutil.rmtree(shared)


# ---- the forgeries and resource tricks of issue 19 ------------------------------------------------

WRONG = "def inc(x):\n    return x\n"  # a wrong solution; CHECK fails on it
CHECK = "\nassert inc(1) == 2\n"
EXIT_TRICKS = {
    "sys.exit(0)": "import sys; sys.exit(0)\n",
    "exit()": "exit()\n",
    "raise SystemExit": "raise SystemExit\n",
    "os._exit(0)": "import os; os._exit(0)\n",
    "thread os._exit(0)": "import os, threading, time\nthreading.Thread(target=os._exit, args=(0,)).start()\n"
                          "time.sleep(2)\n",
    "atexit os._exit(0)": "import atexit, os; atexit.register(os._exit, 0)\n",  # the assert below still fails
    "SystemExit from the checks": "import sys\ndef inc(x):\n    sys.exit(0)\n",
}


@pytest.mark.needs_bwrap
@pytest.mark.parametrize("trick", list(EXIT_TRICKS))
def test_a_program_that_ends_before_its_checks_fails(trick):
    """Issue 19: status 0 before the asserts used to count as passed; the runner's token now decides."""
    result = run_code(WRONG + EXIT_TRICKS[trick] + CHECK)
    assert not result.passed
    assert result.status == ("failed" if trick.startswith("atexit") else "exited"), result


@pytest.mark.needs_bwrap
def test_writing_guesses_to_every_descriptor_then_exiting_fails():
    """The runner's pipe must carry exactly the token, which is in no program text, argument or environment."""
    program = ("import os\nfor fd in map(int, os.listdir('/proc/self/fd')):\n    try:\n"
               "        os.write(fd, b'0' * 32)\n    except OSError:\n        pass\n"
               "os._exit(0)\n")
    result = run_code(program)
    assert not result.passed and result.status == "exited"


@pytest.mark.needs_bwrap
def test_only_the_token_makes_a_pass_and_the_program_cannot_read_it(monkeypatch):
    """A known token (patched in) written to the runner's pipe forges a pass, so it must stay out of reach:
    it is not in the program's command line, environment, or any descriptor the program can read."""
    from transformer_squared.sandbox import runner

    known = "7" * runner.TOKEN_BYTES
    monkeypatch.setattr(runner.secrets, "token_hex", lambda n: known)
    forge = ("import os\nfor fd in map(int, os.listdir('/proc/self/fd')):\n    if fd > 2:\n        try:\n"
             f"            os.write(fd, {known.encode()!r})\n        except OSError:\n            pass\n"
             "os._exit(0)\n")
    assert run_code(forge).passed  # the positive control: knowing the token is all it takes
    look = ("import os\nseen = open('/proc/self/cmdline', 'rb').read() + open('/proc/self/environ', 'rb').read()\n"
            "for fd in map(int, os.listdir('/proc/self/fd')):\n    try:\n        os.set_blocking(fd, False)\n"
            "        seen += os.read(fd, 4096)\n    except OSError:\n        pass\n"
            f"assert {known.encode()!r} not in seen\n")
    result = run_code(look)
    assert result.passed, result.stderr_tail


@pytest.mark.needs_bwrap
def test_no_host_file_is_writable_or_fallocatable_through_a_descriptor():
    """Issue 19: stderr was an unlinked host file; fallocate(KEEP_SIZE, 1 GiB) on it took host disk past FILE_MB."""
    program = BYPASS + (
        "import errno, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "fds = [int(fd) for fd in os.listdir('/proc/self/fd')]\n"
        "kinds = {}\nfor fd in fds:\n    try:\n        kinds[fd] = os.readlink(f'/proc/self/fd/{fd}')\n"
        "    except OSError:\n        continue  # listdir's own descriptor, closed since\n"
        "    grown = libc.fallocate(fd, 1, ctypes.c_long(0), ctypes.c_long(1 << 30))  # FALLOC_FL_KEEP_SIZE\n"
        "    assert grown == -1, (fd, kinds[fd])\n"
        "assert all(k.startswith('pipe:') or k == '/dev/null' for k in kinds.values()), kinds\n"
    )
    result = run_code(program)
    assert result.passed, result.stderr_tail


@pytest.mark.needs_bwrap
def test_output_is_a_bounded_tail_of_pipes():
    result = run_code("import sys\nfor i in range(200000):\n    print(i)\n    print(-i, file=sys.stderr)\n",
                      timeout_s=10)
    assert result.passed and len(result.stdout_tail) <= sandbox.STDERR_CHARS
    assert result.stdout_tail.endswith("199999\n") and result.stderr_tail.endswith("-199999\n")


SOCKETS = BYPASS + (
    "import _socket, errno\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.syscall.restype = ctypes.c_long\n"
    "def refused(call, *args):\n    try:\n        call(*args)\n    except OSError as e:\n        return e.errno\n"
)


@pytest.mark.needs_bwrap
def test_only_unix_inet_and_netlink_sockets():
    """Issue 19: socket(AF_VSOCK) reached the hypervisor's vsock transport; AF_PACKET and the rest are refused too."""
    program = SOCKETS + (
        "for family, kind in ((1, 1), (2, 1), (10, 2), (16, 3)):  # UNIX, INET, INET6, NETLINK\n"
        "    _socket.socket(family, kind).close()\n"
        "for pair in _socket.socketpair(1, 1):\n    pair.close()\n"
        "for family, kind in ((40, 1), (17, 3), (4, 2), (5, 2), (9, 5), (38, 5), (29, 3), (44, 3)):\n"
        "    assert refused(_socket.socket, family, kind) == errno.EAFNOSUPPORT, family  # VSOCK, PACKET, ...\n"
        "    assert refused(_socket.socketpair, family, kind) == errno.EAFNOSUPPORT, family\n"
    )
    result = run_code(program)
    assert result.passed, result.stderr_tail


@pytest.mark.needs_bwrap
def test_io_uring_is_refused():
    """Issue 19: io_uring_setup was allowed; io_uring opens sockets past the socket() filter."""
    numbers = {"x86_64": (425, 426, 427), "aarch64": (425, 426, 427)}.get(os.uname().machine)
    if numbers is None:
        pytest.skip("no syscall numbers for this machine")
    program = SOCKETS + (
        "params = ctypes.create_string_buffer(120)\n"
        f"for nr in {numbers!r}:\n"
        "    assert libc.syscall(nr, 8, params, 0, 0, 0, 0) == -1 and ctypes.get_errno() == errno.ENOSYS, nr\n"
    )
    result = run_code(program)
    assert result.passed, result.stderr_tail


@pytest.mark.needs_bwrap
@pytest.mark.skipif(not ROOT, reason="one uid per run needs root; a user namespace maps every run to the user")
def test_concurrent_runs_have_their_own_uid():
    """Issue 19: every run was uid nobody, sharing per-uid limits (inotify instances, processes, pipe buffers)."""
    program = "import os, time\nprint(os.getuid())\ntime.sleep(1)\n"
    results = run_many([program] * 6, n_workers=6)
    uids = {int(r.stdout_tail) for r in results}
    assert len(uids) == 6 and all(sandbox.UID_BASE <= u < sandbox.UID_BASE + sandbox.N_UIDS for u in uids)


# ---- many programs, cleanup -----------------------------------------------------------------------

@pytest.mark.needs_bwrap
def test_run_many_200_programs_some_hostile(marker):
    """A bounded pool: every correct program passes, every hostile one fails, nothing is left behind.

    Issue 19: runs that take locks and all their inotify instances pass side by side (as root each run has its
    own uid; one shared uid let one run's flock or inotify instances make another fail)."""
    hostile = {
        "bomb": marked(marker) + "while True:\n    try:\n        posix.fork()\n    except OSError:\n        pass\n",
        "hog": "chunks = []\nwhile True:\n    chunks.append(b'x' * 10**7)\n",
        "sleeper": "import time\ntime.sleep(60)\n",
        "daemon": marked(marker) + "if posix.fork() == 0:\n    import time\n    time.sleep(60)\nraise SystemExit(1)\n",
    }
    neighbours = {  # pass only when no other run holds the same lock or uses the same per-uid allowance
        "locker": ("import errno, fcntl, time\nshared = open('/usr/bin/env', 'rb')  # one inode for every run\n"
                   "try:\n    fcntl.flock(shared, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept OSError as e:\n"
                   "    assert e.errno != errno.EWOULDBLOCK, 'another run holds the lock'\n"
                   "fcntl.lockf(shared, fcntl.LOCK_SH | fcntl.LOCK_NB)\n"
                   "fcntl.lockf(open('/tmp/own.lock', 'wb'), fcntl.LOCK_EX | fcntl.LOCK_NB)\ntime.sleep(1)\n"),
        "inotify": ("import ctypes, time\nlibc = ctypes.CDLL(None)\nlimit = int(open("
                    "'/proc/sys/fs/inotify/max_user_instances').read())\nfds = []\nwhile len(fds) < limit + 1:\n"
                    "    fd = libc.inotify_init()\n    if fd < 0:\n        break\n    fds.append(fd)\n"
                    "assert len(fds) == limit, (len(fds), limit)\ntime.sleep(1)\n"),
    }
    programs, bad = [], set()
    for i in range(200):
        kind = list(hostile)[i // 10 % 4] if i % 10 == 3 else None  # 20 hostile, spread out
        if kind:
            bad.add(i)
        neighbour = {6: "inotify", 7: "inotify", 16: "locker", 17: "locker"}.get(i % 20) if ROOT else None  # in pairs
        programs.append(hostile[kind] if kind else neighbours[neighbour] if neighbour else
                        f"assert sum(range({i})) == {i * (i - 1) // 2}\n")
    before = temp_entries()
    start = time.monotonic()
    results = run_many(programs, timeout_s=3, memory_mb=128, n_workers=4)
    elapsed = time.monotonic() - start
    assert [i for i, r in enumerate(results) if r.passed != (i not in bad)] == []
    assert processes_named(marker) == [] and run_cgroups() == [] and temp_entries() <= before
    assert elapsed < 60


# ---- no bubblewrap --------------------------------------------------------------------------------

def test_missing_bubblewrap_is_refused_with_one_line(tmp_path, monkeypatch):
    from transformer_squared.errors import SandboxError

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxError) as exc:
        run_many(["pass"])
    message = str(exc.value)
    assert "apt-get install bubblewrap" in message and "--unsafe-exec" in message and "\n" not in message


def test_bubblewrap_without_namespaces_is_refused(tmp_path, monkeypatch):
    from transformer_squared.errors import SandboxError

    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(SandboxError, match="cannot create a sandbox here .*No permissions to creating new namespace"):
        run_code("pass")


def test_unsafe_exec_runs_unconfined_with_a_loud_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PATH", str(tmp_path))
    sandbox._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="transformer_squared.sandbox.bwrap"):
        programs = ["pass", "1/0", "import time\ntime.sleep(60)", f"import os\nassert os.getuid() == {os.getuid()}"]
        results = run_many(programs, timeout_s=1, unsafe_exec=True)
    assert [r.status for r in results] == ["passed", "failed", "timeout", "passed"]  # limited, but as our own user
    assert any("UNSAFE" in r.message and "not on PATH" in r.message for r in caplog.records)
