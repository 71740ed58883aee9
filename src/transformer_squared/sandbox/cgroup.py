"""Per-run cgroups for the sandbox: memory, task and CPU limits on everything a program starts, together.

Each run gets a fresh cgroup: v2 under the nearest of our cgroup and its ancestors that hands the
memory and pids controllers to its children, else under our own in the v1 memory, pids and cpu ones.
The sandbox moves the run's first process in before the program starts and removes the cgroup after.
Where none can be made (not root, a read-only /sys/fs/cgroup) `create` returns None and the sandbox
keeps only per-process rlimits.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "t2-sandbox-"  # name of every cgroup we create: PREFIX<our pid>-<run number>
CONTROLLERS = ("memory", "pids")  # needed from a v2 cgroup; v1 uses those of them that are writable, and cpu
PERIOD_US = 100_000  # CPU quota period
_runs = itertools.count()


@dataclass(frozen=True)
class Cgroup:
    """One run's cgroup: a folder per hierarchy (v2: one; v1: memory and pids)."""

    dirs: tuple[Path, ...]
    version: int  # 1 or 2

    @property
    def limits_tasks(self) -> bool:
        """Whether the pids controller is among ours (else the sandbox falls back to RLIMIT_NPROC)."""
        return any((d / "pids.max").exists() for d in self.dirs)

    def join(self, pid: int) -> None:
        """Move `pid` in; its children are born inside."""
        for d in self.dirs:
            (d / "cgroup.procs").write_text(str(pid))

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process here for exceeding the memory limit."""
        for d in self.dirs:
            name = "memory.events" if self.version == 2 else "memory.oom_control"
            try:
                lines = (d / name).read_text().splitlines()
            except OSError:
                continue
            counts = dict(line.split() for line in lines if len(line.split()) == 2)
            if int(counts.get("oom_kill", 0)) > 0:
                return True
        return False

    def remove(self, timeout_s: float = 5) -> bool:
        """Remove the cgroup once its processes are gone (v2: kill them first); False if still busy."""
        if self.version == 2 and (self.dirs[0] / "cgroup.kill").exists():
            try:
                (self.dirs[0] / "cgroup.kill").write_text("1")
            except OSError:
                pass
        deadline = time.monotonic() + timeout_s
        pending = list(self.dirs)
        while pending:
            d = pending[0]
            try:
                d.rmdir()
                pending.pop(0)
            except FileNotFoundError:
                pending.pop(0)
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    log.warning("sandbox: cannot remove cgroup %s: %s", d, e)
                    return False
                time.sleep(0.01)  # dying processes leave within milliseconds
        return True


def _mounts(mountinfo: str) -> list[tuple[str, str, str, set[str]]]:
    """(fstype, mount root, mount point, super options) of every cgroup mount in /proc/self/mountinfo."""
    out = []
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) >= 5 and len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
            out.append((tail[0], fields[3], fields[4], set(tail[2].split(","))))
    return out


def _own_paths(proc_cgroup: str) -> dict[str, str]:
    """Our cgroup path per v1 controller, and under "" the v2 one, from /proc/self/cgroup."""
    paths = {}
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            paths[c] = path
    return paths


def _under(mount_point: str, mount_root: str, path: str) -> Path | None:
    rel = os.path.relpath(path, mount_root)
    return None if rel.startswith("..") else Path(mount_point) / rel


def choose(mountinfo: str, proc_cgroup: str) -> tuple[int, tuple[Path, ...]]:
    """(version, parent folders) under which run cgroups are made; (0, ()) when there are none.

    v2: the nearest of our cgroup and its ancestors that hands memory and pids to its children (a cgroup
    with processes, like ours, cannot). v1: our own cgroup in the memory and pids hierarchies.
    """
    mounts, own = _mounts(mountinfo), _own_paths(proc_cgroup)
    for fstype, root, point, _ in mounts:
        parent = _under(point, root, own[""]) if fstype == "cgroup2" and "" in own else None
        while parent is not None and _inside(parent, Path(point)):
            if _v2_delegates(parent):
                return 2, (parent,)
            parent = parent.parent if parent != Path(point) else None
    v1 = []
    for controller in (*CONTROLLERS, "cpu"):
        for fstype, root, point, options in mounts:
            if fstype == "cgroup" and controller in options and controller in own:
                parent = _under(point, root, own[controller])
                if parent is not None and os.access(parent, os.W_OK):
                    v1.append(parent)
                    break
    return (1, tuple(v1)) if v1 else (0, ())


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


@functools.lru_cache(maxsize=1)
def _parents() -> tuple[int, tuple[Path, ...]]:
    try:
        return choose(Path("/proc/self/mountinfo").read_text(), Path("/proc/self/cgroup").read_text())
    except (OSError, ValueError):
        return 0, ()


def _v2_delegates(parent: Path) -> bool:
    try:
        enabled = (parent / "cgroup.subtree_control").read_text().split()
    except OSError:
        return False
    return all(c in enabled for c in CONTROLLERS) and os.access(parent, os.W_OK)


def _remove_stale(parents: tuple[Path, ...]) -> None:
    """Remove empty run cgroups left by a process of ours that died mid-run."""
    for parent in parents:
        for d in parent.glob(f"{PREFIX}*"):
            owner = d.name[len(PREFIX):].split("-")[0]
            if owner.isdigit() and not Path(f"/proc/{owner}").exists():
                try:
                    d.rmdir()
                except OSError:
                    pass


@functools.lru_cache(maxsize=1)
def _first_use() -> None:
    _remove_stale(_parents()[1])


def create(memory_mb: int, n_proc: int, n_cpu: float = 1) -> Cgroup | None:
    """A fresh cgroup limited to `memory_mb` MiB (no swap), `n_proc` tasks and `n_cpu` cores (where the cpu
    controller is ours); None where cgroups are not writable."""
    _first_use()
    version, parents = _parents()
    name = f"{PREFIX}{os.getpid()}-{next(_runs)}"
    made: list[Path] = []
    try:
        for parent in parents:
            d = parent / name
            d.mkdir()
            made.append(d)
            _limit(d, version, memory_mb * 1024 * 1024, n_proc, int(n_cpu * PERIOD_US))
    except OSError as e:
        Cgroup(tuple(made), version).remove()
        log.warning("sandbox: cannot set up cgroup %s (%s); limits hold per process only", name, e)
        return None
    return Cgroup(tuple(made), version) if made else None


def _limit(d: Path, version: int, memory_bytes: int, n_proc: int, quota_us: int) -> None:
    files = {"memory.max": memory_bytes, "memory.swap.max": 0, "pids.max": n_proc,
             "cpu.max": f"{quota_us} {PERIOD_US}"} if version == 2 else {
        "memory.limit_in_bytes": memory_bytes, "memory.memsw.limit_in_bytes": memory_bytes, "pids.max": n_proc,
        "cpu.cfs_period_us": PERIOD_US, "cpu.cfs_quota_us": quota_us}
    for name, value in files.items():  # v1: the memory limit must be set before memory+swap
        if (d / name).exists():
            (d / name).write_text(str(value))
