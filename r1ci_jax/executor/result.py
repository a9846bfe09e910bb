"""What a snippet run returns, and how raw output bytes become capped text."""
from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any, Literal, Optional

Status = Literal["ok", "error", "timeout", "memory", "crashed"]
STATUSES: tuple[Status, ...] = ("ok", "error", "timeout", "memory", "crashed")
# Deaths that hitting RLIMIT_AS can cause in C code (failed stack growth, abort on bad_alloc).
_MEMORY_SIGNALS = {signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS}


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one snippet.

    status: "ok" (exit 0), "error" (uncaught exception or non-zero exit; stderr holds the
    traceback), "timeout" (wall clock or CPU limit), "memory" (MemoryError or killed near
    the memory limit), "crashed" (killed by a signal, or the executor itself failed: then
    stderr starts with "[executor]" and `executor_failure` is True).
    exit_code: the process exit code, or minus the signal number; None when unknown.
    """

    status: Status
    stdout: str
    stderr: str
    truncated: bool
    duration_s: float
    exit_code: Optional[int] = None
    executor_failure: bool = False


def _utf8_sequence_length(lead_byte: int) -> int:
    if lead_byte < 0x80:
        return 1
    if lead_byte >> 5 == 0b110:
        return 2
    if lead_byte >> 4 == 0b1110:
        return 3
    if lead_byte >> 3 == 0b11110:
        return 4
    return 1  # continuation or invalid byte: stands alone (decoded as U+FFFD)


def cut_at_char_boundary(data: bytes, limit: int) -> bytes:
    """The longest prefix of `data` of at most `limit` bytes that does not end inside a
    UTF-8 sequence that would have been complete in `data`."""
    if len(data) <= limit:
        return data
    start = limit
    # A sequence is at most 4 bytes, so its lead byte is at most 3 bytes before the cut.
    for back in range(1, 4):
        index = limit - back
        if index < 0:
            break
        byte = data[index]
        if byte & 0xC0 != 0x80:  # a lead (or ASCII) byte
            if index + _utf8_sequence_length(byte) > limit:
                start = index
            break
    return data[:start]


def cap_output(data: bytes, limit: int, already_truncated: bool = False) -> tuple[str, bool]:
    """Decode process output to text of at most `limit` UTF-8 bytes.

    Invalid bytes become U+FFFD (never an exception); the cut never splits a character.
    Returns (text, truncated) where truncated is True if anything was dropped.
    """
    truncated = already_truncated or len(data) > limit
    text = cut_at_char_boundary(data, limit).decode("utf-8", errors="replace")
    encoded = text.encode("utf-8")
    if len(encoded) > limit:
        # Each invalid byte became a 3-byte U+FFFD, so the text can outgrow the raw cap.
        text = cut_at_char_boundary(encoded, limit).decode("utf-8")
        truncated = True
    return text, truncated


class CappedBuffer:
    """Keeps the first `limit` bytes of a stream (plus 3 so a cut character can be told
    from a complete one) and counts, but discards, the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._keep = limit + 3
        self._chunks: list[bytes] = []
        self._kept = 0
        self.total_bytes = 0

    def append(self, chunk: bytes) -> None:
        self.total_bytes += len(chunk)
        room = self._keep - self._kept
        if room > 0:
            piece = chunk[:room]
            self._chunks.append(piece)
            self._kept += len(piece)

    def text(self) -> tuple[str, bool]:
        data = b"".join(self._chunks)
        return cap_output(data, self.limit, already_truncated=self.total_bytes > len(data))


def classify(outcome: dict[str, Any], timed_out: bool, cpu_limit_s: float, memory_mb: int) -> str:
    """Status from how the snippet ended. `outcome` merges the snippet's own report
    (exception, memory_error) with its wait status (exit_code or signal, maxrss_kb, cpu_s)."""
    if timed_out:
        return "timeout"
    if outcome.get("memory_error"):
        return "memory"
    term_signal = outcome.get("signal")
    if term_signal is not None:
        if term_signal == signal.SIGXCPU or outcome.get("cpu_s", 0.0) >= cpu_limit_s:
            return "timeout"
        if term_signal in _MEMORY_SIGNALS and outcome.get("maxrss_kb", 0) >= 0.9 * memory_mb * 1024:
            return "memory"
        return "crashed"
    return "ok" if outcome.get("exit_code") == 0 else "error"
