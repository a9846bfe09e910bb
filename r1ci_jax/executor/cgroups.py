"""Per-run pids cgroups: a limit on a run's process count that binds even for uid 0.

RLIMIT_NPROC does not apply to a process whose real uid is global root (the kernel
exempts INIT_USER), which is what a snippet is when the server runs as root but cannot
drop to a fresh uid (the interpreter lives under a private /root, e.g. pyenv), even
inside a per-run user namespace that maps 0 to 0. A cgroup with `pids.max` counts
every task of the run wherever it runs as, so the server gives each run (and each
session) its own, under one directory it owns:

    <pids hierarchy>/<own cgroup>/r1ci-exec-<server pid>/<run work dir name>/

The child joins its cgroup as its very first sandbox step (still privileged, before it
can fork). Works with the cgroup v1 `pids` hierarchy or a cgroup v2 tree where `pids`
is enabled for our cgroup's children; elsewhere `open_pids_cgroups` returns None.
"""
from __future__ import annotations

import os
from typing import Optional

_PREFIX = "r1ci-exec-"


def _mount_points() -> list[tuple[str, str]]:
    """(mount point, "v1" | "v2") of every cgroup hierarchy that can hold a pids limit."""
    found = []
    try:
        with open("/proc/self/mounts") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) < 4:
                    continue
                if fields[2] == "cgroup" and "pids" in fields[3].split(","):
                    found.append((fields[1], "v1"))
                elif fields[2] == "cgroup2":
                    found.append((fields[1], "v2"))
    except OSError:
        pass
    return found


def _own_cgroup(version: str) -> Optional[str]:
    """Our cgroup's path inside the hierarchy (from /proc/self/cgroup)."""
    try:
        with open("/proc/self/cgroup") as handle:
            for line in handle:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if version == "v1" and "pids" in controllers.split(","):
                    return path
                if version == "v2" and controllers == "":
                    return path
    except (OSError, ValueError):
        pass
    return None


def _remove_tree(path: str) -> bool:
    """rmdir a cgroup and its child cgroups (their control files go with them)."""
    ok = True
    try:
        entries = list(os.scandir(path))
    except OSError:
        return False
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            ok = _remove_tree(entry.path) and ok
    try:
        os.rmdir(path)
    except OSError:
        return False
    return ok


def _sweep_stale(parent: str) -> None:
    """Remove base cgroups of servers that died without cleaning up (SIGKILLed)."""
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(_PREFIX) and entry.is_dir(follow_symlinks=False):
            pid = entry.name[len(_PREFIX):]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                _remove_tree(entry.path)


class PidsCgroups:
    """The server's base cgroup and one child cgroup per run or session."""

    def __init__(self, base: str) -> None:
        self.base = base
        self._pending: list[str] = []  # released cgroups whose last task was still exiting

    def path(self, name: str) -> str:
        return os.path.join(self.base, name)

    def create(self, name: str, max_pids: int) -> str:
        path = self.path(name)
        os.mkdir(path)
        try:
            with open(os.path.join(path, "pids.max"), "w") as handle:
                handle.write(str(max_pids))
        except OSError:
            os.rmdir(path)
            raise
        return path

    def release(self, name: str) -> None:
        """Remove a run's cgroup (now, or on a later call once its tasks are gone)."""
        self._pending.append(self.path(name))
        self._pending = [path for path in self._pending if not _remove_tree(path) and os.path.isdir(path)]

    def close(self) -> None:
        _remove_tree(self.base)


def join(path: str) -> None:
    """Move the calling process into the cgroup at `path` (its children follow)."""
    with open(os.path.join(path, "cgroup.procs"), "w") as handle:
        handle.write("0")  # "0": the writer itself (its pid may be 1 of a fresh PID namespace)


def open_pids_cgroups() -> Optional[PidsCgroups]:
    """A fresh base cgroup for this server under the first hierarchy that allows one, or
    None (no pids controller, not writable, not delegated)."""
    for mount, version in _mount_points():
        own = _own_cgroup(version)
        if own is None:
            continue
        parent = os.path.join(mount, own.lstrip("/"))
        _sweep_stale(parent)
        base = os.path.join(parent, f"{_PREFIX}{os.getpid()}")
        try:
            os.mkdir(base)
        except OSError:
            continue
        if version == "v2":
            try:
                with open(os.path.join(base, "cgroup.subtree_control"), "w") as handle:
                    handle.write("+pids")
            except OSError:
                _remove_tree(base)
                continue
        cgroups = PidsCgroups(base)
        try:  # the proof: a child cgroup with a writable pids.max
            cgroups.create("probe", 1)
            cgroups.release("probe")
        except OSError:
            cgroups.close()
            continue
        return cgroups
    return None
