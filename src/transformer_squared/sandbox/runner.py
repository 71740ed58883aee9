"""The fixed runner around every sandboxed program, and the parent's reading of its pipes: who says "passed".

The sandbox starts `python -I -B -c RUNNER RESULT_FD PROGRAM`, never the program itself. The runner
reads the run's random token from its stdin (a pipe the parent filled and closed), points stdin at
/dev/null, moves the result pipe to a random close-on-exec descriptor, then compiles and executes the
program as `__main__` inside `try/except BaseException`. Only when the program returns does it write
the token to that descriptor and end at once with status 0 (os._exit: no atexit handler and no
thread gets a turn after the checks). A pass needs both the token and status 0, so a program that
ends before its checks fails: SystemExit (sys.exit, exit(), raise SystemExit) is caught and reported
as EXITED; os._exit, an atexit os._exit or a thread's os._exit end the process without the token.
The token is in no program text, argument or environment variable, so a program cannot write it
in advance (one that reads the runner's memory while it runs could: see docs/safety.md).
"""

from __future__ import annotations

import os
import secrets
import select
import time
from contextlib import ExitStack
from dataclasses import dataclass, field

TOKEN_BYTES = 32  # length of the per-run random token
EXITED = 3  # the runner's status when the program raised SystemExit before its checks returned
TAIL_CHARS = 2000  # how much of the end of stdout and stderr a result keeps
TAIL_BYTES = 4 * TAIL_CHARS  # how much the parent reads into it (UTF-8: at most 4 bytes a character)
RESULT_BYTES = 4096  # the most the parent keeps from the result pipe (the token is TOKEN_BYTES)

RUNNER = """\
import os, sys
def run():
    token = b''
    while True:  # the parent wrote the token and closed the pipe before we started
        chunk = os.read(0, 4096)
        if not chunk:
            break
        token += chunk
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    import fcntl, traceback, types
    given = int(sys.argv[1])
    try:
        result = fcntl.fcntl(given, fcntl.F_DUPFD_CLOEXEC, 64 + int.from_bytes(os.urandom(2), 'little') % 900)
    except OSError:
        result = fcntl.fcntl(given, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(given)
    path = sys.argv[2]
    sys.argv = [path]
    write, exit_, streams = os.write, os._exit, (sys.stdout, sys.stderr)
    main = types.ModuleType('__main__')
    main.__file__ = path
    sys.modules['__main__'] = main
    def flush():
        for stream in streams:
            try:
                stream.flush()
            except BaseException:
                pass
    try:
        with open(path, 'rb') as f:
            code = compile(f.read(), path, 'exec', dont_inherit=True)
        exec(code, main.__dict__)
    except SystemExit as e:
        try:
            print(f'SystemExit({e.code!r}): the program exited before its checks returned', file=sys.stderr)
        except BaseException:
            pass
        flush()
        exit_(EXITED)
    except BaseException as e:
        try:
            traceback.print_exception(type(e), e, e.__traceback__.tb_next)
        except BaseException:
            pass
        flush()
        exit_(1)
    flush()
    write(result, token)
    exit_(0)
run()
""".replace("EXITED", str(EXITED))


@dataclass(frozen=True)
class SandboxResult:
    passed: bool  # the program returned (the runner's token came back) and the status is 0, within the limits
    status: str  # "passed", "failed", "exited" (ended before its checks), "timeout", "memory" or "killed" (a signal)
    stderr_tail: str  # the last TAIL_CHARS characters of stderr
    stdout_tail: str = ""  # the last TAIL_CHARS characters of stdout

    @property
    def exited(self) -> bool:
        """Whether the program ended before its checks returned (sys.exit, os._exit, atexit, ...): reward hacking."""
        return self.status == "exited"


@dataclass
class Tail:
    """The last `limit` bytes read from a pipe, and how many were read in all."""

    limit: int
    data: bytearray = field(default_factory=bytearray)
    n_bytes: int = 0

    def add(self, chunk: bytes) -> None:
        self.n_bytes += len(chunk)
        self.data += chunk
        del self.data[: max(0, len(self.data) - self.limit)]

    def text(self, n_chars: int) -> str:
        return self.data.decode("utf-8", errors="replace")[-n_chars:]


def watch(pipes: dict[int, Tail], pidfd: int | None, timeout_s: float) -> bool:
    """Read `pipes` into their tails until the process behind `pidfd` ends (True) or `timeout_s` passes (False).

    With `pidfd` None: until every pipe is at end of file (True) or the timeout (False).
    """
    deadline, open_fds = time.monotonic() + timeout_s, set(pipes)
    while pidfd is not None or open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        ready = select.select([*open_fds, *([pidfd] if pidfd is not None else [])], [], [], left)[0]
        for fd in ready:
            if fd == pidfd:
                continue
            chunk = os.read(fd, 65536)
            if chunk:
                pipes[fd].add(chunk)
            else:
                open_fds.discard(fd)
        if pidfd is not None and pidfd in ready:
            return True
    return True


def status(code: int, token_seen: bool, timed_out: bool, oom: bool, stderr_tail: str) -> str:
    """One of "passed", "failed", "exited" (ended before its checks), "timeout", "memory", "killed"."""
    if timed_out:
        return "timeout"
    if code == 0 and token_seen:
        return "passed"
    if code in (0, EXITED):
        return "exited"  # status 0 without the token: os._exit, atexit or a thread ended it before the checks
    if oom or "MemoryError" in stderr_tail:
        return "memory"
    return "killed" if code < 0 or code > 128 else "failed"  # bwrap reports death by signal N as 128 + N


def memfd(name: str, data: bytes) -> int:
    """An anonymous file holding `data`, at offset 0 (bwrap reads it)."""
    fd = os.memfd_create(name)  # close-on-exec: only the Popen that passes it gets it
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


@dataclass(frozen=True)
class Fds:
    """What one bwrap gets besides its arguments; the parent keeps `token` and the read ends of the pipes."""

    program: int  # memfd: the program's text, bound read-only at /tmp/program.py
    filter: int | None  # memfd: the seccomp filter (None where seccomp.py has no table for the machine)
    stdin: int  # read end of a pipe holding the token (the write end is already closed)
    result: int  # write end of the pipe the runner writes the token to
    result_r: int  # its read end (the parent's)
    token: bytes  # the run's random token

    @property
    def passed(self) -> tuple[int, ...]:
        """The descriptors bwrap inherits besides stdin."""
        return tuple(fd for fd in (self.program, self.filter, self.result) if fd is not None)

    def close_child_ends(self) -> None:
        """Close what only bwrap needs, once it started (or failed to); exactly once: threads reuse numbers."""
        for fd in (*self.passed, self.stdin):
            os.close(fd)


def open_inputs(program: str, bpf: bytes | None, stack: ExitStack) -> Fds:
    """The program, the seccomp filter `bpf`, a fresh token in a closed pipe and the result pipe; the caller must
    call `close_child_ends` once bwrap started; `stack` closes the parent's read end."""
    token = secrets.token_hex(TOKEN_BYTES // 2).encode()
    result_r, result = os.pipe()
    stack.callback(os.close, result_r)
    stdin, token_w = os.pipe()
    os.write(token_w, token)  # 32 bytes: far below a pipe's capacity
    os.close(token_w)
    program_fd = memfd("program.py", program.encode("utf-8", errors="surrogateescape"))
    return Fds(program_fd, None if bpf is None else memfd("seccomp", bpf), stdin, result, result_r, token)


@dataclass
class Output:
    """The parent's ends of a run's pipes: bounded tails of stdout, stderr and the result (the token)."""

    tails: dict[int, Tail]  # read end → what was read from it
    stdout: int  # read ends
    stderr: int
    result: int

    @classmethod
    def open(cls, result_r: int, stack: ExitStack) -> tuple[Output, int, int]:
        """(the output, the stdout and stderr write ends for the child: close them once it started)."""
        out_r, out_w = os.pipe()
        stack.callback(os.close, out_r)
        err_r, err_w = os.pipe()
        stack.callback(os.close, err_r)
        tails = {out_r: Tail(TAIL_BYTES), err_r: Tail(TAIL_BYTES),
                 result_r: Tail(RESULT_BYTES)}
        return cls(tails, out_r, err_r, result_r), out_w, err_w

    def text(self, fd: int) -> str:
        return self.tails[fd].text(TAIL_CHARS)

    def has(self, token: bytes) -> bool:
        """Whether the result pipe carried exactly the token."""
        return self.tails[self.result].n_bytes == len(token) and bytes(self.tails[self.result].data) == token

    def result_of(self, code: int, token: bytes, timed_out: bool, oom: bool) -> SandboxResult:
        err = self.text(self.stderr)
        verdict = status(code, self.has(token), timed_out, oom, err)
        return SandboxResult(passed=verdict == "passed", status=verdict, stderr_tail=err,
                             stdout_tail=self.text(self.stdout))
