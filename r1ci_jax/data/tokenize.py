"""Chat-template tokenization of prompts and padding into fixed-shape arrays.

The prompt is rendered with the tokenizer's own chat template (ending in the
assistant's generation header) and then encoded without adding special tokens again,
since the template already writes the ones the model expects.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

PADDING_SIDES = ("left", "right")


def render_prompt(tokenizer: Any, messages: Sequence[dict[str, str]]) -> str:
    """Prompt text for `messages`, ready for the assistant's reply."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no chat template; set tokenizer.chat_template")
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def encode_prompt(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """Token ids of the rendered prompt."""
    return list(tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"])


def pad_token_id(tokenizer: Any) -> int:
    """The pad id, falling back to EOS (many chat models define no pad token)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    raise ValueError(f"tokenizer {type(tokenizer).__name__} has neither a pad nor an EOS token")


def pad_sequences(
    sequences: Sequence[Sequence[int]], length: int, pad_id: int, side: str = "left"
) -> tuple[np.ndarray, np.ndarray]:
    """int32 ids [n, length] and attention mask [n, length]; `side` is where padding goes."""
    if side not in PADDING_SIDES:
        raise ValueError(f"padding side must be one of {list(PADDING_SIDES)}, got {side!r}")
    ids = np.full((len(sequences), length), pad_id, dtype=np.int32)
    mask = np.zeros((len(sequences), length), dtype=np.int32)
    for row, seq in enumerate(sequences):
        if len(seq) > length:
            raise ValueError(f"sequence {row} has {len(seq)} tokens, more than the padded length {length}")
        start = length - len(seq) if side == "left" else 0
        ids[row, start:start + len(seq)] = seq
        mask[row, start:start + len(seq)] = 1
    return ids, mask
