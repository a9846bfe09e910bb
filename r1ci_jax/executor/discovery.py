"""Startup probing: which isolation layers does this kernel, as this user, allow?

The server runs an empty snippet under the strongest plan; when a setup step fails it drops
that layer (`sandbox.weaken`) and tries again, so `CodeExecutor.protections()` reports what
actually came up rather than what the kernel version suggests.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Optional

from r1ci_jax.executor import cgroups as cgroups_mod
from r1ci_jax.executor import child, sandbox
from r1ci_jax.executor.workdir import remove_tree

_READ_CHUNK = 65536
_PROBE_UID = 2_000_000  # only used when root drops to a fresh uid


def probe(plan: sandbox.Plan, limits: sandbox.Limits, base_dir: str,
          cgroups: Optional[cgroups_mod.PidsCgroups] = None) -> Optional[tuple[str, str]]:
    """Run an empty snippet under `plan`; None if the sandbox came up, else (step, error)."""
    workdir = tempfile.mkdtemp(prefix="probe-", dir=base_dir)
    name = os.path.basename(workdir)
    cgroup = cgroups.create(name, limits.max_processes) if plan.pids_cgroup and cgroups else None
    try:
        return _probe(plan, limits, workdir, cgroup)
    finally:
        if cgroup is not None and cgroups is not None:
            cgroups.release(name)


def _probe(plan: sandbox.Plan, limits: sandbox.Limits, workdir: str,
           cgroup: Optional[str]) -> Optional[tuple[str, str]]:
    pipes = [os.pipe() for _ in range(3)]
    context = child.ChildContext(plan=plan, limits=limits, workdir=workdir, sandbox_uid=_PROBE_UID,
                                 server_pid=os.getpid(), cgroup=cgroup)
    spawner = sandbox.Spawner(plan.pid_namespace)
    try:
        pid = spawner.fork()
        if pid == 0:
            child.run_stateless(context, "pass", 10.0, *(write for _, write in pipes))
    except sandbox.SetupError as exc:
        return exc.step, str(exc)
    finally:
        spawner.close()
        for _, write in pipes:
            os.close(write)
    outcome = child.wait_message(pid)
    outputs = []
    for read, _ in pipes:
        chunks = []
        while chunk := os.read(read, _READ_CHUNK):
            chunks.append(chunk)
        os.close(read)
        outputs.append(b"".join(chunks))
    remove_tree(workdir)
    for message in child.json_lines(outputs[2]):
        if "setup_failed" in message:
            return str(message["setup_failed"]), str(message.get("error"))
    if outcome.get("exit_code") != 0:
        return "internal", f"probe ended with {outcome}: {outputs[1][-2000:]!r}"
    return None


def discover_plan(config: dict[str, Any], base_dir: str, server_userns: bool,
                  cgroups: Optional[cgroups_mod.PidsCgroups] = None) -> sandbox.Plan:
    """The strongest plan this kernel and user allow, found by weakening on each failure.
    cgroups: where per-run pids cgroups go, if this server could open them."""
    limits = sandbox.Limits(**config["limits"])
    plan: Optional[sandbox.Plan] = sandbox.strongest_plan(
        bool(config["use_namespaces"]), bool(config["use_landlock"]), tuple(config["extra_readable"]),
        server_userns, pids_cgroup=cgroups is not None)
    failures = []
    while plan is not None:
        failure = probe(plan, limits, base_dir, cgroups)
        if failure is None:
            return plan
        failures.append(f"{failure[0]}: {failure[1]}")
        plan = sandbox.weaken(plan, failure[0])
    raise RuntimeError("no sandbox configuration works here: " + "; ".join(failures))
