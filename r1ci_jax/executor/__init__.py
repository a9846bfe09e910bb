"""Sandboxed Python snippet executor for code-interpreter rollouts.

    from r1ci_jax.executor import CodeExecutor, ExecResult

    async with CodeExecutor(num_workers=8, timeout_s=10) as ex:
        result = await ex.run("import numpy as np; print(np.arange(3).sum())")

Modules: result.py (ExecResult, statuses, output capping), pool.py (CodeExecutor, the asyncio
side), server.py (the zygote: forks a child per snippet), child.py (what runs in those
children), sandbox.py (isolation layers), discovery.py (which layers this kernel allows),
landlock.py / seccomp.py / linux.py (kernel interfaces), protocol.py (frames between pool and
servers), workdir.py (removing run directories).
"""
from r1ci_jax.executor.pool import CodeExecutor
from r1ci_jax.executor.result import STATUSES, ExecResult, Status

__all__ = ["CodeExecutor", "ExecResult", "STATUSES", "Status"]
