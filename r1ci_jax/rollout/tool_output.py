"""Turn an executor result into the tool message the model reads, capped in tokens."""
from __future__ import annotations

from typing import Any

from r1ci_jax.tasks.protocol import format_execution_results

TRUNCATION_NOTE = "\n[output truncated]"

_STATUS_NOTES = {
    "timeout": "Error: the code ran past the time limit of {timeout:g} s and was stopped.",
    "memory": "Error: the code ran out of memory.",
    "crashed": "Error: the code crashed ({detail}).",
}


def result_text(result: Any, timeout_s: float) -> str:
    """The body shown to the model: stdout, plus the traceback or a status note on failure.

    result: an `executor.ExecResult`. Failures are stated in words so the model can
    react; they are never silent (the rollout also counts every status).
    """
    parts = [result.stdout.rstrip("\n")] if result.stdout.strip() else []
    if result.status == "error":
        parts.append(result.stderr.rstrip("\n") or "Error: the code exited with an error.")
    elif result.status in _STATUS_NOTES:
        detail = (result.stderr.strip().splitlines() or ["no details"])[-1]
        parts.append(_STATUS_NOTES[result.status].format(timeout=timeout_s, detail=detail))
    if result.truncated:
        parts.append(TRUNCATION_NOTE.strip())
    return "\n".join(parts) if parts else "(no output)"


def tool_message_ids(tokenizer: Any, body: str, max_tokens: int, prefix: str = "") -> list[int]:
    """Token ids of `prefix` + the formatted results block, at most `max_tokens` long.

    A long output is cut in token space (so the cap is exact) and marked; the closing
    newline of the block is kept so the model sees where the output ends.
    """
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)
    ids = encode(prefix + format_execution_results(body))
    if len(ids) <= max_tokens:
        return ids
    tail = encode(TRUNCATION_NOTE + "\n")
    if len(tail) >= max_tokens:
        raise ValueError(f"max_tool_tokens={max_tokens} cannot even hold the truncation note ({len(tail)} tokens)")
    return ids[:max_tokens - len(tail)] + tail
