"""Exact stop-string detection on decoded text, on the host, between decode chunks.

Why host-side: a stop string ("```\\n" closing a code block) may span several tokens or
end inside one larger token ("```\\n\\n"); matching token-id suffixes on device would
need every tokenization of every stop string. Text matching is exact by construction.
The device decodes a chunk of steps; the host then finds the first token at which a
stop string appears in the row's text, keeps the row up to and including that token
and rolls the row's cache back to it (see `Sampler`), so the KV cache matches the
kept tokens exactly.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class StopMatch:
    """keep: tokens to keep (the stop string is complete after token keep-1).
    text_end: offset in decode(ids[:keep]) right after the stop string.
    stop: the stop string that matched."""
    keep: int
    text_end: int
    stop: str


def decode(tokenizer: Any, ids: Sequence[int]) -> str:
    """Text of ids without special tokens (EOS), exactly as tokenized (no space clean-up)."""
    return tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)


def find_stop(tokenizer: Any, ids: Sequence[int], stops: Sequence[str], checked: int) -> StopMatch | None:
    """First stop string in decode(ids), given that decode(ids[:checked]) held none.

    Returns where to cut (the earliest token at which any stop string is complete),
    or None. Costs one decode when there is no match, and at most len(ids) - checked
    more to find the exact token when there is one.
    """
    if not stops or len(ids) <= checked:
        return None
    text = decode(tokenizer, ids)
    if not any(s in text for s in stops):
        return None
    for keep in range(checked + 1, len(ids) + 1):
        prefix = decode(tokenizer, ids[:keep])
        ends = [(prefix.find(s) + len(s), i, s) for i, s in enumerate(stops) if s in prefix]
        if ends:
            text_end, _, stop = min(ends)  # the stop string that completes first in the text
            return StopMatch(keep=keep, text_end=text_end, stop=stop)
    # The full text matched but no prefix did: only possible if decoding is not
    # prefix-stable (it is for byte-level BPE); cut at the end then.
    ends = [(text.find(s) + len(s), i, s) for i, s in enumerate(stops) if s in text]
    text_end, _, stop = min(ends)
    return StopMatch(keep=len(ids), text_end=text_end, stop=stop)
