"""CodeExecutor hostile suite: each snippet checked for its status AND for the pool still
answering a normal snippet afterwards; isolation checks; output capping."""
from __future__ import annotations

import os
import signal
import socket
import textwrap
import uuid
from typing import Any

import pytest

from executor_support import (CAP, SECRET, Pool, assert_no_process_named, name_self, pool_resource)
from r1ci_jax.executor.result import CappedBuffer, cap_output, cut_at_char_boundary


@pytest.fixture(scope="module")
def pool():
    yield from pool_resource()


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


def test_process_cap_binds(pool: Pool) -> None:
    """The pool's cap (64 processes) stops forking even when the snippet runs as uid 0
    (RLIMIT_NPROC alone exempts global root; a pids cgroup does not)."""
    code = textwrap.dedent("""
        import os, time
        started = 0
        try:
            while started < 1000:
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
                started += 1
        except OSError as exc:
            print(started, exc.errno)
    """)
    result = pool.run(code, timeout_s=5.0)
    assert result.status == "ok", result
    started, errno_value = map(int, result.stdout.split())
    assert 0 < started < 64 and errno_value == 11, result  # EAGAIN at the cap
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


def test_process_limit_is_reported_honestly() -> None:
    """RLIMIT_NPROC never binds global uid 0, user namespace or not: only a pids cgroup or a
    fresh uid makes the cap real for root, and `protections()` must say so."""
    import dataclasses

    from r1ci_jax.executor import sandbox
    base = sandbox.strongest_plan(True, False, (), server_userns=False)
    root_userns = dataclasses.replace(base, is_root=True, user_namespace=True, drop_uid=False, pids_cgroup=False)
    assert root_userns.process_limit == "none" and not sandbox.protections(root_userns)["process_limit"]
    assert dataclasses.replace(root_userns, pids_cgroup=True).process_limit == "cgroup"
    assert dataclasses.replace(root_userns, user_namespace=False, drop_uid=True).process_limit == "uid"
    user = dataclasses.replace(root_userns, is_root=False)
    assert user.process_limit == "namespace" and sandbox.protections(user)["process_limit"]
    assert sandbox.weaken(dataclasses.replace(root_userns, pids_cgroup=True), "pids_cgroup") == root_userns
