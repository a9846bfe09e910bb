"""Rule-based answer checkers. Each returns 1.0 or 0.0; None (no answer) scores 0.

    score_exact(answer, gold)                 normalized text equality
    score_nospace(answer, gold)               equality ignoring all whitespace
    score_numeric(answer, gold, rel_tol, abs_tol)
    score_boolean(answer, gold)               True/False, Yes/No, valid/invalid
    score_multiple_choice(answer, gold, options)   "(A)", "A", "A)", or option text
    score_list(answer, gold)                  ordered; score_set: unordered
    score_auto(answer, gold, options)         picks one of the above from the gold

`get_verifier(name)` turns any of them into `(answer, example) -> float`, reading
options and tolerances from `example.meta`; task-specific checkers register here too.
"""
from __future__ import annotations

import ast
import json
import re
from collections import Counter
from typing import Any, Callable, Mapping

from r1ci_jax.tasks.base import Example
from r1ci_jax.tasks.numbers import numbers_close, parse_number

DEFAULT_REL_TOL = 1e-6
DEFAULT_ABS_TOL = 1e-9

# No single letters: "n" or "t" is as likely an answer of its own as a truth value.
_TRUE_WORDS = frozenset({"true", "yes", "valid", "correct"})
_FALSE_WORDS = frozenset({"false", "no", "invalid", "incorrect"})
_QUOTES = "\"'`"

Verifier = Callable[[str | None, Example], float]


def normalize_text(text: object) -> str:
    """Case-folded, whitespace-collapsed text without wrapping quotes or a final period."""
    s = " ".join(str(text).split())
    while len(s) >= 2 and s[0] == s[-1] and s[0] in _QUOTES:
        s = s[1:-1].strip()
    if s.endswith("."):
        s = s[:-1].rstrip()
    return s.casefold()


def _as_float(x: bool) -> float:
    return 1.0 if x else 0.0


def score_exact(answer: str | None, gold: object) -> float:
    if answer is None:
        return 0.0
    return _as_float(normalize_text(answer) == normalize_text(gold))


def score_nospace(answer: str | None, gold: object) -> float:
    if answer is None:
        return 0.0
    return _as_float("".join(str(answer).split()).casefold() == "".join(str(gold).split()).casefold())


def score_numeric(
    answer: str | None, gold: object, rel_tol: float = DEFAULT_REL_TOL, abs_tol: float = DEFAULT_ABS_TOL
) -> float:
    if answer is None:
        return 0.0
    gold_value = parse_number(gold)
    if gold_value is None:
        raise ValueError(f"numeric verifier: gold answer {gold!r} is not a number")
    value = parse_number(answer)
    return _as_float(value is not None and numbers_close(value, gold_value, rel_tol, abs_tol))


def parse_boolean(text: object) -> bool | None:
    """True/False for the usual spellings of a truth value, else None."""
    if isinstance(text, bool):
        return text
    word = normalize_text(text).rstrip("!").strip(_QUOTES)
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    return None


def score_boolean(answer: str | None, gold: object) -> float:
    if answer is None:
        return 0.0
    gold_value = parse_boolean(gold)
    if gold_value is None:
        raise ValueError(f"boolean verifier: gold answer {gold!r} is not True/False, Yes/No or valid/invalid")
    return _as_float(parse_boolean(answer) is gold_value)


_OPTION_LINE = re.compile(r"^\s*\(([A-Z])\)\s*(.+?)\s*$", re.MULTILINE)
_LETTER_ONLY = re.compile(r"^\(?([A-Za-z])\)?[.:]?$")
_LETTER_AND_TEXT = re.compile(r"^(?:\(([A-Z])\)|([A-Z])[).:])\s*(.+)$", re.DOTALL)
_OPTION_PREFIX = re.compile(r"^(?:option|answer|choice)\s*[:\s]\s*", re.IGNORECASE)


def parse_options(question: str) -> dict[str, str]:
    """Options written one per line as "(A) text" in a question (the BBH layout)."""
    return {m.group(1): m.group(2) for m in _OPTION_LINE.finditer(question)}


def choice_letter(text: object, options: Mapping[str, str] | None = None) -> str | None:
    """The option letter that `text` picks: "(A)", "A", "A)", "A.", "(A) text" or the text."""
    raw = str(text).strip().strip(_QUOTES).strip()
    raw = _OPTION_PREFIX.sub("", raw)
    if options:
        wanted = normalize_text(raw)
        for letter, option_text in options.items():
            if normalize_text(option_text) == wanted:
                return letter.upper()
    if m := _LETTER_ONLY.match(raw):
        letter = m.group(1)
        # a lone lower-case word like "a" is only a choice when options say so
        if letter.isupper() or (options and letter.upper() in options):
            return letter.upper()
        return None
    if m := _LETTER_AND_TEXT.match(raw):
        letter, rest = (m.group(1) or m.group(2)), m.group(3)
        if options and letter in options and normalize_text(options[letter]) != normalize_text(rest):
            return None  # "(A) <text of option B>" contradicts itself
        return letter
    return None


def score_multiple_choice(answer: str | None, gold: object, options: Mapping[str, str] | None = None) -> float:
    if answer is None:
        return 0.0
    gold_letter = choice_letter(gold, options)
    if gold_letter is None:
        raise ValueError(f"multiple-choice verifier: gold answer {gold!r} names no option of {dict(options or {})}")
    return _as_float(choice_letter(answer, options) == gold_letter)


def parse_list(text: object) -> list[Any] | None:
    """A list from "[1, 2]", "(a, b)", "{x, y}", "1, 2, 3" or "a b c"; None if empty."""
    if isinstance(text, (list, tuple, set, frozenset)):
        return list(text)
    s = str(text).strip().rstrip(".").strip()
    if not s:
        return None
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(s)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, (list, tuple, set, frozenset)):
            return list(value)
    if s[0] + s[-1] in ("[]", "()", "{}"):
        s = s[1:-1].strip()
    if not s:
        return []
    parts = s.split(",") if "," in s else s.split()
    return [p.strip().strip(_QUOTES) for p in parts]


def _items_equal(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_items_equal(x, y) for x, y in zip(a, b))
    na, nb = parse_number(a), parse_number(b)
    if na is not None and nb is not None:
        return na == nb
    return normalize_text(a) == normalize_text(b)


def _item_key(item: Any) -> str:
    value = parse_number(item)
    if value is not None:
        return f"#{value}"
    if isinstance(item, (list, tuple)):
        return "[" + ",".join(_item_key(x) for x in item) + "]"
    return normalize_text(item)


def score_list(answer: str | None, gold: object) -> float:
    if answer is None:
        return 0.0
    gold_items = parse_list(gold)
    if gold_items is None:
        raise ValueError(f"list verifier: gold answer {gold!r} is not a list")
    items = parse_list(answer)
    return _as_float(items is not None and _items_equal(items, gold_items))


def score_set(answer: str | None, gold: object) -> float:
    if answer is None:
        return 0.0
    gold_items = parse_list(gold)
    if gold_items is None:
        raise ValueError(f"set verifier: gold answer {gold!r} is not a list or set")
    items = parse_list(answer)
    if items is None:
        return 0.0
    return _as_float(Counter(map(_item_key, items)) == Counter(map(_item_key, gold_items)))


def score_auto(answer: str | None, gold: object, options: Mapping[str, str] | None = None) -> float:
    """Pick the checker from the gold: bool, option letter, number, list, else text."""
    if answer is None:
        return 0.0
    if isinstance(gold, bool) or (isinstance(gold, str) and parse_boolean(gold) is not None and not options):
        return score_boolean(answer, gold)
    if isinstance(gold, str) and options and choice_letter(gold, options) is not None:
        return score_multiple_choice(answer, gold, options)
    if isinstance(gold, str) and re.fullmatch(r"\s*\([A-Z]\)\s*", gold):
        return score_multiple_choice(answer, gold, options)
    if parse_number(gold) is not None:
        return score_numeric(answer, gold)
    if isinstance(gold, (list, tuple)):
        return score_list(answer, gold)
    if isinstance(gold, dict):
        try:
            return _as_float(json.loads(answer) == gold)
        except ValueError:
            return 0.0
    return score_exact(answer, gold)


# --- (answer, example) adapters, selectable by name in loaders and configs ----------

def _meta_options(example: Example) -> Mapping[str, str] | None:
    options = example.meta.get("options")
    if options:
        return options
    parsed = parse_options(example.question)
    return parsed or None


def _tolerances(example: Example) -> dict[str, float]:
    return {
        "rel_tol": float(example.meta.get("rel_tol", DEFAULT_REL_TOL)),
        "abs_tol": float(example.meta.get("abs_tol", DEFAULT_ABS_TOL)),
    }


_VERIFIERS: dict[str, Verifier] = {
    "exact": lambda a, ex: score_exact(a, ex.answer),
    "nospace": lambda a, ex: score_nospace(a, ex.answer),
    "numeric": lambda a, ex: score_numeric(a, ex.answer, **_tolerances(ex)),
    "boolean": lambda a, ex: score_boolean(a, ex.answer),
    "multiple_choice": lambda a, ex: score_multiple_choice(a, ex.answer, _meta_options(ex)),
    "list": lambda a, ex: score_list(a, ex.answer),
    "set": lambda a, ex: score_set(a, ex.answer),
    "auto": lambda a, ex: score_auto(a, ex.answer, ex.meta.get("options")),
}


def register_verifier(name: str, verifier: Verifier) -> None:
    """Make a task-specific checker selectable by name (e.g. in a loader's `verifier=`)."""
    if name in _VERIFIERS:
        raise ValueError(f"verifier {name!r} is already registered")
    _VERIFIERS[name] = verifier


def get_verifier(name: str) -> Verifier:
    """The `(answer, example) -> float` checker called `name`."""
    _load_checkers()
    try:
        return _VERIFIERS[name]
    except KeyError:
        raise ValueError(f"unknown verifier {name!r}; known: {sorted(_VERIFIERS)}") from None


def list_verifiers() -> list[str]:
    _load_checkers()
    return sorted(_VERIFIERS)


def _load_checkers() -> None:
    # task-specific checkers register themselves on import; import here, not at module
    # top, because they import this module.
    from r1ci_jax.tasks import checkers  # noqa: F401
