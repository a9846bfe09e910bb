"""Child-side isolation layers, and the fork that puts a child in its own PID namespace.

Each run is one fork of the warm server. With a PID namespace the server calls
unshare(CLONE_NEWPID) right before the fork (the child becomes PID 1 of a fresh namespace)
and setns() back right after; that needs CAP_SYS_ADMIN, which root has and a normal user
gets by running the server inside its own user namespace (`enter_server_namespace`).
The child then applies every other layer to itself (`enter_sandbox`) and runs the code.

Which layers a kernel allows is discovered once per server by `server.discover_plan`: it
probes the strongest `Plan` and weakens it step by step (`weaken`) until setup succeeds.
Afterwards every run applies exactly that plan and fails closed if any step fails.
"""
from __future__ import annotations

import dataclasses
import os
import resource
import signal
import stat
import sys
from dataclasses import dataclass
from typing import Any, Optional

from r1ci_jax.executor import cgroups, landlock, linux, seccomp


class SetupError(RuntimeError):
    """A sandbox step failed; `step` names it so discovery can drop that layer."""

    def __init__(self, step: str, error: BaseException) -> None:
        super().__init__(f"{step}: {error}")
        self.step = step


@dataclass(frozen=True)
class Limits:
    memory_mb: int
    max_output_bytes: int
    max_processes: int
    max_open_files: int
    max_file_mb: int
    workdir_mb: int


@dataclass(frozen=True)
class Plan:
    """Layers to apply beyond the ones every kernel allows (rlimits, own session, private
    work dir, scrubbed environment, closed stdin, no_new_privs)."""

    is_root: bool
    server_userns: bool  # the server runs in its own user namespace (non-root: CAP_SYS_ADMIN there)
    user_namespace: bool  # a fresh one per run: RLIMIT_NPROC counts per run, capabilities stay inside
    network_namespace: bool
    pid_namespace: bool
    mount_namespace: bool  # with it come fresh IPC and UTS namespaces
    tmpfs_workdir: bool
    private_proc: bool
    private_shm: bool
    drop_uid: bool  # root only: run as a fresh unprivileged uid
    drop_capabilities: bool
    landlock_abi: int  # 0: not used
    socket_filter: bool  # seccomp; only needed without a network namespace
    readable_paths: tuple[str, ...] = ()
    pids_cgroup: bool = False  # each run in its own cgroup with pids.max (see cgroups.py)

    @property
    def process_limit(self) -> str:
        """How the process cap counts: per run by a pids cgroup ("cgroup") or RLIMIT_NPROC
        ("namespace", "uid"), against the user's current process count ("counted"), or not
        at all ("none": RLIMIT_NPROC exempts global uid 0, even mapped into a user namespace)."""
        if self.pids_cgroup:
            return "cgroup"
        if self.drop_uid:
            return "uid"
        if self.is_root:
            return "none"
        return "namespace" if self.user_namespace else "counted"


_SYSTEM_READABLE = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/opt", "/proc", "/sys", "/dev")
# /etc as a whole holds secrets readable by uid 0 (shadow, ssh host keys): allow what libraries use.
_ETC_READABLE = ("/etc/localtime", "/etc/timezone", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d",
                 "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/hosts", "/etc/host.conf",
                 "/etc/resolv.conf", "/etc/gai.conf", "/etc/mime.types", "/etc/fonts", "/etc/ssl",
                 "/etc/ca-certificates", "/etc/pki", "/etc/alternatives", "/etc/os-release", "/etc/locale.alias",
                 "/etc/matplotlibrc", "/etc/python3")
_WRITABLE_DEVICES = ("/dev/null", "/dev/zero", "/dev/full")
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


def python_paths() -> list[str]:
    """Directories the interpreter imports from (sys.path, prefixes, the executable's dir)."""
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable))]
    paths += [entry for entry in sys.path if entry]
    resolved: list[str] = []
    for path in paths:
        for candidate in (os.path.abspath(path), os.path.realpath(path)):
            if os.path.exists(candidate) and candidate not in resolved:
                resolved.append(candidate)
    return resolved


def readable_paths(extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*_SYSTEM_READABLE, *_ETC_READABLE, *python_paths(), *extra]))


def world_readable(path: str) -> bool:
    """Can an unrelated uid reach and read `path` (every ancestor o+x, the path o+r)?"""
    path = os.path.realpath(path)
    try:
        if not os.stat(path).st_mode & stat.S_IROTH:
            return False
        parent = path
        while parent != "/":
            parent = os.path.dirname(parent)
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
    except OSError:
        return False
    return True




def enter_server_namespace() -> bool:
    """For a non-root server: move into a fresh user + PID namespace where it holds
    CAP_SYS_ADMIN (to create per-run namespaces) and is PID 1 (everything it starts dies
    with it). The original process stays outside, waits, and exits with the server's code.
    Returns False, changing nothing, if the kernel refuses."""
    uid, gid = os.geteuid(), os.getegid()
    try:
        linux.unshare(linux.CLONE_NEWUSER | linux.CLONE_NEWPID)
    except OSError:
        return False
    _write_id_maps(uid, gid)
    pid = os.fork()
    if pid != 0:
        for fd in (0, 1):
            os.close(fd)  # only the server speaks the protocol
        while True:
            try:
                _, wait_status = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
        os._exit(max(0, os.waitstatus_to_exitcode(wait_status)))
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    return True


def strongest_plan(use_namespaces: bool, use_landlock: bool, extra_readable: tuple[str, ...],
                   server_userns: bool, pids_cgroup: bool = False) -> Plan:
    is_root = os.geteuid() == 0
    # A fresh uid only helps if it can still import the standard library (pyenv under /root: no).
    drop_uid = is_root and all(world_readable(path) for path in python_paths())
    return Plan(
        is_root=is_root, server_userns=server_userns,
        user_namespace=use_namespaces and not drop_uid,
        network_namespace=use_namespaces, pid_namespace=use_namespaces and (is_root or server_userns),
        mount_namespace=use_namespaces, tmpfs_workdir=use_namespaces,
        private_proc=use_namespaces and (is_root or server_userns), private_shm=use_namespaces,
        drop_uid=drop_uid, drop_capabilities=True,
        landlock_abi=landlock.abi_version() if use_landlock else 0,
        socket_filter=not use_namespaces and seccomp.supported(),
        readable_paths=readable_paths(extra_readable),
        pids_cgroup=pids_cgroup,
    )


def _without_mounts(plan: Plan) -> Plan:
    return dataclasses.replace(plan, mount_namespace=False, tmpfs_workdir=False, private_proc=False,
                               private_shm=False)


def _without_namespaces(plan: Plan) -> Plan:
    return dataclasses.replace(_without_mounts(plan), user_namespace=False, network_namespace=False,
                               socket_filter=seccomp.supported())


def weaken(plan: Plan, failed_step: str) -> Optional[Plan]:
    """The plan without the layer whose setup step failed; None if that step is essential."""
    replace = dataclasses.replace
    if failed_step == "unshare_namespaces":
        if not plan.is_root and not plan.server_userns:
            return _without_namespaces(plan)  # without CAP_SYS_ADMIN all of them hang on the user namespace
        if plan.mount_namespace:
            return _without_mounts(plan)
        if plan.network_namespace:
            return replace(plan, network_namespace=False, socket_filter=seccomp.supported())
        return None
    weaker = {
        "pid_namespace": lambda p: replace(p, pid_namespace=False, private_proc=False),
        "id_maps": _without_namespaces,
        "user_namespace": lambda p: replace(p, user_namespace=False),
        "mount_private": _without_mounts,
        "tmpfs_workdir": lambda p: replace(p, tmpfs_workdir=False),
        "private_shm": lambda p: replace(p, private_shm=False),
        "private_proc": lambda p: replace(p, private_proc=False),
        "drop_uid": lambda p: replace(p, drop_uid=False),
        "drop_capabilities": lambda p: replace(p, drop_capabilities=False),
        "landlock": lambda p: replace(p, landlock_abi=0),
        "socket_filter": lambda p: replace(p, socket_filter=False),
        "pids_cgroup": lambda p: replace(p, pids_cgroup=False),
    }.get(failed_step)
    return weaker(plan) if weaker else None


def _step(name: str, action: Any, *args: Any) -> Any:
    try:
        return action(*args)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a named SetupError
        raise SetupError(name, exc) from exc


def _write_file(path: str, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)


def _write_id_maps(uid: int, gid: int) -> None:
    # Map our own ids only: allowed unprivileged, and keeps file ownership meaningful.
    _write_file("/proc/self/setgroups", "deny")
    _write_file("/proc/self/uid_map", f"{uid} {uid} 1")
    _write_file("/proc/self/gid_map", f"{gid} {gid} 1")


def _set_parent_death_signal(expected_parent: Optional[int]) -> None:
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(0)  # the parent died before the prctl took effect


class Spawner:
    """Forks the server's children, each as PID 1 of a fresh PID namespace when the plan has
    one: killing that process then kills everything the run started, however it hid."""

    def __init__(self, pid_namespace: bool) -> None:
        self.pid_namespace = pid_namespace
        self._own_namespace = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC) if pid_namespace else -1

    def fork(self) -> int:
        if not self.pid_namespace:
            return os.fork()
        _step("pid_namespace", linux.unshare, linux.CLONE_NEWPID)
        pid = -1
        try:
            pid = os.fork()
        finally:
            if pid != 0:  # the parent (or a failed fork) goes back to creating children at home
                try:
                    linux.setns(self._own_namespace, linux.CLONE_NEWPID)
                except OSError as exc:
                    # Every later child would land in a dead namespace: die, and be replaced.
                    os.write(2, f"[executor server] cannot restore the PID namespace: {exc}\n".encode())
                    os._exit(70)
        return pid

    def close(self) -> None:
        if self._own_namespace >= 0:
            os.close(self._own_namespace)
            self._own_namespace = -1


def count_user_tasks(uid: int) -> int:
    """Processes and threads of `uid` right now: RLIMIT_NPROC counts them all."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                total += int(fields["Threads"])
        except (OSError, KeyError, ValueError):
            continue
    return total


def _set_limit(kind: int, value: int) -> None:
    _, hard = resource.getrlimit(kind)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(kind, (value, value))


def address_space_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _apply_rlimits(plan: Plan, limits: Limits, cpu_seconds: Optional[int]) -> None:
    # The limit is on growth: the preloaded modules already occupy address space.
    _set_limit(resource.RLIMIT_AS, address_space_bytes() + limits.memory_mb * 1024 * 1024)
    _set_limit(resource.RLIMIT_FSIZE, limits.max_file_mb * 1024 * 1024)
    _set_limit(resource.RLIMIT_NOFILE, limits.max_open_files)
    _set_limit(resource.RLIMIT_CORE, 0)
    if cpu_seconds is not None:
        set_cpu_limit(cpu_seconds, hard=cpu_seconds + 1)
    if plan.process_limit == "counted":
        _set_limit(resource.RLIMIT_NPROC, count_user_tasks(os.getuid()) + limits.max_processes)
    elif plan.process_limit != "none":
        _set_limit(resource.RLIMIT_NPROC, limits.max_processes)


def set_cpu_limit(seconds: int, hard: Optional[int] = None) -> None:
    """Soft CPU limit (SIGXCPU) of `seconds`; hard limit (SIGKILL) `hard`, or unchanged.
    Only root could raise a hard limit again, so sessions keep theirs unlimited."""
    _, current_hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard is None:
        hard = current_hard
    elif current_hard != resource.RLIM_INFINITY:
        hard = min(hard, current_hard)
    if hard != resource.RLIM_INFINITY and seconds != resource.RLIM_INFINITY:
        seconds = min(seconds, hard)
    elif hard != resource.RLIM_INFINITY:
        seconds = hard
    resource.setrlimit(resource.RLIMIT_CPU, (seconds, hard))


def _mount_tmpfs(target: str, options: str, flags: int) -> None:
    linux.mount("tmpfs", target, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV | flags, options)


def _drop_uid(uid: int) -> None:
    for capability in range(linux.last_capability() + 1):
        try:
            linux.prctl(linux.PR_CAPBSET_DROP, capability)
        except OSError:
            pass
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or linux.effective_capabilities():
        raise PermissionError("uid drop left privileges behind")


def _scrubbed_environment(workdir: str) -> dict[str, str]:
    return {
        "PATH": _SAFE_PATH, "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8",
        "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg", "MPLCONFIGDIR": workdir,
    }


def block_sockets_in_python() -> None:
    """Last-resort network layer when neither a network namespace nor seccomp is available:
    weaker, since C extensions (or a determined `_socket` user) can still reach the kernel."""
    import socket

    original = socket.socket

    class GuardedSocket(original):  # type: ignore[misc, valid-type]
        def __init__(self, family: int = -1, type: int = -1, proto: int = -1, fileno: Any = None) -> None:
            if fileno is None and family != socket.AF_UNIX:
                raise PermissionError(13, "network access is disabled in this sandbox")
            super().__init__(family, type, proto, fileno)

    socket.socket = GuardedSocket  # type: ignore[misc]



def _namespace_flags(plan: Plan) -> int:
    flags = linux.CLONE_NEWNET if plan.network_namespace else 0
    if plan.mount_namespace:
        flags |= linux.CLONE_NEWNS | linux.CLONE_NEWIPC | linux.CLONE_NEWUTS
    return flags


def enter_sandbox(plan: Plan, limits: Limits, workdir: str, sandbox_uid: int, cpu_seconds: Optional[int],
                  server_pid: int, cgroup: Optional[str] = None) -> None:
    """In the freshly forked process that will run code: apply every layer, in an order where
    each step still has the privileges it needs. Raises SetupError naming a failed step.

    cgroup: the run's pids cgroup (plan.pids_cgroup), joined first, before anything can fork."""
    if plan.pids_cgroup:
        if cgroup is None:
            raise SetupError("pids_cgroup", RuntimeError("the plan has a pids cgroup but the run was given none"))
        _step("pids_cgroup", cgroups.join, cgroup)
    os.setsid()
    uid, gid = os.geteuid(), os.getegid()
    flags = _namespace_flags(plan)
    # With CAP_SYS_ADMIN, mount first and enter the per-run user namespace last (mounting
    # /proc needs privilege over the PID namespace's owner); without it, the user namespace
    # must come first to grant the rest.
    early_userns = plan.user_namespace and not (plan.is_root or plan.server_userns)
    if early_userns:
        flags |= linux.CLONE_NEWUSER
    if flags:
        _step("unshare_namespaces", linux.unshare, flags)
    if early_userns:
        _step("id_maps", _write_id_maps, uid, gid)
    if plan.mount_namespace:
        # Our mounts must not propagate back to the host.
        _step("mount_private", linux.mount, "none", "/", None, linux.MS_REC | linux.MS_PRIVATE)
    if plan.tmpfs_workdir:
        owner = f",uid={sandbox_uid},gid={sandbox_uid}" if plan.drop_uid else ""
        _step("tmpfs_workdir", _mount_tmpfs, workdir, f"size={limits.workdir_mb}m,mode=0700{owner}", 0)
    if plan.private_shm:
        _step("private_shm", _mount_tmpfs, "/dev/shm", f"size={limits.workdir_mb}m,mode=1777", linux.MS_NOEXEC)
    if plan.private_proc:
        _step("private_proc", linux.mount, "proc", "/proc", "proc",
              linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)
    if plan.user_namespace and not early_userns:
        _step("user_namespace", linux.unshare, linux.CLONE_NEWUSER)
        _step("user_namespace", _write_id_maps, uid, gid)
    if plan.drop_uid and not plan.tmpfs_workdir:
        _step("drop_uid", os.chown, workdir, sandbox_uid, sandbox_uid)
    _step("chdir", os.chdir, workdir)
    os.environ.clear()
    os.environ.update(_scrubbed_environment(workdir))
    _step("rlimits", _apply_rlimits, plan, limits, cpu_seconds)
    if plan.drop_uid:
        _step("drop_uid", _drop_uid, sandbox_uid)
    elif plan.drop_capabilities:
        _step("drop_capabilities", linux.drop_all_capabilities)
    _step("no_new_privs", linux.prctl, linux.PR_SET_NO_NEW_PRIVS, 1)
    if plan.landlock_abi:
        writable = (workdir, "/dev/shm") if plan.private_shm else (workdir,)
        _step("landlock", landlock.restrict_self, (*plan.readable_paths, workdir), writable, _WRITABLE_DEVICES,
              plan.landlock_abi)
    if plan.socket_filter:
        _step("socket_filter", seccomp.block_network_sockets)
    elif not plan.network_namespace:
        block_sockets_in_python()
    # Our parent is outside our PID namespace, where getppid() says 0.
    _step("pdeathsig", _set_parent_death_signal, None if plan.pid_namespace else server_pid)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def protections(plan: Plan) -> dict[str, bool]:
    network = plan.network_namespace or plan.socket_filter
    return {
        "resource_limits": True,
        "process_limit": plan.process_limit != "none",
        "process_group": True,
        "private_workdir": True,
        "tmpfs_workdir": plan.tmpfs_workdir,
        "scrubbed_environment": True,
        "stdin_closed": True,
        "no_new_privileges": True,
        "network_namespace": plan.network_namespace,
        "socket_filter": plan.socket_filter,
        "python_socket_guard": not network,
        "network_blocked": network,
        "pid_namespace": plan.pid_namespace,
        "mount_namespace": plan.mount_namespace,
        "private_proc": plan.private_proc,
        "private_shm": plan.private_shm,
        "user_namespace": plan.user_namespace,
        "unprivileged_uid": plan.drop_uid or not plan.is_root,
        "capabilities_dropped": plan.drop_uid or plan.drop_capabilities,
        "landlock_filesystem": plan.landlock_abi >= 1,
        "landlock_network": plan.landlock_abi >= 4,
        "landlock_signals": plan.landlock_abi >= 6,
    }


def describe(plan: Plan, limits: Limits) -> dict[str, str]:
    """One line per layer: what it does here, or why it is missing."""
    def state(enabled: bool, text: str, missing: str) -> str:
        return text if enabled else f"unavailable: {missing}"

    counted = {"cgroup": "per run (pids cgroup)", "namespace": "per run (user namespace)",
               "uid": "per run (fresh uid)",
               "counted": "user's current processes + the cap (no user namespace)",
               "none": "not enforced: global uid 0 is exempt from RLIMIT_NPROC and no pids cgroup "
                       "could be created"}[plan.process_limit]
    return {
        "resource_limits": (f"address space +{limits.memory_mb} MiB over the warm interpreter, CPU seconds = "
                            f"timeout + 1, files <= {limits.max_file_mb} MiB, {limits.max_open_files} open files, "
                            f"no core dumps"),
        "process_limit": f"{limits.max_processes} processes/threads, counted {counted}",
        "process_group": "own session and process group, killed whole (SIGKILL) on timeout",
        "private_workdir": "fresh temporary working directory (HOME, TMPDIR), removed after the run",
        "tmpfs_workdir": state(plan.tmpfs_workdir, f"work dir is a private {limits.workdir_mb} MiB tmpfs",
                               "work dir is on the host disk"),
        "scrubbed_environment": "environment replaced by PATH, HOME, TMPDIR, LANG and thread-count variables",
        "stdin_closed": "stdin is /dev/null (input() raises EOFError)",
        "no_new_privileges": "no_new_privs: setuid binaries and file capabilities grant nothing",
        "network_namespace": state(plan.network_namespace, "empty network namespace (no interfaces up)",
                                   "kernel refused unshare(CLONE_NEWNET)"),
        "socket_filter": state(plan.socket_filter, "seccomp: socket() fails with EACCES except AF_UNIX",
                               "not needed (network namespace)" if plan.network_namespace else "seccomp refused"),
        "python_socket_guard": ("socket.socket refuses non-unix families (weak: bypassable from C)"
                                if not (plan.network_namespace or plan.socket_filter) else "not needed"),
        "network_blocked": "yes" if plan.network_namespace or plan.socket_filter else "only by the Python guard",
        "pid_namespace": state(plan.pid_namespace, "own PID namespace: other processes invisible, all killed "
                               "with the run's first process", "unshare(CLONE_NEWPID) refused"),
        "mount_namespace": state(plan.mount_namespace, "own mount, IPC and UTS namespaces",
                                 "unshare(CLONE_NEWNS) refused"),
        "private_proc": state(plan.private_proc, "/proc shows only the run's processes", "proc mount refused"),
        "private_shm": state(plan.private_shm, "/dev/shm is a private tmpfs", "host /dev/shm is not writable"),
        "user_namespace": state(plan.user_namespace, "own user namespace: no capabilities outside it",
                                "not used" if plan.drop_uid else "unshare(CLONE_NEWUSER) refused"),
        "unprivileged_uid": ("runs as a fresh unprivileged uid" if plan.drop_uid else
                             "runs as the (unprivileged) calling user" if not plan.is_root else
                             "unavailable: stays uid 0 (the Python installation is not world-readable), "
                             "confined by dropped capabilities and Landlock"),
        "capabilities_dropped": state(plan.drop_uid or plan.drop_capabilities,
                                      "no capabilities, empty bounding set", "capset refused"),
        "landlock_filesystem": state(plan.landlock_abi >= 1, f"Landlock ABI {plan.landlock_abi}: writes only in the "
                                     "work dir, reads only system and Python directories", "Landlock missing"),
        "landlock_network": state(plan.landlock_abi >= 4, "Landlock: TCP connect/bind denied", "needs ABI 4"),
        "landlock_signals": state(plan.landlock_abi >= 6, "Landlock: no signals or abstract sockets leave the "
                                  "sandbox", "needs ABI 6"),
    }
