"""A seccomp filter that refuses network sockets: the no-network layer where the kernel does
not let us create a network namespace. Kernel-enforced, so `import _socket` cannot bypass it."""
from __future__ import annotations

import ctypes
import errno
import struct

from r1ci_jax.executor import linux

_SECCOMP_MODE_FILTER = 2
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_RET_K = 0x06
_AF_UNIX = 1
_X32_SYSCALL_BIT = 0x40000000

# (audit arch, socket, io_uring_setup): io_uring can open sockets without socket(2).
_ARCHES = {
    "x86_64": (0xC000003E, 41, 425),
    "aarch64": (0xC00000B7, 198, 425),
}


def supported() -> bool:
    return linux.MACHINE in _ARCHES


def _instruction(code: int, jump_true: int, jump_false: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jump_true, jump_false, k)


def _program() -> bytes:
    audit_arch, socket_nr, io_uring_nr = _ARCHES[linux.MACHINE]
    deny = _RET_ERRNO | errno.EACCES
    return b"".join([
        _instruction(_LD_W_ABS, 0, 0, 4),                 # 0: A = arch
        _instruction(_JEQ_K, 1, 0, audit_arch),           # 1: native arch? -> 3
        _instruction(_RET_K, 0, 0, deny),                 # 2: foreign ABI (int 0x80 ...): deny
        _instruction(_LD_W_ABS, 0, 0, 0),                 # 3: A = syscall number
        _instruction(_JGE_K, 5, 0, _X32_SYSCALL_BIT),     # 4: x32 ABI -> 10 (deny)
        _instruction(_JEQ_K, 4, 0, io_uring_nr),          # 5: io_uring_setup -> 10 (deny)
        _instruction(_JEQ_K, 1, 0, socket_nr),            # 6: socket -> 8
        _instruction(_RET_K, 0, 0, _RET_ALLOW),           # 7: anything else: allow
        _instruction(_LD_W_ABS, 0, 0, 16),                # 8: A = domain (args[0], low word)
        _instruction(_JEQ_K, 1, 0, _AF_UNIX),             # 9: AF_UNIX -> 11 (allow)
        _instruction(_RET_K, 0, 0, deny),                 # 10: deny
        _instruction(_RET_K, 0, 0, _RET_ALLOW),           # 11: allow
    ])


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def block_network_sockets() -> None:
    """Make socket(2) fail with EACCES for every family but AF_UNIX. Needs no_new_privs."""
    program = _program()
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    linux.prctl_pointer(linux.PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog))
