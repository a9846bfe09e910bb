"""Code that runs in forked children of the server. Nothing here may return into the server's
loop: every entry point ends in os._exit.

Stateless run:  server -> runner (PID 1 of its own namespaces: sandboxes itself, runs the code).
Session:        server -> init (PID 1: sandboxes itself, then only reaps) -> holder -> snippet...
A session's state is the memory of its *holder*. Each snippet runs in a fork of the holder;
if the snippet finishes (ok or exception) its process becomes the new holder and the old one
exits, so variables carry over; if it is killed (timeout, crash, os._exit) the old holder
stays, so the session rolls back to its state before that snippet.
"""
from __future__ import annotations

import builtins
import io
import json
import linecache
import math
import os
import resource
import selectors
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
import types
from dataclasses import dataclass
from typing import Any, NoReturn, Optional

from r1ci_jax.executor import linux, sandbox

SNIPPET_FILENAME = "<snippet>"
SETUP_FAILED_EXIT = 121
_REPORT_FD = 3


@dataclass(frozen=True)
class ChildContext:
    plan: sandbox.Plan
    limits: sandbox.Limits
    workdir: str
    sandbox_uid: int
    server_pid: int
    cgroup: Optional[str] = None  # the run's pids cgroup when the plan has one


def write_message(fd: int, message: dict[str, Any]) -> None:
    try:
        os.write(fd, (json.dumps(message) + "\n").encode())
    except OSError:
        pass  # the reader is gone; nothing useful to do


def json_lines(data: bytes) -> list[dict[str, Any]]:
    messages = []
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(message, dict):
            messages.append(message)
    return messages


def close_fds_except(keep: set[int]) -> None:
    start = 0
    for fd in sorted(keep) + [max(os.sysconf("SC_OPEN_MAX"), max(keep, default=0) + 1)]:
        if fd > start:
            os.closerange(start, fd)
        start = fd + 1


def _redirect(stdin_fd: Optional[int], stdout_fd: int, stderr_fd: int) -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull if stdin_fd is None else stdin_fd, 0)
    os.dup2(stdout_fd, 1)
    os.dup2(stderr_fd, 2)
    if devnull > 2:
        os.close(devnull)


def install_stdio() -> None:
    """Fresh text streams on fds 0-2, as a new interpreter would have (UTF-8, never failing
    on odd characters); the server's own stream objects must not be reused."""
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)),
                                  encoding="utf-8", errors="backslashreplace")
    sys.stderr = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)),
                                  encoding="utf-8", errors="backslashreplace", line_buffering=True)
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr


def fresh_main_module() -> types.ModuleType:
    """A clean __main__ like `python -c` gets; registered in sys.modules so pickling
    snippet-defined functions (multiprocessing) resolves them."""
    module = types.ModuleType("__main__")
    module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = module
    sys.argv = ["-c"]
    sys.path.insert(0, "")
    sys.dont_write_bytecode = True
    tempfile.tempdir = None  # re-read TMPDIR (the server may have cached its own)
    return module


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # noqa: BLE001 - a snippet may have closed or replaced the stream
            pass


def _exit_code(request: SystemExit) -> int:
    code = request.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except Exception:  # noqa: BLE001
        pass
    return 1


def _report_uncaught(exc: BaseException) -> None:
    """Print the traceback as the interpreter would, without this module's frame."""
    tb = exc.__traceback__
    if tb is not None and tb.tb_frame.f_code is run_snippet.__code__:
        tb = tb.tb_next
        exc.__traceback__ = tb  # the default hook prints the exception's own traceback
    try:
        if sys.excepthook is sys.__excepthook__:
            # The traceback module reads source lines through linecache (the C hook would not).
            traceback.print_exception(type(exc), exc, tb, file=sys.stderr)
        else:
            sys.excepthook(type(exc), exc, tb)
    except Exception:  # noqa: BLE001 - a snippet may have broken sys.excepthook or sys.stderr
        text = "".join(traceback.format_exception(type(exc), exc, tb))
        try:
            os.write(2, text.encode("utf-8", "backslashreplace"))
        except OSError:
            pass


def _join_threads() -> None:
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()


def run_snippet(code: str, module: types.ModuleType, join_threads: bool) -> tuple[int, Optional[str], bool]:
    """Execute `code` in `module` like a script. Returns (exit code, name of the uncaught
    exception or None, whether it was a MemoryError)."""
    linecache.cache[SNIPPET_FILENAME] = (len(code), None, code.splitlines(True), SNIPPET_FILENAME)
    exit_code, exception_name, memory_error = 0, None, False
    try:
        exec(compile(code, SNIPPET_FILENAME, "exec"), module.__dict__)
    except SystemExit as request:
        exit_code = _exit_code(request)
    except BaseException as exc:  # noqa: BLE001 - the snippet's failure is the result
        exception_name, memory_error = type(exc).__name__, isinstance(exc, MemoryError)
        _report_uncaught(exc)
        exit_code = 1
    if join_threads:
        try:
            _join_threads()
        except BaseException:  # noqa: BLE001
            pass
    _flush_stdio()
    return exit_code, exception_name, memory_error


def wait_message(pid: int) -> dict[str, Any]:
    """Reap `pid` and describe how it ended (exit code or signal, peak RSS, CPU seconds)."""
    _, wait_status, usage = os.wait4(pid, 0)
    message: dict[str, Any] = {"maxrss_kb": usage.ru_maxrss, "cpu_s": usage.ru_utime + usage.ru_stime}
    if os.WIFSIGNALED(wait_status):
        message["signal"] = os.WTERMSIG(wait_status)
    else:
        message["exit_code"] = os.waitstatus_to_exitcode(wait_status)
    return message


def _fail_setup(fd: int, error: BaseException) -> NoReturn:
    step = error.step if isinstance(error, sandbox.SetupError) else "internal"
    write_message(fd, {"setup_failed": step, "error": f"{type(error).__name__}: {error}"})
    os._exit(SETUP_FAILED_EXIT)


# ---------------------------------------------------------------- stateless run


def run_stateless(context: ChildContext, code: str, timeout_s: float, stdout_w: int, stderr_w: int,
                  report_w: int) -> NoReturn:
    """The forked runner of a stateless snippet. Its exit status (read by the server) is the
    snippet's; the report pipe adds what only the runner knows (a MemoryError, a failed setup)."""
    try:
        _redirect(None, stdout_w, stderr_w)
        os.dup2(report_w, _REPORT_FD)
        close_fds_except({0, 1, 2, _REPORT_FD})
        sandbox.enter_sandbox(context.plan, context.limits, context.workdir, context.sandbox_uid,
                              cpu_seconds=math.ceil(timeout_s) + 1, server_pid=context.server_pid,
                              cgroup=context.cgroup)
        install_stdio()
        module = fresh_main_module()
    except BaseException as exc:  # noqa: BLE001
        _fail_setup(_REPORT_FD, exc)
    exit_code = 1
    try:
        exit_code, exception_name, memory_error = run_snippet(code, module, join_threads=True)
        write_message(_REPORT_FD, {"exception": exception_name, "memory_error": memory_error})
    finally:
        os._exit(exit_code)


# ---------------------------------------------------------------- sessions


def run_session_init(context: ChildContext, control_fd: int) -> NoReturn:
    """PID 1 of a session: sandboxes itself (the holders inherit it), then only reaps."""
    try:
        control = socket.socket(fileno=control_fd)
    except BaseException:  # noqa: BLE001
        os._exit(SETUP_FAILED_EXIT)
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        _redirect(devnull, devnull, devnull)
        close_fds_except({0, 1, 2, control_fd})
        sandbox.enter_sandbox(context.plan, context.limits, context.workdir, context.sandbox_uid,
                              cpu_seconds=None, server_pid=context.server_pid, cgroup=context.cgroup)
        linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)  # orphans come here even without a PID namespace
        install_stdio()
        module = fresh_main_module()
    except BaseException as exc:  # noqa: BLE001
        write_control(control, {"event": "setup_failed", "step": getattr(exc, "step", "internal"),
                                "error": f"{type(exc).__name__}: {exc}"})
        os._exit(SETUP_FAILED_EXIT)
    session_group = os.getpgrp()
    try:
        if os.fork() == 0:
            _hold_session(control, module, session_group)
        control.close()
        while True:
            try:
                os.wait()
            except ChildProcessError:
                os._exit(0)
            except InterruptedError:
                continue
    finally:
        os._exit(0)


def write_control(control: socket.socket, message: dict[str, Any]) -> None:
    try:
        control.send(json.dumps(message).encode())
    except OSError:
        pass


def _hold_session(control: socket.socket, module: types.ModuleType, session_group: int) -> NoReturn:
    """The holder loop: wait for a snippet, run it in a fork, hand over or stay."""
    try:
        while True:
            try:
                payload, fds, _, _ = socket.recv_fds(control, 65536, 3)
            except OSError:
                os._exit(0)
            if not payload or len(fds) != 3:
                os._exit(0)  # the server closed the session (or spoke nonsense)
            request = json.loads(payload)
            code_fd, stdout_w, stderr_w = fds
            timeout_s = float(request["timeout_s"])
            baton_r, baton_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(baton_r)
                _run_session_snippet(control, module, session_group, timeout_s, code_fd, stdout_w, stderr_w,
                                     baton_w)
                continue  # this process is the holder now
            for fd in (code_fd, stdout_w, stderr_w, baton_w):
                os.close(fd)
            outcome = _watch_snippet(pid, baton_r, timeout_s)
            os.close(baton_r)
            if outcome is None:
                os._exit(0)  # the snippet's process took over
            write_control(control, outcome)
    finally:
        os._exit(0)


def _run_session_snippet(control: socket.socket, module: types.ModuleType, session_group: int, timeout_s: float,
                         code_fd: int, stdout_w: int, stderr_w: int, baton_w: int) -> None:
    """Runs one snippet; returns only if this process should become the holder."""
    try:
        os.setpgid(0, 0)
        os.lseek(code_fd, 0, os.SEEK_SET)
        with os.fdopen(code_fd, "rb") as handle:
            code = handle.read().decode("utf-8")
        _redirect(None, stdout_w, stderr_w)
        os.close(stdout_w)
        os.close(stderr_w)
        sandbox.set_cpu_limit(math.ceil(timeout_s) + 1)
        install_stdio()
    except BaseException as exc:  # noqa: BLE001
        os.write(2, f"[executor] snippet setup failed: {exc}\n".encode())
        os._exit(SETUP_FAILED_EXIT)
    exit_code, exception_name, memory_error = run_snippet(code, module, join_threads=False)
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        _redirect(devnull, devnull, devnull)
        os.close(devnull)
        install_stdio()
        sandbox.set_cpu_limit(resource.RLIM_INFINITY)
        try:
            # Leave the snippet's process group, then kill what it left running there.
            os.setpgid(0, session_group)
            os.killpg(os.getpid(), signal.SIGKILL)
        except OSError:
            pass
        write_control(control, {"event": "done", "exit_code": exit_code, "exception": exception_name,
                                "memory_error": memory_error})
        try:
            os.write(baton_w, b"1")
        except OSError:
            pass  # the old holder is gone (the snippet killed it): hold the session anyway
        os.close(baton_w)
    except BaseException:  # noqa: BLE001 - cannot hand over cleanly: die, the old holder stays
        os._exit(SETUP_FAILED_EXIT)


def _watch_snippet(pid: int, baton_r: int, timeout_s: float) -> Optional[dict[str, Any]]:
    """Wait for the snippet's process to take over (None) or to end (how it ended)."""
    pidfd = os.pidfd_open(pid)
    deadline = time.monotonic() + timeout_s
    timed_out = False
    with selectors.DefaultSelector() as selector:
        selector.register(baton_r, selectors.EVENT_READ)
        selector.register(pidfd, selectors.EVENT_READ)
        baton_open = True
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            ready = {key.fd for key, _ in selector.select(remaining)}
            if baton_open and baton_r in ready:
                if os.read(baton_r, 1):
                    os.close(pidfd)
                    return None
                selector.unregister(baton_r)
                baton_open = False
            if pidfd in ready:
                break
    for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            target()
        except OSError:
            pass
    os.close(pidfd)
    message = wait_message(pid)
    message.update(event="ended", timed_out=timed_out)
    return message
