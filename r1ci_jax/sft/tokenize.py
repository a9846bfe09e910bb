"""Chat trajectories -> token ids and an assistant-only loss mask.

Input: jsonl, one conversation per line:
    {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": "..."}, ...]}
Tool messages hold the executor's "Code Execution Results: ..." text as their own
role; assistant turns hold the model's reasoning and ```python blocks.

The whole conversation is rendered once with the tokenizer's chat template and
tokenized once (with character offsets), so token boundaries are exactly those the
model sees. The character span of each assistant message's content is found by
rendering the conversation message by message (each rendering must be a prefix of
the next); a token is trained on iff it overlaps an assistant span. The template's
end-of-turn marker right after assistant content (e.g. "<|im_end|>") is included, so
the model learns to end its turns; everything else (system, user, tool output,
role headers) has mask 0.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROLES = ("system", "user", "assistant", "tool")


class ConversationError(ValueError):
    """A trajectory is malformed or cannot be rendered; the message names file and line."""


def read_conversations(path: str | os.PathLike) -> list[list[dict[str, str]]]:
    """Messages of each line of a jsonl file, validated (roles, string contents)."""
    conversations = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConversationError(f"{where}: invalid JSON: {e}") from e
            conversations.append(validate_messages(record.get("messages") if isinstance(record, dict) else None,
                                                   where))
    if not conversations:
        raise ConversationError(f"{path}: no conversations")
    return conversations


def validate_messages(messages: Any, where: str = "conversation") -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise ConversationError(f"{where}: expected a non-empty list under key 'messages'")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ConversationError(f"{where}: messages[{i}] must be {{'role': one of {list(ROLES)}, "
                                    f"'content': str}}, got {str(m)[:200]}")
    if not any(m["role"] == "assistant" for m in messages):
        raise ConversationError(f"{where}: no assistant message, nothing to train on")
    return messages


def _render(tokenizer: Any, messages: Sequence[dict[str, str]]) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(list(messages), tokenize=False)


def assistant_spans(tokenizer: Any, messages: Sequence[dict[str, str]], end_of_turn: str | None = "<|im_end|>",
                    where: str = "conversation") -> tuple[str, list[tuple[int, int]]]:
    """(rendered text, [(start, end) character spans of assistant content (+ end_of_turn)])."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConversationError(f"{where}: tokenizer {type(tokenizer).__name__} has no chat template")
    # Each message's content is located in the rendered conversation in order. This
    # works for templates that render tool output inline inside the assistant turn
    # (r1ci_jax.tokenizer), where rendering a prefix of the messages is not a prefix
    # of the whole text.
    full = _render(tokenizer, messages)
    spans = []
    cursor = 0
    for i, message in enumerate(messages):
        content = message["content"]
        if not content:
            continue
        start = full.find(content, cursor)
        if start < 0:
            raise ConversationError(f"{where}: messages[{i}] ({message['role']}) content does not appear verbatim, "
                                    "in order, in the text rendered by the chat template; cannot locate turns")
        end = start + len(content)
        if message["role"] == "assistant":
            if end_of_turn and full.startswith(end_of_turn, end):
                end += len(end_of_turn)
            spans.append((start, end))
        cursor = end
    return full, spans


def tokenize_conversation(tokenizer: Any, messages: Sequence[dict[str, str]],
                          end_of_turn: str | None = "<|im_end|>",
                          where: str = "conversation") -> tuple[np.ndarray, np.ndarray]:
    """(ids int32[n], loss_mask int32[n]) with mask 1 exactly on assistant tokens."""
    text, spans = assistant_spans(tokenizer, messages, end_of_turn, where)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(encoded["input_ids"], dtype=np.int32)
    offsets = np.asarray(encoded["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    mask = np.zeros(len(ids), dtype=np.int32)
    for start, end in spans:
        mask |= ((offsets[:, 0] < end) & (offsets[:, 1] > start) & (offsets[:, 1] > offsets[:, 0])).astype(np.int32)
    return ids, mask


def tokenize_file(tokenizer: Any, path: str | os.PathLike, end_of_turn: str | None = "<|im_end|>",
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """tokenize_conversation of every line of a jsonl file."""
    return [tokenize_conversation(tokenizer, messages, end_of_turn, where=f"{Path(path)}: conversation {i + 1}")
            for i, messages in enumerate(read_conversations(path))]
