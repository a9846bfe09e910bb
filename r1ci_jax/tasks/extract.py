"""Final-answer extraction: the last <<<...>>> span of a response, by rule only.

Rules, in order:
- python code blocks are ignored (a `print(f"<<<{x}>>>")` in code is not an answer;
  the printed "<<<42>>>" in the execution results is);
- an opener is a run of 3+ '<', a closer a run of 3+ '>' (so "<<<<<<42>>>>>>" and
  answers holding single or double angle brackets like "<<<a << 2 > b>>>" work);
- the answer is the text between the LAST opener and the first closer after it,
  stripped of surrounding whitespace;
- if that last opener has no closer (a response truncated while writing the answer),
  the result is None: neither the partial text nor an earlier, superseded answer;
- an empty span gives None.
"""
from __future__ import annotations

import re

from r1ci_jax.tasks.protocol import strip_code_blocks

_OPENER = re.compile(r"<{3,}")
_CLOSER = re.compile(r">{3,}")


def extract_answer(text: str | None) -> str | None:
    """The final answer in `text`, or None when there is no complete answer span."""
    if not text:
        return None
    text = strip_code_blocks(text)
    last_opener = None
    for last_opener in _OPENER.finditer(text):
        pass
    if last_opener is None:
        return None
    closer = _CLOSER.search(text, last_opener.end())
    if closer is None:
        return None
    answer = text[last_opener.end():closer.start()].strip()
    return answer or None
