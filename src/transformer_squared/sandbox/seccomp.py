"""A seccomp filter for sandboxes run as root (bwrap --seccomp): no new user namespaces, no kernel keyrings.

As a user, bwrap's --disable-userns and the run's own user namespace do this job; as root the program
runs as nobody in the machine's user namespace, so it could otherwise create a user namespace and gain
capabilities over it (the usual first step of kernel exploits), or share keys with every other process
of uid nobody through its user keyring. The filter returns EPERM for unshare/clone with CLONE_NEWUSER
and for add_key, request_key and keyctl; ENOSYS for clone3 (its flags sit in memory a filter cannot
read; glibc then falls back to clone) and for any other ABI (i386 or x32 calls on x86_64).
"""

from __future__ import annotations

import platform
import struct

CLONE_NEWUSER = 0x10000000
EPERM, ENOSYS = 1, 38
# machine → AUDIT_ARCH_* and syscall numbers
SYSCALLS = {
    "x86_64": {"arch": 0xC000003E, "unshare": 272, "clone": 56, "clone3": 435, "add_key": 248,
               "request_key": 249, "keyctl": 250},
    "aarch64": {"arch": 0xC00000B7, "unshare": 97, "clone": 220, "clone3": 435, "add_key": 217,
                "request_key": 218, "keyctl": 219},
}

_LD, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|{JEQ,JGE,JSET}|K, BPF_RET|K
_ALLOW, _ERRNO = 0x7FFF0000, 0x00050000  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | errno
_NR, _ARCH, _ARG0 = 0, 4, 16  # offsets in struct seccomp_data (arg0's low 32 bits on little-endian)
_X32 = 0x40000000  # x86_64's x32 syscalls carry this bit


def root_filter() -> bytes | None:
    """The filter as bwrap reads it (struct sock_filter[]), or None on an architecture we have no table for."""
    nr = SYSCALLS.get(platform.machine())
    if nr is None:
        return None
    program = [
        (_LD, 0, 0, _ARCH), (_JEQ, 1, 0, nr["arch"]), (_RET, 0, 0, _ERRNO | ENOSYS),  # another ABI
        (_LD, 0, 0, _NR), (_JGE, 0, 1, _X32), (_RET, 0, 0, _ERRNO | ENOSYS),
    ]
    for name, errno in (("clone3", ENOSYS), ("add_key", EPERM), ("request_key", EPERM), ("keyctl", EPERM)):
        program += [(_JEQ, 0, 1, nr[name]), (_RET, 0, 0, _ERRNO | errno)]
    program += [
        (_JEQ, 1, 0, nr["unshare"]), (_JEQ, 0, 3, nr["clone"]),
        (_LD, 0, 0, _ARG0), (_JSET, 0, 1, CLONE_NEWUSER), (_RET, 0, 0, _ERRNO | EPERM),  # flags
        (_RET, 0, 0, _ALLOW),
    ]
    return b"".join(struct.pack("=HBBI", *insn) for insn in program)
