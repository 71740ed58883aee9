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
import select
import time
from dataclasses import dataclass, field

TOKEN_BYTES = 32  # length of the per-run random token
EXITED = 3  # the runner's status when the program raised SystemExit before its checks returned
TAIL_BYTES = 8000  # how much of the end of stdout and stderr the parent keeps (UTF-8: 2000 characters at least)
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
