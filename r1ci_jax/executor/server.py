"""The zygote: imports the preload modules once, then forks a sandboxed child per snippet,
so a snippet costs a fork, not an interpreter start. One thread, one select loop, many
concurrent runs; speaks length-prefixed JSON frames on stdin/stdout (see protocol.py).

    python -m r1ci_jax.executor.server '<config json>'

It enforces each run's deadline itself (kills the run's processes), caps what it keeps of
the output while draining the rest, and never lets a child return into this loop.
"""
from __future__ import annotations

import gc
import importlib
import json
import os
import random
import selectors
import signal
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from r1ci_jax.executor import cgroups as cgroups_mod
from r1ci_jax.executor import child, linux, sandbox
from r1ci_jax.executor.discovery import discover_plan
from r1ci_jax.executor.protocol import FrameDecoder, ProtocolError, encode_frame
from r1ci_jax.executor.result import CappedBuffer, classify
from r1ci_jax.executor.workdir import remove_tree

_READ_CHUNK = 65536
_REPORT_CAP = 65536  # report lines are tiny; anything bigger is garbage
# Fresh uids when root can drop to one: far above any real account's.
SANDBOX_UIDS = (2_000_000, 2_000_000_000)


@dataclass
class Run:
    request_id: int
    timeout_s: float
    started: float
    deadline: float
    stdout: CappedBuffer
    stderr: CappedBuffer
    # Written by the process that runs the snippet, so the snippet can forge it; it only
    # ever describes that snippet's own outcome. The wait status comes from the kernel.
    report: bytearray = field(default_factory=bytearray)
    pipes: dict[int, Callable[[bytes], None]] = field(default_factory=dict)
    pid: Optional[int] = None
    pidfd: Optional[int] = None
    workdir: Optional[str] = None
    sandbox_uid: int = 0
    session: Optional["Session"] = None
    timed_out: bool = False
    cancelled: bool = False
    killed: bool = False


@dataclass
class Session:
    session_id: str
    pid: int  # the session's init process
    pidfd: int
    control: socket.socket
    workdir: str
    sandbox_uid: int
    run: Optional[Run] = None


class Server:
    def __init__(self, config: dict[str, Any], plan: sandbox.Plan, in_fd: int, out_fd: int, base_dir: str,
                 cgroups: Optional[cgroups_mod.PidsCgroups] = None) -> None:
        self.limits = sandbox.Limits(**config["limits"])
        self.cgroups = cgroups if plan.pids_cgroup else None
        self.grace_s = float(config["grace_s"])
        self.plan = plan
        self.spawner = sandbox.Spawner(plan.pid_namespace)
        self.in_fd, self.out_fd, self.base_dir = in_fd, out_fd, base_dir
        self.selector = selectors.DefaultSelector()
        self.decoder = FrameDecoder()
        self.runs: dict[int, Run] = {}
        self.sessions: dict[str, Session] = {}
        self.stopping = False
        os.set_blocking(in_fd, False)
        self.selector.register(in_fd, selectors.EVENT_READ, self._on_request_bytes)

    # ------------------------------------------------------------------ loop

    def serve(self) -> None:
        while not self.stopping:
            deadlines = [run.deadline for run in self.runs.values() if not run.killed]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            for key, _ in self.selector.select(timeout):
                # An earlier callback in this batch may have closed (and reused) this fd.
                if self.selector.get_map().get(key.fd) is key:
                    key.data(key.fd)
            now = time.monotonic()
            for run in list(self.runs.values()):
                if not run.killed and now >= run.deadline:
                    run.timed_out = True
                    self._kill_run(run)
        self._shutdown()

    def send(self, message: dict[str, Any]) -> None:
        data = memoryview(encode_frame(message))
        while data:
            try:
                written = os.write(self.out_fd, data)
            except BlockingIOError:
                time.sleep(0.001)
                continue
            except BrokenPipeError:
                self.stopping = True
                return
            data = data[written:]

    def _on_request_bytes(self, fd: int) -> None:
        try:
            data = os.read(fd, 1 << 20)
        except BlockingIOError:
            return
        if not data:
            self.stopping = True
            return
        try:
            messages = self.decoder.feed(data)
        except ProtocolError as exc:
            print(f"[executor server] {exc}", file=sys.stderr)
            self.stopping = True
            return
        for message in messages:
            self._handle(message)

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "run":
            try:
                self._start(message)
            except Exception as exc:  # noqa: BLE001 - fork/pipe failures become a result, not a hang
                self.send(self._failure(int(message["id"]), f"could not start the snippet: {exc!r}", 0.0))
        elif kind == "close_session":
            session = self.sessions.get(str(message.get("session")))
            if session is not None:
                self._end_session(session, "the session was closed while this snippet ran")
        elif kind == "cancel":
            run = self.runs.get(int(message.get("id", -1)))
            if run is not None and not run.killed:
                run.cancelled = True
                self._kill_run(run)
        elif kind == "shutdown":
            self.stopping = True

    # ------------------------------------------------------------------ stateless runs

    def _context(self, workdir: str, sandbox_uid: int) -> child.ChildContext:
        """What a run's child needs; creates the run's pids cgroup (named after its work dir)."""
        cgroup = None
        if self.cgroups is not None:
            cgroup = self.cgroups.create(os.path.basename(workdir), self.limits.max_processes)
        return child.ChildContext(plan=self.plan, limits=self.limits, workdir=workdir,
                                  sandbox_uid=sandbox_uid, server_pid=os.getpid(), cgroup=cgroup)

    def _remove_workdir(self, workdir: str) -> None:
        """After a run or session: its work dir and its pids cgroup."""
        remove_tree(workdir)
        if self.cgroups is not None:
            self.cgroups.release(os.path.basename(workdir))

    def _new_sandbox_uid(self) -> int:
        return random.randrange(*SANDBOX_UIDS) if self.plan.drop_uid else os.geteuid()

    def _new_run(self, message: dict[str, Any]) -> Run:
        timeout_s = float(message["timeout_s"])
        now = time.monotonic()
        cap = self.limits.max_output_bytes
        return Run(request_id=int(message["id"]), timeout_s=timeout_s, started=now, deadline=now + timeout_s,
                   stdout=CappedBuffer(cap), stderr=CappedBuffer(cap), sandbox_uid=self._new_sandbox_uid())

    def _start(self, message: dict[str, Any]) -> None:
        session_id = message.get("session")
        if session_id is not None:
            self._start_in_session(str(session_id), message)
            return
        run = self._new_run(message)
        run.workdir = tempfile.mkdtemp(prefix="run-", dir=self.base_dir)
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        report_r, report_w = os.pipe()
        context = self._context(run.workdir, run.sandbox_uid)
        try:
            pid = self.spawner.fork()
            if pid == 0:
                child.run_stateless(context, str(message["code"]), run.timeout_s, stdout_w, stderr_w, report_w)
        except BaseException:
            for fd in (stdout_r, stderr_r, report_r):
                os.close(fd)
            self._remove_workdir(run.workdir)
            raise
        finally:
            for fd in (stdout_w, stderr_w, report_w):
                os.close(fd)
        run.pid, run.pidfd = pid, os.pidfd_open(pid)
        self._watch_output(run, stdout_r, run.stdout.append)
        self._watch_output(run, stderr_r, run.stderr.append)
        self._watch_output(run, report_r, self._report_sink(run.report))
        self.selector.register(run.pidfd, selectors.EVENT_READ, lambda _fd, run=run: self._finish(run))
        self.runs[run.request_id] = run

    @staticmethod
    def _report_sink(buffer: bytearray) -> Callable[[bytes], None]:
        def sink(data: bytes) -> None:
            if len(buffer) < _REPORT_CAP:
                buffer.extend(data[:_REPORT_CAP - len(buffer)])
        return sink

    def _watch_output(self, run: Run, fd: int, sink: Callable[[bytes], None]) -> None:
        os.set_blocking(fd, False)
        run.pipes[fd] = sink
        self.selector.register(fd, selectors.EVENT_READ, lambda fd, run=run: self._read_pipe(run, fd))

    def _read_pipe(self, run: Run, fd: int, max_reads: int = 1) -> None:
        for _ in range(max_reads):
            if fd not in run.pipes:
                return
            try:
                data = os.read(fd, _READ_CHUNK)
            except BlockingIOError:
                return
            if not data:
                self._close_pipe(run, fd)
                return
            run.pipes[fd](data)

    def _close_pipe(self, run: Run, fd: int) -> None:
        if run.pipes.pop(fd, None) is not None:
            self.selector.unregister(fd)
            os.close(fd)

    def _drain_and_close_pipes(self, run: Run) -> None:
        for fd in list(run.pipes):
            # Bounded: a writer that escaped every kill could otherwise keep us here.
            self._read_pipe(run, fd, max_reads=256)
            self._close_pipe(run, fd)

    def _kill_run(self, run: Run) -> None:
        """Deadline or cancel: kill, answer now with what was written so far, and reap later.
        Tearing down a namespace full of processes (a fork bomb) can take the kernel seconds;
        nobody should wait for that."""
        run.killed = True
        if run.session is not None:
            self._end_session(run.session, None)
            return
        self._kill_sandbox(run.pid, run.pidfd, run.sandbox_uid)
        self._drain_and_close_pipes(run)
        del self.runs[run.request_id]
        self.selector.modify(run.pidfd, selectors.EVENT_READ, lambda _fd, run=run: self._reap(run))
        duration = time.monotonic() - run.started
        if run.cancelled:
            self.send(self._failure(run.request_id, "the run was cancelled", duration))
        else:
            self._send_outcome(run, {"signal": signal.SIGKILL}, duration)

    def _reap(self, run: Run) -> dict[str, Any]:
        """The run's process exited: collect its status, clean up after it."""
        self.selector.unregister(run.pidfd)
        # Leftovers (when there is no PID namespace) go first: until it is reaped, the run's
        # process holds its pid, so its process group id cannot name anyone else.
        self._kill_sandbox(run.pid, None, run.sandbox_uid)
        outcome = child.wait_message(run.pid)
        os.close(run.pidfd)
        if run.workdir:
            self._remove_workdir(run.workdir)
        return outcome

    def _kill_sandbox(self, pid: Optional[int], pidfd: Optional[int], sandbox_uid: int) -> None:
        """SIGKILL a run's processes. With a PID namespace, killing its PID 1 kills all of it;
        without, its process group, and (root) everything running as its fresh uid."""
        if pidfd is not None:
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except OSError:
                pass
        if self.plan.pid_namespace or pid is None:
            return
        try:
            os.killpg(pid, signal.SIGKILL)  # it called setsid(), so its group id is its pid
        except OSError:
            pass
        if self.plan.drop_uid:
            self._kill_all_of_uid(sandbox_uid)

    def _kill_all_of_uid(self, uid: int) -> None:
        pid = os.fork()
        if pid == 0:
            try:
                os.setresuid(uid, uid, uid)
                os.kill(-1, signal.SIGKILL)  # as that uid: reaches exactly its processes
            finally:
                os._exit(0)
        os.waitpid(pid, 0)

    def _finish(self, run: Run) -> None:
        """The run's process exited by itself: collect everything and answer."""
        outcome = self._reap(run)
        self._drain_and_close_pipes(run)
        del self.runs[run.request_id]
        for message in child.json_lines(bytes(run.report)):
            outcome.update({key: message[key] for key in ("exception", "memory_error") if key in message})
            # Only a real setup failure also exits with that code (a snippet could print the line).
            if "setup_failed" in message and outcome.get("exit_code") == child.SETUP_FAILED_EXIT:
                outcome["setup_failed"], outcome["error"] = message["setup_failed"], message.get("error")
        duration = time.monotonic() - run.started
        if "setup_failed" in outcome:
            self.send(self._failure(run.request_id, f"sandbox setup failed at step {outcome['setup_failed']}: "
                                    f"{outcome.get('error')}", duration))
        else:
            self._send_outcome(run, outcome, duration)

    def _send_outcome(self, run: Run, outcome: dict[str, Any], duration: float) -> None:
        status = classify(outcome, run.timed_out, run.timeout_s + 1, self.limits.memory_mb)
        exit_code = -outcome["signal"] if "signal" in outcome else outcome.get("exit_code")
        self.send(self._result(run, status, duration, exit_code=exit_code))

    def _result(self, run: Run, status: str, duration: float, exit_code: Optional[int], note: str = "",
                session_lost: bool = False) -> dict[str, Any]:
        stdout, stdout_cut = run.stdout.text()
        stderr, stderr_cut = run.stderr.text()
        if note:
            stderr = f"{stderr}{'' if not stderr or stderr.endswith(chr(10)) else chr(10)}[executor] {note}\n"
        return {"type": "result", "id": run.request_id, "status": status, "stdout": stdout, "stderr": stderr,
                "truncated": stdout_cut or stderr_cut, "duration_s": duration, "exit_code": exit_code,
                "executor_failure": False, "session_lost": session_lost}

    @staticmethod
    def _failure(request_id: int, reason: str, duration: float, session_lost: bool = False) -> dict[str, Any]:
        return {"type": "result", "id": request_id, "status": "crashed", "stdout": "",
                "stderr": f"[executor] {reason}\n", "truncated": False, "duration_s": duration,
                "exit_code": None, "executor_failure": True, "session_lost": session_lost}

    # ------------------------------------------------------------------ sessions

    def _start_in_session(self, session_id: str, message: dict[str, Any]) -> None:
        session = self.sessions.get(session_id)
        if session is None:
            if not message.get("new_session"):
                self.send(self._failure(int(message["id"]), f"session {session_id!r} was lost (its processes "
                                        "ended or its worker restarted); its variables are gone. The next "
                                        "snippet starts a fresh session.", 0.0, session_lost=True))
                return
            session = self._open_session(session_id)
        if session.run is not None:
            self.send(self._failure(int(message["id"]), f"session {session_id!r} is already running a snippet", 0.0))
            return
        run = self._new_run(message)
        # The holder enforces the timeout itself; this later deadline only catches a broken holder.
        run.deadline += self.grace_s
        run.session, session.run = session, run
        code_fd = os.memfd_create("snippet", os.MFD_CLOEXEC)
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        try:
            os.write(code_fd, str(message["code"]).encode("utf-8", "surrogatepass"))
            socket.send_fds(session.control, [json.dumps({"timeout_s": run.timeout_s}).encode()],
                            [code_fd, stdout_w, stderr_w])
        except OSError:
            pass  # the session is dying; its pidfd or control EOF will finish this run
        finally:
            for fd in (code_fd, stdout_w, stderr_w):
                os.close(fd)
        self._watch_output(run, stdout_r, run.stdout.append)
        self._watch_output(run, stderr_r, run.stderr.append)
        self.runs[run.request_id] = run

    def _open_session(self, session_id: str) -> Session:
        workdir = tempfile.mkdtemp(prefix="session-", dir=self.base_dir)
        sandbox_uid = self._new_sandbox_uid()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        context = self._context(workdir, sandbox_uid)
        try:
            pid = self.spawner.fork()
            if pid == 0:
                child.run_session_init(context, theirs.fileno())
        except BaseException:
            ours.close()
            self._remove_workdir(workdir)
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        session = Session(session_id=session_id, pid=pid, pidfd=os.pidfd_open(pid), control=ours,
                          workdir=workdir, sandbox_uid=sandbox_uid)
        self.selector.register(session.pidfd, selectors.EVENT_READ,
                               lambda _fd, s=session: self._end_session(s, "the session's processes ended"))
        self.selector.register(ours.fileno(), selectors.EVENT_READ, lambda _fd, s=session: self._on_control(s))
        self.sessions[session_id] = session
        return session

    def _on_control(self, session: Session) -> None:
        try:
            data = session.control.recv(_READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._end_session(session, "the session's processes ended")
            return
        try:
            message = json.loads(data)
            event = message["event"]
        except (ValueError, KeyError, TypeError):
            self._end_session(session, "the session sent an unreadable message")
            return
        if event == "setup_failed":
            self._end_session(session, f"sandbox setup failed at step {message.get('step')}: {message.get('error')}",
                              executor_failure=True)
        elif event in ("done", "ended") and session.run is not None:
            run, session.run = session.run, None
            run.timed_out = bool(message.get("timed_out"))
            self._drain_and_close_pipes(run)
            del self.runs[run.request_id]
            self._send_outcome(run, message, time.monotonic() - run.started)

    def _end_session(self, session: Session, reason: Optional[str], executor_failure: bool = False) -> None:
        """Kill the session's processes and forget it; a snippet it was running gets an answer."""
        if self.sessions.get(session.session_id) is not session:
            return
        del self.sessions[session.session_id]
        self._kill_sandbox(session.pid, session.pidfd, session.sandbox_uid)
        self.selector.unregister(session.control.fileno())
        session.control.close()
        self.selector.modify(session.pidfd, selectors.EVENT_READ,
                             lambda _fd, s=session: self._reap_session(s))
        run, session.run = session.run, None
        if run is None:
            return
        self._drain_and_close_pipes(run)
        self.runs.pop(run.request_id, None)
        duration = time.monotonic() - run.started
        if run.cancelled:
            self.send(self._failure(run.request_id, "the run was cancelled", duration, session_lost=True))
        elif run.timed_out:
            self.send(self._result(run, "timeout", duration, exit_code=None, session_lost=True,
                                   note="the session did not stop in time and was reset; its variables are gone"))
        elif executor_failure or reason is None:
            self.send(self._failure(run.request_id, reason or "session ended", duration, session_lost=True))
        else:
            self.send(self._result(run, "crashed", duration, exit_code=None, session_lost=True,
                                   note=f"{reason}; the session's variables are gone"))

    def _reap_session(self, session: Session) -> None:
        self.selector.unregister(session.pidfd)
        os.close(session.pidfd)
        try:
            os.waitpid(session.pid, 0)
        except ChildProcessError:
            pass
        self._remove_workdir(session.workdir)

    # ------------------------------------------------------------------ shutdown

    def _shutdown(self) -> None:
        """Kill everything; do not wait for the kernel to finish (our children die with us)."""
        for session in list(self.sessions.values()):
            self._end_session(session, "the executor shut down")
        for run in list(self.runs.values()):
            if run.session is None:
                run.cancelled = True
                self._kill_run(run)
        self.spawner.close()
        if self.cgroups is not None:
            self.cgroups.close()


def main() -> None:
    config = json.loads(sys.argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent; it shuts us down
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(config["parent_pid"]):
        os._exit(1)
    server_userns = (os.geteuid() != 0 and bool(config["use_namespaces"])
                     and sandbox.enter_server_namespace())
    # Protocol fds move out of the way: a forked child must never read requests or write frames.
    in_fd, out_fd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    preload_errors = {}
    for name in config["preload"]:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises
            preload_errors[name] = f"{type(exc).__name__}: {exc}"
    # Neither the caller's directory nor our source tree should be importable (or readable) by snippets.
    hidden = {os.getcwd(), "", *config["hide_paths"]}
    sys.path[:] = [entry for entry in sys.path if entry not in hidden]
    gc.collect()
    gc.freeze()  # children then do not touch (copy) the preloaded objects' pages when collecting
    base_dir = tempfile.mkdtemp(prefix="r1ci-exec-")
    os.chmod(base_dir, 0o711)  # a fresh sandbox uid must reach its own work dir
    cgroups = cgroups_mod.open_pids_cgroups() if not server_userns else None
    try:
        plan = discover_plan(config, base_dir, server_userns, cgroups)
    except Exception as exc:  # noqa: BLE001
        os.write(out_fd, encode_frame({"type": "hello", "error": str(exc), "preload_errors": preload_errors}))
        remove_tree(base_dir)
        if cgroups is not None:
            cgroups.close()
        return
    if cgroups is not None and not plan.pids_cgroup:
        cgroups.close()
    server = Server(config, plan, in_fd, out_fd, base_dir, cgroups)
    server.send({"type": "hello", "pid": os.getpid(), "base_dir": base_dir,
                 "protections": sandbox.protections(plan),
                 "details": sandbox.describe(plan, server.limits), "preload_errors": preload_errors,
                 "readable_paths": list(plan.readable_paths)})
    try:
        server.serve()
    except Exception:  # noqa: BLE001 - log, then exit: the parent replaces a dead server
        traceback.print_exc()
        server._shutdown()
    finally:
        remove_tree(base_dir)


if __name__ == "__main__":
    main()
