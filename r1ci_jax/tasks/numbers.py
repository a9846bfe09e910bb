"""Parse the ways a number is written in an answer into an exact Fraction.

Accepted: integers and decimals with an optional sign, thousands separators
("1,234,567" or "1_000"), scientific notation ("1.5e-3", "1.5E+03", "1.5 x 10^3",
"1.5*10**3", "1.5 × 10^3"), fractions ("3/4", "-3 / 4", "\\frac{3}{4}"), mixed numbers
("1 1/2"), and surrounding noise that does not change the value: a leading "$",
a trailing "%", a trailing period, spaces, and LaTeX "$...$" wrappers. Exact
Fractions keep big integers exact, so 437340123 never "equals" 437340124.
"""
from __future__ import annotations

import re
from fractions import Fraction

_DECIMAL = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_GROUPED = r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?"
_NUMBER = re.compile(rf"^(?:{_GROUPED}|{_DECIMAL})$")
_SCIENTIFIC = re.compile(rf"^({_DECIMAL})[eE]([+-]?\d+)$")
_TIMES_TEN = re.compile(rf"^({_DECIMAL})\s*(?:\*|x|×|\\times|\\cdot|·)\s*10\s*(?:\^|\*\*)\s*\{{?([+-]?\d+)\}}?$")
_FRACTION = re.compile(rf"^({_DECIMAL})\s*/\s*({_DECIMAL})$")
_LATEX_FRACTION = re.compile(r"^([+-]?)\\d?frac\{\s*([^{}]+?)\s*\}\{\s*([^{}]+?)\s*\}$")
_MIXED = re.compile(r"^([+-]?\d+)\s+(\d+)\s*/\s*(\d+)$")

# Exponents beyond this are not answers anyone means; refusing them keeps a hostile
# "1e999999999" from building a gigantic integer.
_MAX_EXPONENT = 400


def _clean(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == "$":
        text = text[1:-1].strip()
    text = text.rstrip(".").strip()
    if text.startswith("$"):
        text = text[1:].strip()
    elif text[:2] in ("-$", "+$"):
        text = text[0] + text[2:].strip()
    if text.endswith("%"):
        text = text[:-1].strip()
    return text.replace("_", "") if re.fullmatch(r"[+-]?\d+(?:_\d+)+(?:\.\d+)?", text) else text


def _plain(text: str) -> Fraction | None:
    if not _NUMBER.match(text):
        return None
    return Fraction(text.replace(",", ""))


def _scaled(mantissa: str, exponent: str) -> Fraction | None:
    power = int(exponent)
    if abs(power) > _MAX_EXPONENT:
        return None
    return Fraction(mantissa) * Fraction(10) ** power


def parse_number(text: object) -> Fraction | None:
    """The exact value written in `text`, or None if it is not a single number."""
    if isinstance(text, bool):
        return None
    if isinstance(text, int):
        return Fraction(text)
    if isinstance(text, float):
        return Fraction(text) if text == text and abs(text) != float("inf") else None
    if isinstance(text, Fraction):
        return text
    if not isinstance(text, str):
        return None
    text = _clean(text)
    if not text:
        return None
    value = _plain(text)
    if value is not None:
        return value
    if m := _SCIENTIFIC.match(text):
        return _scaled(m.group(1), m.group(2))
    if m := _TIMES_TEN.match(text):
        return _scaled(m.group(1), m.group(2))
    if m := _MIXED.match(text):
        whole, num, den = int(m.group(1)), int(m.group(2)), int(m.group(3))
        if den == 0:
            return None
        magnitude = abs(whole) + Fraction(num, den)
        return -magnitude if m.group(1).startswith("-") else magnitude
    if m := _FRACTION.match(text):
        return _ratio(m.group(1), m.group(2))
    if m := _LATEX_FRACTION.match(text):
        ratio = _ratio(m.group(2), m.group(3))
        if ratio is None:
            return None
        return -ratio if m.group(1) == "-" else ratio
    return None


def _ratio(numerator: str, denominator: str) -> Fraction | None:
    num, den = parse_number(numerator), parse_number(denominator)
    if num is None or den is None or den == 0:
        return None
    return num / den


def numbers_close(value: Fraction, gold: Fraction, rel_tol: float, abs_tol: float) -> bool:
    """Equal, or (when either is not an integer) within the tolerances.

    Two integers must match exactly: a relative tolerance would accept a wrong last
    digit of a long product.
    """
    if value == gold:
        return True
    if value.denominator == 1 and gold.denominator == 1:
        return False
    return abs(value - gold) <= max(Fraction(rel_tol) * abs(gold), Fraction(abs_tol))
