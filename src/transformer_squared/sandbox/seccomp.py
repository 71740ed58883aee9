"""The sandbox's seccomp filter (bwrap --seccomp): no new user namespaces, keyrings, io_uring, flock or odd sockets.

As root the program runs as a run uid in the machine's user namespace, so it could otherwise create a
user namespace and gain capabilities over it (the usual first step of kernel exploits), or share keys
with other processes through its user keyring. The filter returns EPERM for unshare/clone with
CLONE_NEWUSER and for add_key, request_key and keyctl; ENOSYS for clone3 (its flags sit in memory a
filter cannot read; glibc then falls back to clone), for io_uring_setup/enter/register (io_uring opens
sockets and files past this filter) and for any other ABI (i386 or x32 calls on x86_64). `socket` and
`socketpair` are allowed only for the families in SOCKET_FAMILIES (else EAFNOSUPPORT: no AF_VSOCK
to the hypervisor, no AF_PACKET, ...). `flock` returns ENOLCK: the read-only system files are the
same inodes in every run, so one run's lock would block another's (POSIX fcntl locks stay: a write
lock needs a file open for writing, which no shared file is).
"""

from __future__ import annotations

import platform
import struct

CLONE_NEWUSER = 0x10000000
EPERM, ENOLCK, ENOSYS, EAFNOSUPPORT = 1, 37, 38, 97
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16
SOCKET_FAMILIES = (AF_UNIX, AF_INET, AF_INET6, AF_NETLINK)  # the only address families a program may open
# machine → AUDIT_ARCH_* and syscall numbers
SYSCALLS = {
    "x86_64": {"arch": 0xC000003E, "unshare": 272, "clone": 56, "clone3": 435, "add_key": 248,
               "request_key": 249, "keyctl": 250, "socket": 41, "socketpair": 53, "flock": 73,
               "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427},
    "aarch64": {"arch": 0xC00000B7, "unshare": 97, "clone": 220, "clone3": 435, "add_key": 217,
                "request_key": 218, "keyctl": 219, "socket": 198, "socketpair": 199, "flock": 32,
                "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427},
}
REFUSED = {"clone3": ENOSYS, "add_key": EPERM, "request_key": EPERM, "keyctl": EPERM, "flock": ENOLCK,
           "io_uring_setup": ENOSYS, "io_uring_enter": ENOSYS, "io_uring_register": ENOSYS}  # syscall → errno

_LD, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|{JEQ,JGE,JSET}|K, BPF_RET|K
_ALLOW, _ERRNO = 0x7FFF0000, 0x00050000  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | errno
_NR, _ARCH, _ARG0 = 0, 4, 16  # offsets in struct seccomp_data (arg0's low 32 bits on little-endian)
_X32 = 0x40000000  # x86_64's x32 syscalls carry this bit


def build() -> bytes | None:
    """The filter as bwrap reads it (struct sock_filter[]), or None on an architecture we have no table for."""
    nr = SYSCALLS.get(platform.machine())
    if nr is None:
        return None
    program = [
        (_LD, 0, 0, _ARCH), (_JEQ, 1, 0, nr["arch"]), (_RET, 0, 0, _ERRNO | ENOSYS),  # another ABI
        (_LD, 0, 0, _NR), (_JGE, 0, 1, _X32), (_RET, 0, 0, _ERRNO | ENOSYS),
    ]
    for name, errno in REFUSED.items():
        program += [(_JEQ, 0, 1, nr[name]), (_RET, 0, 0, _ERRNO | errno)]
    n = len(SOCKET_FAMILIES)
    program += [(_JEQ, 1, 0, nr["socket"]), (_JEQ, 0, n + 3, nr["socketpair"]), (_LD, 0, 0, _ARG0)]  # domain
    program += [(_JEQ, n - i, 0, family) for i, family in enumerate(SOCKET_FAMILIES)]
    program += [(_RET, 0, 0, _ERRNO | EAFNOSUPPORT), (_RET, 0, 0, _ALLOW)]
    program += [
        (_JEQ, 1, 0, nr["unshare"]), (_JEQ, 0, 3, nr["clone"]),
        (_LD, 0, 0, _ARG0), (_JSET, 0, 1, CLONE_NEWUSER), (_RET, 0, 0, _ERRNO | EPERM),  # flags
        (_RET, 0, 0, _ALLOW),
    ]
    return b"".join(struct.pack("=HBBI", *insn) for insn in program)
