"""CodeExecutor: timeouts, concurrency, sessions, robustness, other sandbox configurations and
identities (as an unprivileged user, fresh uids)."""
from __future__ import annotations

import asyncio
import os
import textwrap
import time
import uuid
from typing import Optional

import pytest

from executor_support import (Pool, assert_no_process_named, name_self, pool_resource)
from r1ci_jax.executor import CodeExecutor, ExecResult


@pytest.fixture(scope="module")
def pool():
    yield from pool_resource()


# ---------------------------------------------------------------- timeouts and concurrency


@pytest.mark.parametrize("limit", [0.5, 1.5])
def test_timeout_is_enforced_within_half_a_second(pool: Pool, limit: float) -> None:
    started = time.monotonic()
    result = pool.run("while True:\n    pass", timeout_s=limit)
    elapsed = time.monotonic() - started
    assert result.status == "timeout"
    assert limit <= result.duration_s < limit + 0.5
    assert elapsed < limit + 0.5


def test_200_concurrent_runs_on_4_workers_are_all_correct(pool: Pool) -> None:
    async def many() -> list[ExecResult]:
        return await asyncio.gather(*(pool.executor.run(
            f"import numpy as np\nprint({i}, int(np.arange({i}).sum()))") for i in range(200)))

    results = pool.loop.call(many())
    assert [r.status for r in results] == ["ok"] * 200
    assert [r.stdout for r in results] == [f"{i} {sum(range(i))}\n" for i in range(200)]


def test_concurrent_hostile_and_normal_runs(pool: Pool) -> None:
    async def mixed() -> list[ExecResult]:
        jobs = []
        for i in range(24):
            code = ["while True: pass", "x = bytearray(10 ** 11)", "import os\nos._exit(1)"][i % 3] if i % 2 else \
                f"print({i})"
            jobs.append(pool.executor.run(code, timeout_s=1.0))
        return await asyncio.gather(*jobs)

    results = pool.loop.call(mixed())
    for i, result in enumerate(results):
        if i % 2 == 0:
            assert (result.status, result.stdout) == ("ok", f"{i}\n")
        else:
            assert result.status == ["timeout", "memory", "error"][i % 3]


def test_metrics_count_every_status(pool: Pool) -> None:
    before = pool.executor.metrics()
    for code in ("print(1)", "1/0", "while True: pass", "bytearray(10 ** 11)", "import os\nos.abort()"):
        pool.run(code, timeout_s=0.5)
    after = pool.executor.metrics()
    for status in ("ok", "error", "timeout", "memory", "crashed"):
        assert after[status] == before[status] + 1, status
    assert after["runs"] == before["runs"] + 5
    assert after["executor_failures"] == before["executor_failures"]


def test_cancelled_run_does_not_wedge_the_pool(pool: Pool) -> None:
    async def cancel_one() -> None:
        task = asyncio.ensure_future(pool.executor.run("import time\ntime.sleep(30)", timeout_s=30))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    pool.loop.call(cancel_one())
    pool.assert_healthy()


# ---------------------------------------------------------------- sessions


def test_session_keeps_state_and_sessions_are_isolated(pool: Pool) -> None:
    a, b = f"traj-{uuid.uuid4().hex}", f"traj-{uuid.uuid4().hex}"
    assert pool.run("x = 41\nimport numpy as np\narr = np.arange(3)", session=a).status == "ok"
    assert pool.run("x = 'other'", session=b).status == "ok"
    assert pool.run("x += 1\nprint(x, arr.sum())", session=a).stdout == "42 3\n"
    assert pool.run("print(x)", session=b).stdout == "other\n"
    assert pool.run("print('x' in globals())").stdout == "False\n"
    assert pool.run("open('notes.txt', 'w').write('kept')", session=a).status == "ok"
    assert pool.run("print(open('notes.txt').read())", session=a).stdout == "kept\n"
    assert pool.run("import os\nprint(os.path.exists('notes.txt'))", session=b).stdout == "False\n"
    for session in (a, b):
        assert pool.loop.call(pool.executor.close_session(session))
    assert not pool.loop.call(pool.executor.close_session(a))


def test_session_rolls_back_a_killed_snippet_and_keeps_an_erroring_one(pool: Pool) -> None:
    session = f"traj-{uuid.uuid4().hex}"
    assert pool.run("x = 1", session=session).status == "ok"
    started = time.monotonic()
    assert pool.run("x = 2\nwhile True: pass", session=session, timeout_s=0.5).status == "timeout"
    assert time.monotonic() - started < 1.0
    assert pool.run("print(x)", session=session).stdout == "1\n"
    assert pool.run("x = 3\nimport os\nos._exit(4)", session=session).status == "error"
    assert pool.run("print(x)", session=session).stdout == "1\n"
    assert pool.run("x = 5\n1/0", session=session).status == "error"  # like a notebook: x = 5 stays
    assert pool.run("print(x)", session=session).stdout == "5\n"
    assert pool.run("import sys\nsys.exit(2)", session=session).exit_code == 2
    assert pool.run("print(x)", session=session).stdout == "5\n"
    assert pool.run("bytearray(10 ** 11)", session=session).status == "memory"
    assert pool.run("print(x)", session=session).stdout == "5\n"
    pool.loop.call(pool.executor.close_session(session))


def test_session_snippet_that_kills_its_holder(pool: Pool) -> None:
    session = f"traj-{uuid.uuid4().hex}"
    assert pool.run("x = 1", session=session).status == "ok"
    # Kills every process of the session it can see (the previous holder); it still takes over.
    assert pool.run("import os\nos.kill(1, 9)\nos.kill(-1, 9)\ny = 2", session=session).status == "ok"
    assert pool.run("print(x, y)", session=session).stdout == "1 2\n"
    # Now with nobody left to enforce its timeout: the server resets the session, and says so once.
    started = time.monotonic()
    result = pool.run("import os, time\nos.kill(-1, 9)\ntime.sleep(30)", session=session, timeout_s=1)
    assert result.status == "timeout" and "variables are gone" in result.stderr, result
    assert time.monotonic() - started < 1 + pool.executor.grace_s
    fresh = pool.run("print(x)", session=session)
    assert fresh.status == "error" and "NameError" in fresh.stderr
    pool.assert_healthy()
    pool.loop.call(pool.executor.close_session(session))


def test_session_runs_are_serialized(pool: Pool) -> None:
    session = f"traj-{uuid.uuid4().hex}"

    async def concurrent() -> list[ExecResult]:
        await pool.executor.run("n = 0", session=session)
        return await asyncio.gather(*(pool.executor.run("n += 1\nprint(n)", session=session) for _ in range(10)))

    results = pool.loop.call(concurrent())
    assert sorted(int(r.stdout) for r in results) == list(range(1, 11))
    pool.loop.call(pool.executor.close_session(session))


def test_session_ttl_and_cap() -> None:
    async def scenario() -> None:
        async with CodeExecutor(num_workers=2, timeout_s=2, preload=("math",), max_sessions=2,
                                session_ttl_s=0.4) as ex:
            await ex.run("v = 'a'", session="a")
            await ex.run("v = 'b'", session="b")
            await ex.run("v = 'c'", session="c")  # evicts "a", the least recently used
            evicted = await ex.run("print(v)", session="a")
            assert evicted.status == "crashed" and "evicted" in evicted.stderr
            assert (await ex.run("print(v)", session="c")).stdout == "c\n"
            await asyncio.sleep(1.0)
            expired = await ex.run("print(v)", session="c")
            assert expired.status == "crashed" and "expired" in expired.stderr
            assert (await ex.run("print('new')", session="c")).stdout == "new\n"
            metrics = ex.metrics()
            assert metrics["sessions_evicted"] >= 1 and metrics["sessions_expired"] >= 1

    asyncio.run(scenario())


# ---------------------------------------------------------------- robustness


def test_dead_worker_is_replaced_and_its_runs_answered() -> None:
    async def scenario() -> None:
        async with CodeExecutor(num_workers=2, num_servers=1, timeout_s=5, preload=("math",)) as ex:
            await ex.run("x = 1", session="s")
            victim, victim_dir = ex._servers[0].process, ex._servers[0].base_dir
            task = asyncio.ensure_future(ex.run("import time\ntime.sleep(3)"))
            await asyncio.sleep(0.3)
            victim.kill()
            result = await asyncio.wait_for(task, 5)
            assert result.status == "crashed" and result.executor_failure
            assert "worker process died" in result.stderr
            healthy = await ex.run("print('back')")
            assert (healthy.status, healthy.stdout) == ("ok", "back\n")
            lost = await ex.run("print(x)", session="s")
            assert lost.status == "crashed" and "lost" in lost.stderr
            assert (await ex.run("print('fresh')", session="s")).stdout == "fresh\n"
            metrics = ex.metrics()
            assert metrics["workers_replaced"] == 1 and metrics["executor_failures"] >= 2
            assert not os.path.exists(victim_dir), "a killed worker's directory was left behind"

    asyncio.run(scenario())


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="num_workers.*0"):
        CodeExecutor(num_workers=0)
    with pytest.raises(ValueError, match="timeout_s.*-1"):
        CodeExecutor(timeout_s=-1)
    with pytest.raises(ValueError, match="memory_mb"):
        CodeExecutor(memory_mb=0)
    with pytest.raises(ValueError, match="preload"):
        CodeExecutor(preload="numpy")

    async def misuse() -> None:
        ex = CodeExecutor(num_workers=1, preload=())
        with pytest.raises(RuntimeError, match="not running"):
            await ex.run("print(1)")
        async with ex:
            with pytest.raises(ValueError, match="timeout_s"):
                await ex.run("print(1)", timeout_s=0)
            with pytest.raises(TypeError, match="code"):
                await ex.run(b"print(1)")  # type: ignore[arg-type]
            big = await ex.run("#" * (ex.max_code_bytes + 1))
            assert big.status == "crashed" and big.executor_failure and "limit" in big.stderr

    asyncio.run(misuse())


def test_unknown_preload_module_fails_start() -> None:
    async def start() -> None:
        async with CodeExecutor(num_workers=1, preload=("math", "no_such_module_r1ci")):
            pass

    with pytest.raises(RuntimeError, match="no_such_module_r1ci"):
        asyncio.run(start())


def test_protections_report(pool: Pool) -> None:
    protections = pool.executor.protections()
    details = pool.executor.describe_protections()
    assert set(protections) == set(details)
    assert all(isinstance(value, bool) for value in protections.values())
    for always in ("resource_limits", "process_group", "private_workdir", "scrubbed_environment", "stdin_closed",
                   "no_new_privileges"):
        assert protections[always]
    assert protections["network_blocked"], details


# ---------------------------------------------------------------- other sandbox configurations


async def _fallback_checks(ex: CodeExecutor) -> None:
    net = await ex.run("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)")
    assert net.status == "error" and "Errno 13" in net.stderr, net
    timed = await ex.run("while True: pass", timeout_s=0.5)
    assert timed.status == "timeout" and timed.duration_s < 1.0
    marker = "r1ci-fb-" + uuid.uuid4().hex[:4]
    child = await ex.run(name_self(marker) + "import os, time\nif os.fork() == 0:\n    time.sleep(60)\n"
                         "time.sleep(60)", timeout_s=0.5)
    assert child.status == "timeout"
    assert_no_process_named(marker)
    ok = await ex.run("print(sum(range(10)))")
    assert (ok.status, ok.stdout) == ("ok", "45\n")
    assert (await ex.run("z = 7", session="fb")).status == "ok"
    assert (await ex.run("while True: pass", session="fb", timeout_s=0.5)).status == "timeout"
    assert (await ex.run("print(z)", session="fb")).stdout == "7\n"
    await ex.close_session("fb")


def test_without_namespaces_seccomp_blocks_the_network() -> None:
    async def scenario() -> None:
        async with CodeExecutor(num_workers=2, timeout_s=2, preload=("math",), use_namespaces=False) as ex:
            protections = ex.protections()
            assert not protections["network_namespace"] and not protections["pid_namespace"]
            assert protections["socket_filter"] and protections["network_blocked"]
            raw = await ex.run("import _socket\n_socket.socket(2, 1)")  # below the socket module
            assert raw.status == "error" and "Permission" in raw.stderr, raw
            unix = await ex.run("import socket\na, b = socket.socketpair()\na.send(b'hi')\nprint(b.recv(2))")
            assert unix.stdout == "b'hi'\n", unix
            await _fallback_checks(ex)

    asyncio.run(scenario())


def test_without_namespaces_or_landlock_still_limits_and_reports() -> None:
    async def scenario() -> None:
        async with CodeExecutor(num_workers=2, timeout_s=2, preload=("math",), use_namespaces=False,
                                use_landlock=False) as ex:
            protections = ex.protections()
            assert not protections["landlock_filesystem"] and "unavailable" in \
                ex.describe_protections()["landlock_filesystem"]
            await _fallback_checks(ex)
            memory = await ex.run("bytearray(10 ** 11)")
            assert memory.status == "memory"

    asyncio.run(scenario())


# ---------------------------------------------------------------- other identities

_AS_USER_SCRIPT = textwrap.dedent("""
    import asyncio, json, os
    from r1ci_jax.executor import CodeExecutor

    CHECKS = {
        "ok": "print(sum(range(4)))",
        "identity": "import os\\nprint(os.getpid(), os.getuid())",
        "network": "import socket\\nsocket.create_connection(('127.0.0.1', 9), timeout=1)",
        "write_tmp": "open('/tmp/r1ci-user-escape', 'w').write('x')",
        "loop": "while True: pass",
        "fork_bomb": "import os\\nwhile True:\\n    os.fork()",
        "kill_parent": "import os\\nos.kill(os.getppid(), 9)\\nprint('alive')",
        "memory": "bytearray(10 ** 11)",
    }

    async def main():
        report = {"uid": os.getuid()}
        async with CodeExecutor(num_workers=2, timeout_s=2, preload=("math",), max_processes=32) as ex:
            report["protections"] = ex.protections()
            for name, code in CHECKS.items():
                result = await ex.run(code, timeout_s=1.0)
                report[name] = [result.status, result.stdout]
            await ex.run("x = 5", session="s")
            report["session"] = (await ex.run("print(x * 2)", session="s")).stdout
            report["healthy"] = (await ex.run("print(6 * 7)")).stdout
            report["metrics"] = ex.metrics()
        # Without namespaces: seccomp, Landlock and a process limit counted against the user's.
        async with CodeExecutor(num_workers=2, timeout_s=2, preload=("math",), max_processes=32,
                                use_namespaces=False) as ex:
            report["fallback_protections"] = ex.protections()
            for name in ("ok", "network", "write_tmp", "fork_bomb", "memory"):
                result = await ex.run(CHECKS[name], timeout_s=1.0)
                report["fallback_" + name] = [result.status, result.stdout]
        print(json.dumps(report))

    asyncio.run(main())
""")


def _python_usable_by(uid: int) -> Optional[str]:
    """An interpreter (>= 3.10) that `uid` can run, and that can start another copy of itself."""
    import shutil
    import subprocess
    import sys

    candidates = [sys.executable, f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}",
                  "/usr/bin/python3"]
    probe = ("import os, subprocess, sys; assert sys.version_info >= (3, 10); "
             "subprocess.run([sys.executable, '-c', 'import r1ci_jax.executor'], check=True, "
             "env={'PYTHONPATH': os.environ['PYTHONPATH']})")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for python in dict.fromkeys(candidates):
        if not os.path.exists(python) or not shutil.which("setpriv"):
            continue
        done = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", python, "-c", probe],
                              env={"PYTHONPATH": root, "PATH": "/usr/bin:/bin"}, cwd="/", capture_output=True)
        if done.returncode == 0:
            return python
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_works_as_unprivileged_user() -> None:
    import json
    import subprocess

    python = _python_usable_by(65534)
    if python is None:
        pytest.skip("no Python interpreter here that user nobody can run")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c",
                           _AS_USER_SCRIPT], env={"PYTHONPATH": root, "PATH": "/usr/bin:/bin"}, cwd="/",
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    protections = report["protections"]
    assert report["uid"] == 65534
    assert report["ok"] == ["ok", "6\n"] and report["healthy"] == "42\n" and report["session"] == "10\n"
    assert report["network"][0] == "error" and protections["network_blocked"]
    assert report["loop"][0] == "timeout" and report["memory"][0] == "memory"
    assert report["fork_bomb"][0] in ("error", "timeout")
    assert report["kill_parent"][0] in ("ok", "crashed")
    assert report["metrics"]["workers_replaced"] == 0 and report["metrics"]["executor_failures"] == 0
    if protections["landlock_filesystem"]:
        assert report["write_tmp"][0] == "error"
    if protections["pid_namespace"]:
        assert report["identity"][1] == "1 65534\n"
    assert protections["unprivileged_uid"] and protections["capabilities_dropped"]
    fallback = report["fallback_protections"]
    assert not fallback["network_namespace"] and fallback["network_blocked"] and fallback["process_limit"]
    assert report["fallback_ok"] == ["ok", "6\n"] and report["fallback_network"][0] == "error"
    assert report["fallback_fork_bomb"][0] in ("error", "timeout") and report["fallback_memory"][0] == "memory"
    if fallback["landlock_filesystem"]:
        assert report["fallback_write_tmp"][0] == "error"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can switch to a fresh uid")
def test_root_runs_snippets_as_fresh_uids_when_python_is_world_readable() -> None:
    from r1ci_jax.executor import sandbox

    import sys
    system_python = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if not (os.path.exists(system_python) and sandbox.world_readable(system_python)):
        pytest.skip("no world-readable interpreter of this version")

    async def scenario() -> None:
        async with CodeExecutor(num_workers=2, timeout_s=2, preload=("math",), python=system_python,
                                max_processes=32) as ex:
            if not ex.protections()["unprivileged_uid"]:
                pytest.skip("this interpreter's library is not readable by other users")
            uids = [int((await ex.run("import os\nprint(os.getuid())")).stdout) for _ in range(2)]
            assert uids[0] != uids[1] and min(uids) >= 1_000_000
            assert (await ex.run("import json, decimal\nprint('lazy imports work')")).status == "ok"
            bomb = await ex.run("import os\nwhile True:\n    os.fork()", timeout_s=1)
            assert bomb.status in ("error", "timeout")
            assert (await ex.run("open('/etc/r1ci-escape', 'w')")).status == "error"
            await ex.run("y = 3", session="s")
            assert (await ex.run("print(y)", session="s")).stdout == "3\n"

    asyncio.run(scenario())
