"""CodeExecutor: a hostile suite (each snippet checked for its status AND for the pool still
answering a normal snippet afterwards), concurrency, sessions, timeouts, output capping.

One executor is shared by the module (started in a background event loop) so the suite stays
fast; tests that need other settings start their own.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import textwrap
import threading
import time
import uuid
from typing import Any, Optional

import pytest

from r1ci_jax.executor import CodeExecutor, ExecResult
from r1ci_jax.executor.result import CappedBuffer, cap_output, cut_at_char_boundary

CAP = 4096
TIMEOUT = 2.0
SECRET = "hunter2-" + uuid.uuid4().hex


class LoopThread:
    """An event loop in a thread, so sync tests can share one async executor."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coroutine: Any, timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class Pool:
    def __init__(self, loop: LoopThread, executor: CodeExecutor) -> None:
        self.loop, self.executor = loop, executor

    def run(self, code: str, **kwargs: Any) -> ExecResult:
        return self.loop.call(self.executor.run(textwrap.dedent(code), **kwargs))

    def assert_healthy(self) -> None:
        result = self.run("import numpy as np\nprint(int(np.arange(7).sum()) * 2)")
        assert (result.status, result.stdout) == ("ok", "42\n"), result


@pytest.fixture(scope="module")
def pool():
    os.environ["R1CI_TEST_SECRET"] = SECRET  # must not reach snippets
    loop = LoopThread()
    executor = CodeExecutor(num_workers=4, timeout_s=TIMEOUT, memory_mb=512, max_output_bytes=CAP,
                            preload=("math", "numpy"), max_file_mb=8, max_processes=64)
    loop.call(executor.start())
    yield Pool(loop, executor)
    loop.call(executor.close())
    loop.stop()
    del os.environ["R1CI_TEST_SECRET"]


def processes_named(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/comm") as handle:
                if handle.read().strip() == marker:
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


def assert_no_process_named(marker: str) -> None:
    # Runs are answered right after SIGKILL; the kernel may need a moment to finish the job.
    deadline = time.monotonic() + 5.0
    while processes_named(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_named(marker) == [], f"processes named {marker} outlived their run"


def name_self(marker: str) -> str:
    """Snippet lines that rename the current process (visible in /proc/PID/comm)."""
    return (f"import ctypes\nctypes.CDLL(None).prctl(15, ctypes.c_char_p({marker.encode()!r}), 0, 0, 0)\n")


# ---------------------------------------------------------------- hostile suite

HOSTILE = {
    # name: (code, allowed statuses, checks on the result or None)
    "infinite_loop": ("while True:\n    pass", {"timeout"}, None),
    "sleep_forever": ("import time\ntime.sleep(1000)", {"timeout"}, None),
    "regex_in_c": ("import re\nre.match(r'(a*)*b', 'a' * 40)", {"timeout"}, None),
    "non_daemon_thread_forever": ("import threading, time\nthreading.Thread(target=time.sleep, args=(1000,)).start()",
                                  {"timeout"}, None),
    "memory_bomb": ("x = bytearray(10 ** 11)", {"memory"}, lambda r: "MemoryError" in r.stderr),
    "memory_growth": ("chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 7))", {"memory"}, None),
    "numpy_memory_bomb": ("import numpy as np\nnp.ones((10 ** 6, 10 ** 5))", {"memory"}, None),
    "output_100mb": ("import sys\nsys.stdout.write('x' * 100_000_000)", {"ok"},
                     lambda r: r.truncated and r.stdout == "x" * CAP),
    "print_forever": ("while True:\n    print('spam' * 100)", {"timeout"},
                      lambda r: r.truncated and len(r.stdout.encode()) <= CAP),
    "output_without_newline": ("print('abc', end='')", {"ok"}, lambda r: r.stdout == "abc"),
    "invalid_utf8": ("import sys\nsys.stdout.buffer.write(b'ok \\xff\\xfe \\xc3\\x28 end')", {"ok"},
                     lambda r: r.stdout.startswith("ok \ufffd") and r.stdout.endswith(" end") and not r.truncated),
    "raw_fd_write": ("import os\nos.write(1, b'direct\\n')\nos.write(2, b'\\x80err\\n')", {"ok"},
                     lambda r: r.stdout == "direct\n" and r.stderr == "\ufffderr\n"),
    "huge_integer_print": ("print(10 ** 5000)", {"error"}, lambda r: "limit" in r.stderr),
    "huge_integer_compute": ("print(len(str(2 ** 10000)))", {"ok"}, lambda r: r.stdout == "3011\n"),
    "write_outside_tmp": ("open('/tmp/r1ci-escape-{token}', 'w').write('x')", {"error"},
                          lambda r: "PermissionError" in r.stderr),
    "write_etc": ("open('/etc/r1ci-escape-{token}', 'w').write('x')", {"error"}, None),
    "delete_system_file": ("import os\nos.remove('/etc/hostname')", {"error"}, None),
    "read_shadow": ("print(open('/etc/shadow').read())", {"error"}, None),
    "environment_secrets": ("import os\nprint(sorted(os.environ))\nprint(os.environ.get('R1CI_TEST_SECRET'))",
                            {"ok"}, lambda r: SECRET not in r.stdout and "None" in r.stdout),
    "environment_of_parent": ("import os\nprint(open(f'/proc/{{os.getppid()}}/environ').read())", {"error"}, None),
    "socket_outside": ("import socket\nsocket.create_connection(('8.8.8.8', 53), timeout=1)", {"error"}, None),
    "dns_lookup": ("import socket\nsocket.getaddrinfo('example.com', 80)", {"error"}, None),
    "sys_exit_3": ("import sys\nsys.exit(3)", {"error"}, lambda r: r.exit_code == 3),
    "sys_exit_0": ("import sys\nprint('bye')\nsys.exit(0)", {"ok"}, lambda r: r.stdout == "bye\n"),
    "sys_exit_message": ("import sys\nsys.exit('fatal: nope')", {"error"},
                         lambda r: r.exit_code == 1 and "fatal: nope" in r.stderr),
    "os_exit": ("import os\nos._exit(7)", {"error"}, lambda r: r.exit_code == 7),
    "segfault": ("import ctypes\nctypes.string_at(0)", {"crashed"}, lambda r: r.exit_code == -signal.SIGSEGV),
    "abort": ("import os\nos.abort()", {"crashed"}, None),
    "input": ("input('name? ')", {"error"}, lambda r: "EOFError" in r.stderr),
    "stdin_is_empty": ("import sys\nprint(repr(sys.stdin.read()))", {"ok"}, lambda r: r.stdout == "''\n"),
    "some_threads": ("import threading\nout = []\nts = [threading.Thread(target=out.append, args=(i,)) "
                     "for i in range(30)]\n[t.start() for t in ts]\n[t.join() for t in ts]\nprint(len(out))",
                     {"ok"}, lambda r: r.stdout == "30\n"),
    "thread_bomb": ("import threading, time\nfor _ in range(100_000):\n"
                    "    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()",
                    {"error", "memory"}, lambda r: "thread" in r.stderr or "Memory" in r.stderr),
    "recursion_limit": ("def f(n):\n    return f(n + 1)\nf(0)", {"error"}, lambda r: "RecursionError" in r.stderr),
    "keyboard_interrupt": ("raise KeyboardInterrupt", {"error"}, lambda r: "KeyboardInterrupt" in r.stderr),
    "sigint_to_self": ("import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(5)", {"error"},
                       lambda r: "KeyboardInterrupt" in r.stderr),
    "kill_parent": ("import os\nos.kill(os.getppid(), 9)\nprint('still here')", {"ok", "crashed", "error"}, None),
    "kill_everything": ("import os\nos.kill(-1, 9)\nprint('alone')", {"ok", "crashed", "error"}, None),
    "kill_test_runner": ("import os, signal\nos.kill({runner_pid}, signal.SIGTERM)", {"error"}, None),
    "chdir_away": ("import os\nos.chdir('/')\nprint(os.getcwd())", {"ok"}, lambda r: r.stdout == "/\n"),
    "too_many_files": ("fs = [open('/dev/null') for _ in range(100_000)]", {"error"},
                       lambda r: "Too many open files" in r.stderr),
    "big_file": ("open('big.bin', 'wb').write(b'0' * (20 * 1024 * 1024))", {"error"},
                 lambda r: "File too large" in r.stderr),
    "raise_rlimit": ("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))", {"error"}, None),
    "syntax_error": ("def f(:\n    pass", {"error"}, lambda r: "SyntaxError" in r.stderr),
    "null_byte_in_code": ("print(1)\x00", {"error"}, None),
    "close_stdout": ("import os\nos.close(1)\nos.close(2)\nraise ValueError('unseen')", {"error"}, None),
    "replace_excepthook": ("import sys\nsys.excepthook = None\n1 / 0", {"error"},
                           lambda r: "ZeroDivisionError" in r.stderr),
    "mount_attempt": ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                      "assert libc.mount(b'none', b'/tmp', b'tmpfs', 0, None) == 0, ctypes.get_errno()",
                      {"error"}, None),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_snippet(pool: Pool, name: str) -> None:
    code, statuses, check = HOSTILE[name]
    code = code.format(token=uuid.uuid4().hex, runner_pid=os.getpid())
    before = pool.executor.metrics()
    # Short limits where a timeout is the point; room for slow-but-finite work (under load) elsewhere.
    result = pool.run(code, timeout_s=1.0 if statuses == {"timeout"} else 5.0)
    assert result.status in statuses, result
    assert not result.executor_failure, result
    if check is not None:
        assert check(result), result
    assert len(result.stdout.encode()) <= CAP and len(result.stderr.encode()) <= CAP
    pool.assert_healthy()
    after = pool.executor.metrics()
    assert after["workers_replaced"] == before["workers_replaced"], "a snippet killed its worker"
    assert after["workers_alive"] == pool.executor.num_servers


def test_hostile_suite_is_large_enough() -> None:
    assert len(HOSTILE) >= 30


def test_writes_outside_leave_no_file(pool: Pool, tmp_path: Any) -> None:
    target = tmp_path / "victim.txt"
    target.write_text("precious")
    result = pool.run(f"import os\nos.remove({str(target)!r})")
    assert result.status == "error"
    result = pool.run(f"open({str(target)!r}, 'w').write('overwritten')")
    assert result.status == "error"
    assert target.read_text() == "precious"
    escape = f"/tmp/r1ci-escape-{uuid.uuid4().hex}"
    assert pool.run(f"open({escape!r}, 'w').write('x')").status == "error"
    assert not os.path.exists(escape)
    pool.assert_healthy()


def test_reads_outside_system_dirs_are_denied(pool: Pool, tmp_path: Any) -> None:
    if not pool.executor.protections()["landlock_filesystem"]:
        pytest.skip("Landlock unavailable on this kernel")
    secret = tmp_path / "credentials.json"
    secret.write_text(SECRET)
    result = pool.run(f"print(open({str(secret)!r}).read())")
    assert result.status == "error" and SECRET not in result.stdout
    assert "PermissionError" in result.stderr
    # Nor the project's own tree (configs, credentials in it), though the server imports from it.
    repo_file = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")
    assert pool.run(f"print(len(open({repo_file!r}).read()))").status == "error"
    assert pool.run("import numpy\nprint(numpy.__version__)").status == "ok"


def test_socket_to_localhost_never_connects(pool: Pool) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        result = pool.run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)")
        assert result.status == "error", result
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()
    pool.assert_healthy()


def test_fork_bomb_is_contained(pool: Pool) -> None:
    marker = "r1ci-bomb-" + uuid.uuid4().hex[:4]
    result = pool.run(name_self(marker) + "import os\nwhile True:\n    os.fork()", timeout_s=1.0)
    assert result.status in ("error", "timeout"), result
    assert_no_process_named(marker)
    pool.assert_healthy()


def test_sigterm_ignoring_child_is_killed_on_timeout(pool: Pool) -> None:
    marker = "r1ci-stub-" + uuid.uuid4().hex[:4]
    code = name_self(marker) + textwrap.dedent("""
        import os, signal, time
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(60)
        time.sleep(60)
    """)
    result = pool.run(code, timeout_s=1.0)
    assert result.status == "timeout"
    assert_no_process_named(marker)
    pool.assert_healthy()


@pytest.mark.parametrize("parent_waits", [False, True])
def test_daemon_child_does_not_outlive_its_run(pool: Pool, parent_waits: bool) -> None:
    marker = "r1ci-dmn-" + uuid.uuid4().hex[:4]
    code = textwrap.dedent(f"""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                {name_self(marker).replace(chr(10), chr(10) + '                ')}
                time.sleep(60)
            os._exit(0)
        print('parent done')
        if {parent_waits}:
            time.sleep(60)
    """)
    result = pool.run(code, timeout_s=1.0)
    assert result.status == ("timeout" if parent_waits else "ok"), result
    assert_no_process_named(marker)
    pool.assert_healthy()


def test_each_run_gets_a_fresh_working_directory(pool: Pool) -> None:
    first = pool.run("import os\nopen('left.txt', 'w').write('x')\nprint(os.getcwd())")
    second = pool.run("import os\nprint(os.getcwd(), os.path.exists('left.txt'), os.listdir('.'))")
    assert first.status == second.status == "ok"
    assert first.stdout.strip() != second.stdout.split()[0]
    assert second.stdout.split()[1] == "False"
    assert not os.path.exists(first.stdout.strip()), "work dir not removed after the run"


def test_state_does_not_leak_between_runs(pool: Pool) -> None:
    assert pool.run("import math\nmath.pi = 3\nleak = 1").status == "ok"
    result = pool.run("import math\nprint(math.pi, 'leak' in globals())")
    assert result.stdout == f"{3.141592653589793} False\n"


def test_only_standard_fds_are_open(pool: Pool) -> None:
    result = pool.run("import os\nprint(sorted(int(fd) for fd in os.listdir('/proc/self/fd')))")
    assert result.status == "ok"
    # 0-2, the report pipe, and the descriptor listdir itself opened.
    assert len(eval(result.stdout)) <= 5, result.stdout


def test_snippet_sees_only_its_own_processes(pool: Pool) -> None:
    if not pool.executor.protections()["private_proc"]:
        pytest.skip("no private /proc here")
    result = pool.run("import os\nprint([p for p in os.listdir('/proc') if p.isdigit()], os.getpid())")
    assert result.stdout == "['1'] 1\n"


def test_multiprocessing_works_inside(pool: Pool) -> None:
    code = """
        from multiprocessing import Pool
        def square(x):
            return x * x
        with Pool(2) as workers:
            print(workers.map(square, range(5)))
    """
    result = pool.run(code, timeout_s=10)
    assert (result.status, result.stdout) == ("ok", "[0, 1, 4, 9, 16]\n"), result


def test_traceback_names_the_snippet_line(pool: Pool) -> None:
    result = pool.run("x = 1\ny = x / 0")
    assert result.status == "error" and result.exit_code == 1
    assert 'File "<snippet>", line 2' in result.stderr and "y = x / 0" in result.stderr
    assert "child.py" not in result.stderr


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


# ---------------------------------------------------------------- output capping (pure)


def test_cut_never_splits_a_character() -> None:
    text = "aé€😀" * 50
    data = text.encode()
    for limit in range(0, 60):
        cut = cut_at_char_boundary(data, limit)
        assert len(cut) <= limit
        assert text.startswith(cut.decode("utf-8"))  # decodes strictly: no partial character
        assert limit - len(cut) < 4


def test_cap_output_marks_truncation_and_replaces_invalid_bytes() -> None:
    assert cap_output(b"hello", 10) == ("hello", False)
    assert cap_output(b"hello world", 5) == ("hello", True)
    assert cap_output("ééé".encode(), 5) == ("éé", True)
    text, truncated = cap_output(b"\xff\xfe\xfd", 10)
    assert text == "\ufffd" * 3 and not truncated
    text, truncated = cap_output(b"\xff" * 10, 10)  # 10 raw bytes, but 30 once replaced
    assert len(text.encode()) <= 10 and truncated
    assert cap_output(b"abc", 3, already_truncated=True) == ("abc", True)


def test_capped_buffer_keeps_bounded_memory() -> None:
    buffer = CappedBuffer(100)
    for _ in range(10_000):
        buffer.append(b"\xe2\x82\xac" * 1000)  # 3 MB of euro signs in total
    assert sum(len(chunk) for chunk in buffer._chunks) <= 103
    text, truncated = buffer.text()
    assert truncated and text == "€" * 33 and buffer.total_bytes == 30_000_000


def test_large_unicode_output_is_cut_on_a_boundary(pool: Pool) -> None:
    result = pool.run("print('é' * 10000)")
    assert result.status == "ok" and result.truncated
    assert result.stdout == "é" * (CAP // 2)


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
