"""Landlock (Linux >= 5.13) through raw syscalls: an unprivileged process restricts its own
file access, TCP connect/bind and signals, for itself and every descendant, irreversibly."""
from __future__ import annotations

import ctypes
import os
import stat
from dataclasses import dataclass
from typing import Iterable

from r1ci_jax.executor import linux

_CREATE_RULESET = 444  # same number on x86_64 and aarch64 (generic syscall table)
_ADD_RULE = 445
_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3

NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1

READ = READ_FILE | READ_DIR | EXECUTE
_WRITE_ABI1 = (WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_CHAR | MAKE_DIR | MAKE_REG | MAKE_SOCK
               | MAKE_FIFO | MAKE_BLOCK | MAKE_SYM)
# Only these rights make sense on a non-directory; the kernel rejects others with EINVAL.
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def abi_version() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is missing or disabled."""
    try:
        return linux.syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    except OSError:
        return 0


def write_rights(abi: int) -> int:
    rights = _WRITE_ABI1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    return rights


@dataclass(frozen=True)
class LandlockOutcome:
    abi: int
    filesystem: bool
    network: bool
    signals: bool


def restrict_self(readable: Iterable[str], writable: Iterable[str], writable_files: Iterable[str],
                  abi: int) -> LandlockOutcome:
    """Allow reading (and executing) only beneath `readable`, writing only beneath `writable`
    and to the device files in `writable_files`; deny TCP connect/bind (ABI >= 4) and signals
    or abstract unix sockets that leave the sandbox (ABI >= 6). Needs no_new_privs set.
    Paths that do not exist or cannot be opened are skipped."""
    if abi < 1:
        raise OSError(95, "Landlock is not available")
    write = write_rights(abi)
    attr = _RulesetAttr(handled_access_fs=READ | write)
    size = ctypes.sizeof(ctypes.c_uint64)
    if abi >= 4:
        attr.handled_access_net = NET_BIND_TCP | NET_CONNECT_TCP
        size = 2 * ctypes.sizeof(ctypes.c_uint64)
    if abi >= 6:
        attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        size = ctypes.sizeof(_RulesetAttr)
    ruleset_fd = linux.syscall(_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    try:
        for path in readable:
            _allow(ruleset_fd, path, READ)
        for path in writable:
            _allow(ruleset_fd, path, READ | write)
        for path in writable_files:
            _allow(ruleset_fd, path, READ_FILE | WRITE_FILE | (TRUNCATE if abi >= 3 else 0))
        linux.syscall(_RESTRICT_SELF, ctypes.c_int(ruleset_fd), ctypes.c_uint32(0))
    finally:
        os.close(ruleset_fd)
    return LandlockOutcome(abi=abi, filesystem=True, network=abi >= 4, signals=abi >= 6)


def _allow(ruleset_fd: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= _FILE_RIGHTS
        rule = _PathBeneathAttr(allowed_access=rights, parent_fd=fd)
        linux.syscall(_ADD_RULE, ctypes.c_int(ruleset_fd), ctypes.c_int(_RULE_PATH_BENEATH),
                      ctypes.byref(rule), ctypes.c_uint32(0))
    finally:
        os.close(fd)
