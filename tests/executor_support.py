"""Shared pieces of the executor tests: one executor in a background event loop, process helpers."""
from __future__ import annotations

import asyncio
import os
import textwrap
import threading
import time
import uuid
from typing import Any


from r1ci_jax.executor import CodeExecutor, ExecResult

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


def pool_resource():
    """Yields a Pool over a started executor; used as each test module's `pool` fixture."""
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
