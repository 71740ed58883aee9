"""A seccomp filter that refuses new user namespaces, for sandboxes run as root (bwrap --seccomp).

As a user, bwrap's --disable-userns does this job; as root the sandbox has no user namespace of its own,
so nobody could otherwise create one and gain capabilities over it (the usual first step of kernel
exploits). The filter returns EPERM for unshare/clone with CLONE_NEWUSER, ENOSYS for clone3 (its flags
sit in memory a filter cannot read; glibc then falls back to clone), and ENOSYS for any other ABI.
"""

from __future__ import annotations

import platform
import struct

CLONE_NEWUSER = 0x10000000
EPERM, ENOSYS = 1, 38
# machine → (AUDIT_ARCH_*, unshare, clone, clone3)
SYSCALLS = {"x86_64": (0xC000003E, 272, 56, 435), "aarch64": (0xC00000B7, 97, 220, 435)}

_LD, _JEQ, _JSET, _RET = 0x20, 0x15, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JSET|K, BPF_RET|K
_ALLOW = 0x7FFF0000  # SECCOMP_RET_ALLOW
_ERRNO = 0x00050000  # SECCOMP_RET_ERRNO | errno
_NR, _ARCH, _ARG0 = 0, 4, 16  # offsets in struct seccomp_data (arg0's low 32 bits on little-endian)
_X32 = 0x40000000  # x86_64's x32 syscalls carry this bit


def no_new_user_namespaces() -> bytes | None:
    """The filter as bwrap reads it (struct sock_filter[]), or None on an architecture we have no table for."""
    if platform.machine() not in SYSCALLS:
        return None
    arch, unshare, clone, clone3 = SYSCALLS[platform.machine()]
    program = [
        (_LD, 0, 0, _ARCH),
        (_JEQ, 1, 0, arch),  # another ABI (i386, x32 on x86_64): refuse it all
        (_RET, 0, 0, _ERRNO | ENOSYS),
        (_LD, 0, 0, _NR),
        (0x35, 0, 1, _X32),  # BPF_JMP|JGE|K: x32 numbers
        (_RET, 0, 0, _ERRNO | ENOSYS),
        (_JEQ, 0, 1, clone3),
        (_RET, 0, 0, _ERRNO | ENOSYS),
        (_JEQ, 1, 0, unshare),
        (_JEQ, 0, 3, clone),
        (_LD, 0, 0, _ARG0),  # flags
        (_JSET, 0, 1, CLONE_NEWUSER),
        (_RET, 0, 0, _ERRNO | EPERM),
        (_RET, 0, 0, _ALLOW),
    ]
    return b"".join(struct.pack("=HBBI", *insn) for insn in program)
