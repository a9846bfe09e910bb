"""CodeExecutor: the asyncio front of a few zygote servers (server.py).

    async with CodeExecutor(num_workers=8, timeout_s=10) as ex:
        result = await ex.run("import numpy as np; print(np.pi)")
        await ex.run("x = 1", session="traj-17")
        await ex.run("print(x + 1)", session="traj-17")   # "2\n"

`num_workers` snippets run at once; more `run` calls queue. The servers multiplex them
(`num_servers` processes, two by default, so one dying does not stop the pool while it is
replaced). Each snippet's timeout is enforced by its server; this side adds a backstop
(timeout + grace) that kills a server that stopped answering. Every outcome is an
ExecResult, and every status is counted in `metrics()`.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from r1ci_jax.executor.protocol import encode_frame, read_frame
from r1ci_jax.executor.result import STATUSES, ExecResult
from r1ci_jax.executor.workdir import remove_tree

log = logging.getLogger(__name__)

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_FORGET_AFTER = 10_000  # remembered ids of expired/evicted sessions, to report their loss once


def _require_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _require_seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive, finite number of seconds, got {value!r}")
    return float(value)


async def _ensure_exited(process: asyncio.subprocess.Process, grace_s: float) -> Optional[int]:
    """Wait for a server to exit, killing it after `grace_s`. (Popen.kill polls first, which can
    reap an exiting process behind asyncio's child watcher; so only kill what is still running.)"""
    try:
        return await asyncio.wait_for(process.wait(), timeout=grace_s)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        return await process.wait()


def _failure(reason: str, duration: float = 0.0) -> ExecResult:
    return ExecResult(status="crashed", stdout="", stderr=f"[executor] {reason}\n", truncated=False,
                      duration_s=duration, exit_code=None, executor_failure=True)


@dataclass
class _Server:
    index: int
    process: asyncio.subprocess.Process
    protections: dict[str, bool]
    details: dict[str, str]
    base_dir: str  # where its runs' work dirs live; it removes it on exit, we do if it was killed
    pending: dict[int, asyncio.Future] = field(default_factory=dict)
    alive: bool = True
    reader: Optional[asyncio.Task] = None


@dataclass
class _Session:
    server: Optional[_Server] = None  # chosen when its first snippet runs
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_used: float = field(default_factory=time.monotonic)
    opened: bool = False


class CodeExecutor:
    """Sandboxed Python snippet executor. See the module docstring and docs of `run`."""

    def __init__(self, num_workers: int = 4, timeout_s: float = 10.0, memory_mb: int = 1024,
                 max_output_bytes: int = 16384, preload: Sequence[str] = ("math", "numpy", "sympy"), *,
                 num_servers: Optional[int] = None, max_processes: int = 128, max_open_files: int = 256,
                 max_file_mb: int = 64, workdir_mb: int = 128, max_sessions: int = 256,
                 session_ttl_s: float = 1800.0, max_code_bytes: int = 1_000_000, grace_s: float = 2.0,
                 start_timeout_s: float = 120.0, use_namespaces: bool = True, use_landlock: bool = True,
                 extra_readable_paths: Sequence[str] = (), python: str = sys.executable) -> None:
        self.num_workers = _require_int("num_workers", num_workers, 1)
        self.timeout_s = _require_seconds("timeout_s", timeout_s)
        self.num_servers = _require_int("num_servers", min(num_workers, 2) if num_servers is None else num_servers, 1)
        self.max_sessions = _require_int("max_sessions", max_sessions, 1)
        self.session_ttl_s = _require_seconds("session_ttl_s", session_ttl_s)
        self.max_code_bytes = _require_int("max_code_bytes", max_code_bytes, 1)
        self.grace_s = _require_seconds("grace_s", grace_s)
        self.start_timeout_s = _require_seconds("start_timeout_s", start_timeout_s)
        if isinstance(preload, str) or not all(isinstance(name, str) and name for name in preload):
            raise ValueError(f"preload must be a sequence of module names, got {preload!r}")
        self._config = {
            "limits": {
                "memory_mb": _require_int("memory_mb", memory_mb, 16),
                "max_output_bytes": _require_int("max_output_bytes", max_output_bytes, 1),
                "max_processes": _require_int("max_processes", max_processes, 1),
                "max_open_files": _require_int("max_open_files", max_open_files, 16),
                "max_file_mb": _require_int("max_file_mb", max_file_mb, 1),
                "workdir_mb": _require_int("workdir_mb", workdir_mb, 1),
            },
            "preload": list(preload), "use_namespaces": bool(use_namespaces), "use_landlock": bool(use_landlock),
            "extra_readable": [os.path.abspath(path) for path in extra_readable_paths],
            "grace_s": self.grace_s / 2, "parent_pid": os.getpid(), "hide_paths": [_PACKAGE_ROOT],
        }
        self._python = python
        self._servers: list[_Server] = []
        self._slots = asyncio.Semaphore(self.num_workers)
        self._ids = itertools.count()
        self._sessions: collections.OrderedDict[str, _Session] = collections.OrderedDict()
        self._forgotten: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._server_ready = asyncio.Event()
        self._background: set[asyncio.Task] = set()
        self._started = False
        self._closing = False
        self._counters = collections.Counter({name: 0 for name in (
            "runs", *STATUSES, "executor_failures", "truncated", "workers_started", "workers_replaced",
            "sessions_opened", "sessions_closed", "sessions_expired", "sessions_evicted", "sessions_lost")})

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> "CodeExecutor":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def start(self) -> None:
        if self._started:
            return
        results = await asyncio.gather(*(self._spawn(index) for index in range(self.num_servers)),
                                       return_exceptions=True)
        failures = [result for result in results if isinstance(result, BaseException)]
        self._servers = [result for result in results if isinstance(result, _Server)]
        if failures:
            self._closing = True  # so the started servers' readers do not replace them
            await self._stop_servers()
            raise failures[0]
        self._started = True
        self._server_ready.set()
        self._spawn_task(self._expire_sessions())

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        for task in list(self._background):
            task.cancel()
        await self._stop_servers()

    async def _stop_servers(self) -> None:
        for server in self._servers:
            server.alive = False
            with contextlib.suppress(Exception):
                server.process.stdin.write(encode_frame({"type": "shutdown"}))
                server.process.stdin.close()
        for server in self._servers:
            await _ensure_exited(server.process, 5.0)
            if server.reader is not None:
                server.reader.cancel()
                await asyncio.gather(server.reader, return_exceptions=True)  # let it finish cancelling
            remove_tree(server.base_dir)  # normally gone already: the server removes it on exit
            self._fail_pending(server, "the executor was closed")

    def _spawn_task(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _spawn(self, index: int) -> _Server:
        # The caller's PYTHONPATH (where its numpy may live) plus this package; nothing else
        # from the caller's environment, which may hold secrets the preloaded modules could keep.
        pythonpath = [_PACKAGE_ROOT, *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
        env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "LANG": "C.UTF-8",
               "PYTHONPATH": os.pathsep.join(pythonpath), "PYTHONIOENCODING": "utf-8", "PYTHONDONTWRITEBYTECODE": "1",
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg",
               # glibc reserves 64 MiB of address space per thread arena; RLIMIT_AS counts it.
               "MALLOC_ARENA_MAX": "2"}
        process = await asyncio.create_subprocess_exec(
            self._python, "-m", "r1ci_jax.executor.server", json.dumps(self._config),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env, cwd="/",
            start_new_session=True, limit=1 << 20)
        try:
            hello = await asyncio.wait_for(read_frame(process.stdout), timeout=self.start_timeout_s)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
            await _ensure_exited(process, 0.0 if isinstance(exc, asyncio.TimeoutError) else 5.0)
            raise RuntimeError(f"executor server did not start (exit code {process.returncode}): {exc!r}") from exc
        problem = hello.get("error") or "; ".join(f"cannot preload {name}: {error}"
                                                  for name, error in hello.get("preload_errors", {}).items())
        if problem:
            process.stdin.close()  # the server exits when its input ends
            await _ensure_exited(process, 5.0)
            raise RuntimeError(f"executor server failed to start: {problem}")
        server = _Server(index=index, process=process, protections=hello["protections"], details=hello["details"],
                         base_dir=str(hello["base_dir"]))
        server.reader = asyncio.get_running_loop().create_task(self._read_results(server))
        self._counters["workers_started"] += 1
        return server

    async def _read_results(self, server: _Server) -> None:
        try:
            while True:
                message = await read_frame(server.process.stdout)
                future = server.pending.pop(int(message.get("id", -1)), None)
                if future is not None and not future.done():
                    future.set_result(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - EOF or garbage: the server is gone either way
            if not isinstance(exc, asyncio.IncompleteReadError):
                log.warning("executor server %d sent an unreadable frame: %r", server.index, exc)
        server.alive = False
        code = await _ensure_exited(server.process, 2.0)
        await asyncio.get_running_loop().run_in_executor(None, remove_tree, server.base_dir)
        self._fail_pending(server, f"the worker process died (exit code {code}) while running this snippet")
        if not self._closing:
            log.warning("executor server %d died (exit code %s); replacing it", server.index, code)
            self._spawn_task(self._replace(server))

    def _fail_pending(self, server: _Server, reason: str) -> None:
        pending, server.pending = server.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_result({"status": "crashed", "stderr": f"[executor] {reason}\n", "executor_failure": True,
                                   "session_lost": True})

    async def _replace(self, dead: _Server) -> None:
        delay = 0.1
        if all(not server.alive for server in self._servers):
            self._server_ready.clear()
        while not self._closing:
            try:
                server = await self._spawn(dead.index)
            except Exception as exc:  # noqa: BLE001 - keep trying; runs meanwhile use other servers
                log.error("could not replace executor server %d: %s", dead.index, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            if self._closing:
                self._servers.append(server)  # so close() stops it
                return
            self._servers[self._servers.index(dead)] = server
            self._counters["workers_replaced"] += 1
            self._server_ready.set()
            return

    # ------------------------------------------------------------------ running

    async def run(self, code: str, session: Optional[str] = None, timeout_s: Optional[float] = None) -> ExecResult:
        """Run `code` like `python -c` in a fresh sandboxed process and return its ExecResult.

        session: None runs it independently; a string runs it in that session, seeing the
        variables of the session's earlier snippets (a snippet that is killed, e.g. by its
        timeout, leaves the session as it was before it). timeout_s: wall-clock limit,
        default the executor's. Returns within timeout + grace once a worker slot is free.
        """
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, got {type(code).__name__}")
        if session is not None and not isinstance(session, str):
            raise TypeError(f"session must be a str or None, got {type(session).__name__}")
        timeout = self.timeout_s if timeout_s is None else _require_seconds("timeout_s", timeout_s)
        if not self._started or self._closing:
            raise RuntimeError("CodeExecutor is not running: use `async with CodeExecutor(...)` or `await start()`")
        size = len(code.encode("utf-8", "surrogatepass"))
        if size > self.max_code_bytes:
            result = _failure(f"the snippet is {size} bytes; the limit is {self.max_code_bytes}")
        else:
            try:
                if session is None:
                    async with self._slots:
                        result = (await self._request(await self._live_server(), code, timeout, None, False))[0]
                else:
                    result = await self._run_in_session(session, code, timeout)
            except asyncio.TimeoutError:  # from _live_server: no worker came back
                result = _failure(f"no worker has been available for {self.start_timeout_s:g} s")
        self._count(result)
        return result

    async def _run_in_session(self, session_id: str, code: str, timeout: float) -> ExecResult:
        record = self._sessions.get(session_id)
        if record is None:
            lost = self._forgotten.pop(session_id, None)
            if lost is not None:
                return _failure(f"session {session_id!r} was {lost}; its variables are gone. The next snippet "
                                "starts a fresh session.")
            if len(self._sessions) >= self.max_sessions and not self._evict_one():
                return _failure(f"all {self.max_sessions} sessions are busy; close some with close_session()")
            record = _Session()
            self._sessions[session_id] = record
            self._counters["sessions_opened"] += 1
        self._sessions.move_to_end(session_id)
        async with record.lock:
            if self._sessions.get(session_id) is not record:
                return _failure(f"session {session_id!r} was closed while this snippet waited")
            if record.opened and record.server is not None and not record.server.alive:
                self._drop_session(session_id, record)
                self._counters["sessions_lost"] += 1
                return _failure(f"session {session_id!r} was lost when its worker died; its variables are gone. "
                                "The next snippet starts a fresh session.")
            if record.server is None or not record.server.alive:
                record.server = await self._live_server()
            async with self._slots:
                result, lost = await self._request(record.server, code, timeout, session_id, not record.opened)
            record.opened = True
            record.last_used = time.monotonic()
            if lost:
                self._drop_session(session_id, record)
                self._counters["sessions_lost"] += 1
            return result

    async def _live_server(self) -> _Server:
        while True:
            live = [server for server in self._servers if server.alive]
            if live:
                return min(live, key=lambda server: len(server.pending))
            self._server_ready.clear()
            await asyncio.wait_for(self._server_ready.wait(), timeout=self.start_timeout_s)

    async def _request(self, server: _Server, code: str, timeout: float, session: Optional[str],
                       new_session: bool) -> tuple[ExecResult, bool]:
        request_id = next(self._ids)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        server.pending[request_id] = future
        started = time.monotonic()
        try:
            server.process.stdin.write(encode_frame({"type": "run", "id": request_id, "code": code,
                                                     "timeout_s": timeout, "session": session,
                                                     "new_session": new_session}))
            message = await asyncio.wait_for(asyncio.shield(future), timeout=timeout + self.grace_s)
        except asyncio.TimeoutError:
            server.pending.pop(request_id, None)
            log.error("executor server %d missed a deadline; killing it", server.index)
            with contextlib.suppress(ProcessLookupError):
                server.process.kill()
            return _failure("the worker stopped answering and was replaced", time.monotonic() - started), True
        except (ConnectionError, RuntimeError) as exc:  # stdin closed: the server just died
            server.pending.pop(request_id, None)
            return _failure(f"could not reach the worker: {exc}", time.monotonic() - started), True
        except asyncio.CancelledError:
            server.pending.pop(request_id, None)
            with contextlib.suppress(Exception):
                server.process.stdin.write(encode_frame({"type": "cancel", "id": request_id}))
            raise
        result = ExecResult(status=message["status"], stdout=message.get("stdout", ""),
                            stderr=message.get("stderr", ""), truncated=bool(message.get("truncated")),
                            duration_s=float(message.get("duration_s", time.monotonic() - started)),
                            exit_code=message.get("exit_code"),
                            executor_failure=bool(message.get("executor_failure")))
        return result, bool(message.get("session_lost"))

    def _count(self, result: ExecResult) -> None:
        self._counters["runs"] += 1
        self._counters[result.status] += 1
        self._counters["executor_failures"] += result.executor_failure
        self._counters["truncated"] += result.truncated

    # ------------------------------------------------------------------ sessions

    async def close_session(self, session_id: str) -> bool:
        """End a session and free its processes; False if it did not exist."""
        record = self._sessions.get(session_id)
        if record is None:
            return False
        async with record.lock:
            self._drop_session(session_id, record)
        self._counters["sessions_closed"] += 1
        return True

    def _drop_session(self, session_id: str, record: _Session, forget_as: Optional[str] = None) -> None:
        if self._sessions.get(session_id) is record:
            del self._sessions[session_id]
        if forget_as is not None:
            self._forgotten[session_id] = forget_as
            while len(self._forgotten) > _FORGET_AFTER:
                self._forgotten.popitem(last=False)
        if record.opened and record.server is not None and record.server.alive:
            with contextlib.suppress(Exception):
                record.server.process.stdin.write(encode_frame({"type": "close_session", "session": session_id}))

    def _evict_one(self) -> bool:
        for session_id, record in list(self._sessions.items()):  # least recently used first
            if not record.lock.locked():
                self._drop_session(session_id, record, forget_as="evicted (too many open sessions)")
                self._counters["sessions_evicted"] += 1
                return True
        return False

    async def _expire_sessions(self) -> None:
        while True:
            await asyncio.sleep(min(self.session_ttl_s / 4, 30.0))
            now = time.monotonic()
            for session_id, record in list(self._sessions.items()):
                if not record.lock.locked() and now - record.last_used > self.session_ttl_s:
                    self._drop_session(session_id, record, forget_as=f"idle for over {self.session_ttl_s:g} s "
                                       "and expired")
                    self._counters["sessions_expired"] += 1

    # ------------------------------------------------------------------ reporting

    def protections(self) -> dict[str, bool]:
        """Which isolation layers are in force (name -> bool), as probed by the servers."""
        if not self._servers:
            raise RuntimeError("start the executor first")
        return dict(self._servers[0].protections)

    def describe_protections(self) -> dict[str, str]:
        """What each layer does here, or why it is unavailable."""
        if not self._servers:
            raise RuntimeError("start the executor first")
        return dict(self._servers[0].details)

    def metrics(self) -> dict[str, int]:
        """Counters: runs, each status, executor failures, truncations, worker and session events."""
        counters = dict(self._counters)
        counters["sessions_open"] = len(self._sessions)
        counters["workers_alive"] = sum(server.alive for server in self._servers)
        return counters
