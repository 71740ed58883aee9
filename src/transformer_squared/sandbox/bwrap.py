"""Run untrusted generated code (HumanEval, MBPP tests) in a bubblewrap sandbox, one per program.

Confinement is in place before the program is read: the fixed runner (runner.py) runs /tmp/program.py,
unchanged, inside `bwrap` with new mount, PID, network, IPC, UTS and cgroup namespaces. It sees read-only /usr
and the interpreter's prefix, a private /tmp (its work folder: program.py, read-only, and whatever it
writes) and /dev/shm, its own /proc and a minimal /dev; no home, venv, other users' files, network or
other run, and no file of the machine it could write: stdin, stdout and stderr are pipes (the parent keeps
a bounded tail). As root, bwrap keeps only CAP_SETUID/SETGID/SETPCAP for `setpriv` to become the run's own
uid (one of N_UIDS from UID_BASE, never two concurrent runs alike, so no per-uid limit or lock is shared)
with no capability left; as a user, a new user namespace (no nested ones) maps the user to 65534. Both
run under the seccomp filter of seccomp.py. A run passes only when the runner's token came back and the
status is 0 (runner.py).
bwrap halts at `--block-fd` once set up; we move its PID 1 into a fresh cgroup (memory, task and CPU
limits for the whole run, cgroup.py) and set rlimits on it (CPU, file size, no core, address space), then let
it run. On timeout, or when the program ends, we kill that PID 1, which ends everything in the run.
With `unsafe_exec`, where bubblewrap is missing or cannot work, a plain limited subprocess runs instead.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import resource
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from . import cgroup, runner, seccomp
from .runner import TAIL_CHARS as STDERR_CHARS, SandboxResult  # noqa: F401  (the public result type)
from ..errors import ConfigError, SandboxError

log = logging.getLogger(__name__)

NOBODY = 65534  # uid and gid the program runs as in a user namespace (not root)
UID_BASE, N_UIDS = 0x7D000000, 1 << 20  # as root, each run's uid and gid: UID_BASE + a random slot free in this process
N_PROC = 32  # tasks (processes and threads) per run: the pids cgroup, else RLIMIT_NPROC
N_CPU = 1  # cores per run, all its processes together (cgroup cpu quota, where we have that controller)
FILE_MB = 16  # RLIMIT_FSIZE in MiB: largest file the program may write (its own tmpfs only)
TMP_MB = 64  # size in MiB of each private tmpfs (/tmp, /dev/shm); it also counts in the memory cgroup
WORK_DIR = "/tmp"  # the program's folder inside the sandbox
PROGRAM = "/tmp/program.py"
PATH = "/usr/local/bin:/usr/bin:/bin"
ENV = {"PATH": PATH, "HOME": WORK_DIR, "TMPDIR": WORK_DIR, "LANG": "C.UTF-8"}
SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")  # symlinks into /usr on merged-/usr systems
SETUP_S = 30  # longest wait for bwrap to set a sandbox up
UNSAFE_HINT = "or pass --unsafe-exec to run generated code unconfined"


@dataclass(frozen=True)
class _Bwrap:
    bwrap: str  # the bwrap executable
    setpriv: str | None  # util-linux setpriv, used to drop from root to nobody (None when not root)
    python: str  # the base interpreter (not the venv's): the sandbox needs only the standard library


def _python() -> str:
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _system_dirs() -> list[str]:
    return ["/usr"] + [d for d in SYSTEM_DIRS if os.path.isdir(d) and not os.path.islink(d)]


def _interpreter_paths(python: str) -> list[str]:
    """What the sandbox shows of the interpreter beyond the system folders: its prefixes (stdlib, libpython)."""
    shown, paths = _system_dirs(), []
    for path in sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix), python}):
        if not any(_inside(path, s) for s in shown + paths):
            paths.append(path)
    return paths


def _exposed(python: str) -> str | None:
    """An interpreter path that is `/` or holds the home folder (binding it would show the home), if any."""
    home = os.path.realpath(Path.home())
    return next((p for p in _interpreter_paths(python) if p == "/" or _inside(home, p)), None)


def _filesystem(python: str) -> list[str]:
    """bwrap arguments for what the program sees: system folders and the interpreter, read-only; private tmpfs."""
    args = [x for d in _system_dirs() for x in ("--ro-bind", d, d)]
    args += [x for d in SYSTEM_DIRS if os.path.islink(d) for x in ("--symlink", os.readlink(d), d)]
    args += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    for path in _interpreter_paths(python):
        args += ["--ro-bind", path, path]
        parent = os.path.dirname(path)
        while parent != "/":  # bwrap makes the folders above a bind 0700; nobody must pass through
            args += ["--chmod", "0755", parent]
            parent = os.path.dirname(parent)
    mib = 1024 * 1024
    return args + [
        "--proc", "/proc", "--dev", "/dev",
        "--perms", "1777", "--size", str(TMP_MB * mib), "--tmpfs", WORK_DIR,
        "--perms", "1777", "--size", str(TMP_MB * mib), "--tmpfs", "/dev/shm",
        "--remount-ro", "/dev", "--remount-ro", "/",
    ]


def _argv(tools: _Bwrap, fds: runner.Fds, uid: int, extra: list[str]) -> list[str]:
    """The bwrap command line: the runner, as `uid` (root) or nobody (user namespace), runs the program in `fds`."""
    if tools.setpriv:  # root: no user namespace (it would map the run's uid to root); setpriv drops to `uid`
        isolate = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                   "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
                   "--cap-add", "CAP_SETPCAP"]
        drop = [tools.setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
                "--bounding-set=-all", "--no-new-privs", "--"]
    else:
        isolate = ["--unshare-all", "--unshare-user", "--disable-userns", "--uid", str(NOBODY), "--gid", str(NOBODY),
                   "--cap-drop", "ALL"]
        drop = []
    if fds.filter is not None:
        isolate += ["--seccomp", str(fds.filter)]
    env = [x for k, v in ENV.items() for x in ("--setenv", k, v)]
    return [
        tools.bwrap, *isolate, "--die-with-parent", "--new-session", *_filesystem(tools.python),
        "--perms", "0444", "--ro-bind-data", str(fds.program), PROGRAM, "--chdir", WORK_DIR, "--clearenv", *env,
        *extra, "--", *drop, tools.python, "-I", "-B", "-c", runner.RUNNER, str(fds.result), PROGRAM,
    ]


def _input_fds(program: str, stack: ExitStack) -> runner.Fds:
    """runner.open_inputs with this machine's seccomp filter (a warning where seccomp.py has no table for it)."""
    bpf = seccomp.build()
    if bpf is None:
        _warn_once("sandbox: no seccomp table for this machine: programs can open any kind of socket and use "
                   "io_uring, and as root create user namespaces and use the kernel keyrings")
    return runner.open_inputs(program, bpf, stack)


_uids_lock, _uids_used = threading.Lock(), set[int]()  # run uids in use by this process


@contextmanager
def _run_uid() -> Iterator[int]:
    """A uid (and gid) for one run as root: random in the range, and not in use by another run of this process."""
    with _uids_lock:
        uid = UID_BASE + secrets.randbelow(N_UIDS)
        while uid in _uids_used:
            uid = UID_BASE + secrets.randbelow(N_UIDS)
        _uids_used.add(uid)
    try:
        yield uid
    finally:
        with _uids_lock:
            _uids_used.discard(uid)


@functools.lru_cache(maxsize=8)
def _probe(tools: _Bwrap) -> str | None:
    """Run an empty program in the sandbox once; the first line bwrap complained with, or None if it works."""
    with ExitStack() as stack, _run_uid() as uid:
        fds = _input_fds("pass\n", stack)
        try:
            done = subprocess.run(_argv(tools, fds, uid, []), pass_fds=fds.passed, stdin=fds.stdin,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=SETUP_S)
        except (OSError, subprocess.TimeoutExpired) as e:
            return str(e)
        finally:
            fds.close_child_ends()
        if done.returncode == 0 and os.read(fds.result_r, runner.RESULT_BYTES) == fds.token:
            return None
    lines = done.stderr.decode(errors="replace").strip().splitlines()
    return lines[0] if lines else f"exit status {done.returncode} without the runner's token"


@functools.lru_cache(maxsize=16)
def _warn_once(message: str) -> None:
    log.warning(message)


def _warn_unsafe(reason: str) -> None:
    _warn_once(f"UNSAFE: {reason}; --unsafe-exec runs generated code WITHOUT isolation, as uid {os.geteuid()}: "
               "it can read and write your files and use the network; only time and per-process memory are limited")


def _sandbox(unsafe_exec: bool) -> _Bwrap | None:
    """The bubblewrap setup to use; None (with a warning) when it cannot work and `unsafe_exec` allows that."""
    bwrap = shutil.which("bwrap")
    setpriv = shutil.which("setpriv", path="/usr/bin:/bin") if os.geteuid() == 0 else None
    if bwrap is None:
        problem = ("generated code runs in a bubblewrap sandbox, but 'bwrap' is not on PATH: "
                   "install it (apt-get install bubblewrap)")
    elif os.geteuid() == 0 and setpriv is None:
        problem = "as root the sandbox needs setpriv in /usr/bin to drop to a run uid: apt-get install util-linux"
    elif _exposed(_python()):
        problem = (f"the interpreter's folder {_exposed(_python())} holds your home folder, which the sandbox "
                   "would show to generated code: use a Python installed elsewhere (/usr, pyenv, conda)")
    else:
        tools = _Bwrap(bwrap, setpriv, _python())
        failure = _probe(tools)
        if failure is None:
            return tools
        problem = (f"bubblewrap ({bwrap}) cannot create a sandbox here ({failure}): allow namespaces "
                   "(sysctl kernel.unprivileged_userns_clone=1, or a container started with --privileged)")
    if not unsafe_exec:
        raise SandboxError(f"{problem}, {UNSAFE_HINT}")
    _warn_unsafe(problem)
    return None


def _rlimits(timeout_s: float, memory_mb: int, n_proc: int | None) -> dict[int, tuple[int, int]]:
    mib, cpu_s = 1024 * 1024, math.ceil(timeout_s) + 1
    limits = {resource.RLIMIT_AS: (memory_mb * mib, memory_mb * mib), resource.RLIMIT_CPU: (cpu_s, cpu_s + 1),
              resource.RLIMIT_FSIZE: (FILE_MB * mib, FILE_MB * mib), resource.RLIMIT_CORE: (0, 0)}
    if n_proc is not None:
        limits[resource.RLIMIT_NPROC] = (n_proc, n_proc)
    return limits


def _read_child_pid(fd: int) -> int | None:
    """bwrap's --info-fd report: the PID (in our namespace) of the sandbox's PID 1; None if bwrap failed first."""
    data, deadline = b"", time.monotonic() + SETUP_S
    while time.monotonic() < deadline:
        if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    try:
        return int(json.loads(data)["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None


def _exited(pidfd: int, timeout_s: float) -> bool:
    """Wait until the process behind `pidfd` ends (it stays unreaped); False on timeout."""
    return bool(select.select([pidfd], [], [], max(0.0, timeout_s))[0])


def _kill(pidfd: int) -> None:
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass  # already gone


def _start(tools: _Bwrap, program: str, uid: int, stack: ExitStack) -> tuple[subprocess.Popen, int, int, int, runner.Fds,
                                                                             _Output]:
    """Start bwrap, halted once the sandbox is set up: (bwrap, its PID 1, a pidfd on it, the fd that lets it go,
    its inputs, its output).

    `stack` gets the clean-up: kill PID 1 (and so the run), wait for it, then close the fds, reap bwrap.
    """
    info_r, info_w = os.pipe()
    block_r, block_w = os.pipe()
    stack.callback(os.close, info_r)
    stack.callback(os.close, block_w)  # only after PID 1 is dead: EOF would let it run too
    fds = _input_fds(program, stack)
    output, out_w, err_w = runner.Output.open(fds.result_r, stack)
    try:
        argv = _argv(tools, fds, uid, ["--info-fd", str(info_w), "--block-fd", str(block_r)])
        proc = subprocess.Popen(argv, pass_fds=(*fds.passed, info_w, block_r), stdin=fds.stdin, stdout=out_w,
                                stderr=err_w, start_new_session=True)
    finally:
        fds.close_child_ends()
        for fd in (info_w, block_r, out_w, err_w):
            os.close(fd)
    stack.callback(proc.wait)
    stack.callback(lambda: proc.poll() is None and proc.kill())
    pid1 = _read_child_pid(info_r)
    init = os.pidfd_open(pid1) if pid1 is not None else None
    if init is not None:
        stack.callback(os.close, init)
        stack.callback(_exited, init, 5)  # PID 1 gone means every process of the run is gone
        stack.callback(_kill, init)
    if pid1 is None or init is None or _exited(init, 0):
        runner.watch(output.tails, None, 1)
        raise SandboxError(f"bubblewrap could not start a sandbox: {output.text(output.stderr).strip()[:300]!r}")
    return proc, pid1, init, block_w, fds, output


def _run_bwrap(tools: _Bwrap, program: str, timeout_s: float, memory_mb: int) -> SandboxResult:
    """One program in its own sandbox, cgroup and uid; everything it started is gone when this returns."""
    with ExitStack() as stack:
        group = cgroup.create(memory_mb, N_PROC, N_CPU)
        if group is not None:
            stack.callback(group.remove)
        else:
            tasks = ("per run uid (RLIMIT_NPROC)" if tools.setpriv else
                     "per run (RLIMIT_NPROC in the run's user namespace)")
            _warn_once(f"sandbox: no writable cgroup: memory is limited per process (RLIMIT_AS), tasks {tasks}")
        uid = stack.enter_context(_run_uid())
        proc, pid1, init, go, fds, output = _start(tools, program, uid, stack)
        try:
            if group is not None:
                group.join(pid1)
            n_proc = None if group is not None and group.limits_tasks else N_PROC
            for limit, value in _rlimits(timeout_s, memory_mb, n_proc).items():
                resource.prlimit(pid1, limit, value)
            os.write(go, b"1")  # PID 1 now forks the runner, which inherits the cgroup and the limits
        except OSError as e:
            raise SandboxError(f"sandbox: cannot limit the run ({e})") from None
        done = os.pidfd_open(proc.pid)
        stack.callback(os.close, done)
        timed_out = not runner.watch(output.tails, done, timeout_s)
        _kill(init)  # the program ended or ran out of time: end whatever it left behind
        _exited(init, 5)
        try:
            code = proc.wait(5)  # bwrap returns as soon as its PID 1 is gone
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        runner.watch(output.tails, None, 5)  # every writer is gone: read to the end
        return output.result_of(code, fds.token, timed_out, group is not None and group.oom_killed())


def _run_unsafe(program: str, timeout_s: float, memory_mb: int) -> SandboxResult:
    """--unsafe-exec: the runner and program as our own user in a temporary folder, limited in time and per process."""
    limits = _rlimits(timeout_s, memory_mb, None)
    limiter = f"import resource\nfor k, v in {limits!r}.items():\n    resource.setrlimit(k, v)\n"
    with ExitStack() as stack:
        work = stack.enter_context(tempfile.TemporaryDirectory(prefix="t2-unsafe-", ignore_cleanup_errors=True))
        path = Path(work) / "program.py"
        path.write_text(program, encoding="utf-8", errors="surrogateescape")
        fds = _input_fds("", stack)
        output, out_w, err_w = runner.Output.open(fds.result_r, stack)
        try:
            proc = subprocess.Popen([sys.executable, "-I", "-B", "-c", limiter + runner.RUNNER, str(fds.result),
                                     str(path)], cwd=work, env={**ENV, "HOME": work, "TMPDIR": work},
                                    pass_fds=(fds.result,), stdin=fds.stdin, stdout=out_w, stderr=err_w,
                                    start_new_session=True)
        finally:
            fds.close_child_ends()
            os.close(out_w)
            os.close(err_w)
        done = os.pidfd_open(proc.pid)
        stack.callback(os.close, done)
        timed_out = not runner.watch(output.tails, done, timeout_s)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # strays in its process group (not those that left it)
        except (ProcessLookupError, PermissionError):
            pass
        code = proc.wait()
        runner.watch(output.tails, None, 1)  # strays that left the group may hold the pipes: stop waiting soon
        return output.result_of(code, fds.token, timed_out, False)


def _check(timeout_s: float, memory_mb: int) -> None:
    if timeout_s <= 0 or memory_mb <= 0:
        raise ConfigError(f"sandbox: timeout_s and memory_mb must be positive, got {timeout_s} and {memory_mb}")


def _run(tools: _Bwrap | None, program: str, timeout_s: float, memory_mb: int) -> SandboxResult:
    if tools is None:
        return _run_unsafe(program, timeout_s, memory_mb)
    return _run_bwrap(tools, program, timeout_s, memory_mb)


def run_code(program: str, timeout_s: float = 5, memory_mb: int = 512, unsafe_exec: bool = False) -> SandboxResult:
    """Run `program` confined; it passes when it exits with status 0 within `timeout_s` seconds.

    Raises SandboxError where bubblewrap is missing or cannot create namespaces, unless `unsafe_exec`.
    """
    _check(timeout_s, memory_mb)
    return _run(_sandbox(unsafe_exec), program, timeout_s, memory_mb)


def run_many(programs: list[str], timeout_s: float = 5, memory_mb: int = 512, n_workers: int | None = None,
             unsafe_exec: bool = False) -> list[SandboxResult]:
    """`run_code` for each program, at most `n_workers` sandboxes at once; results in input order."""
    _check(timeout_s, memory_mb)
    if n_workers is not None and n_workers < 1:
        raise ConfigError(f"sandbox: n_workers must be at least 1, got {n_workers}")
    tools = _sandbox(unsafe_exec)  # refuse before anything runs
    n_workers = n_workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        return list(pool.map(lambda p: _run(tools, p, timeout_s, memory_mb), programs))
