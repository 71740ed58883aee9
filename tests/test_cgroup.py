"""Which cgroups the sandbox uses (v2 where delegated, else v1), and a real one's limits and removal."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from transformer_squared.sandbox import cgroup


def mountinfo(*mounts: tuple[str, Path, str]) -> str:
    """/proc/self/mountinfo lines for (fstype, mount point, super options)."""
    return "\n".join(f"{30 + i} 23 0:{40 + i} / {point} rw,relatime - {fstype} {fstype} rw,{opts}"
                     for i, (fstype, point, opts) in enumerate(mounts))


def test_v2_uses_the_nearest_ancestor_that_delegates_memory_and_pids(tmp_path):
    unified = tmp_path / "unified"
    (unified / "user.slice" / "session.scope").mkdir(parents=True)
    (unified / "cgroup.subtree_control").write_text("cpu memory pids\n")
    (unified / "user.slice" / "cgroup.subtree_control").write_text("memory\n")  # no pids: not enough
    (unified / "user.slice" / "session.scope" / "cgroup.subtree_control").write_text("")
    info = mountinfo(("cgroup2", unified, ""))
    assert cgroup.choose(info, "0::/user.slice/session.scope\n") == (2, (unified,))
    (unified / "user.slice" / "cgroup.subtree_control").write_text("memory pids\n")
    assert cgroup.choose(info, "0::/user.slice/session.scope\n") == (2, (unified / "user.slice",))


def test_v1_memory_and_pids_under_our_own_cgroups(tmp_path):
    memory, pids, unified = tmp_path / "memory", tmp_path / "pids", tmp_path / "unified"
    (memory / "jobs" / "42").mkdir(parents=True)
    pids.mkdir()
    unified.mkdir()
    (unified / "cgroup.subtree_control").write_text("hugetlb\n")  # hybrid: v2 without memory and pids
    info = mountinfo(("cgroup", memory, "memory"), ("cgroup", pids, "pids"), ("cgroup2", unified, ""))
    own = "8:pids:/\n4:memory:/jobs/42\n0::/\n"
    assert cgroup.choose(info, own) == (1, (memory / "jobs" / "42", pids))
    assert cgroup.choose(mountinfo(("cgroup2", unified, "")), "0::/\n") == (0, ())


@pytest.mark.skipif(not cgroup._parents()[1], reason="no writable cgroup here")
def test_a_run_cgroup_limits_memory_and_tasks_and_is_removed():
    group = cgroup.create(memory_mb=64, n_proc=7, n_cpu=0.5)
    assert group is not None and group.limits_tasks
    try:
        limits = {f.name: f.read_text().strip() for d in group.dirs for f in d.iterdir()
                  if f.name in ("memory.max", "memory.limit_in_bytes", "pids.max", "cpu.max", "cpu.cfs_quota_us")}
        assert limits.get("pids.max") == "7" and str(64 * 2**20) in limits.values()
        assert limits.get("cpu.max", "50000 100000") == "50000 100000"  # absent where cpu is not ours
        assert limits.get("cpu.cfs_quota_us", "50000") == "50000"
        child = subprocess.Popen(["sleep", "30"])
        group.join(child.pid)
        assert all(str(child.pid) in (d / "cgroup.procs").read_text().split() for d in group.dirs)
        child.kill()
        child.wait()
    finally:
        assert group.remove()
    assert not any(d.exists() for d in group.dirs)
    mine = f"{cgroup.PREFIX}{os.getpid()}-"
    assert not any(p.name.startswith(mine) for d in cgroup._parents()[1] for p in d.iterdir())
