"""Every verifier on positive and negative cases; number parsing; checkers."""
from fractions import Fraction

import pytest

from r1ci_jax.tasks import Example
from r1ci_jax.tasks.checkers import evaluate_arithmetic, parse_date, score_date, score_game24
from r1ci_jax.tasks.numbers import parse_number
from r1ci_jax.tasks.verifiers import (
    choice_letter,
    get_verifier,
    list_verifiers,
    parse_list,
    parse_options,
    score_auto,
    score_boolean,
    score_exact,
    score_list,
    score_multiple_choice,
    score_nospace,
    score_numeric,
    score_set,
)


@pytest.mark.parametrize(
    "text,value",
    [
        ("42", Fraction(42)),
        ("-7", Fraction(-7)),
        ("+3.25", Fraction(13, 4)),
        (".5", Fraction(1, 2)),
        ("1,234,567", Fraction(1234567)),
        ("1,234.5", Fraction(2469, 2)),
        ("1_000", Fraction(1000)),
        ("1.5e3", Fraction(1500)),
        ("2E-2", Fraction(1, 50)),
        ("1.5 x 10^3", Fraction(1500)),
        ("1.5 × 10^3", Fraction(1500)),
        ("3*10**2", Fraction(300)),
        ("3/4", Fraction(3, 4)),
        ("-6 / 8", Fraction(-3, 4)),
        ("\\frac{3}{4}", Fraction(3, 4)),
        ("-\\dfrac{1}{2}", Fraction(-1, 2)),
        ("1 1/2", Fraction(3, 2)),
        ("$1,000", Fraction(1000)),
        ("50%", Fraction(50)),
        ("$3/4$", Fraction(3, 4)),
        ("12.", Fraction(12)),
        (7, Fraction(7)),
        (0.25, Fraction(1, 4)),
    ],
)
def test_parse_number_accepts(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize(
    "text", ["", "abc", "1,23", "1,2,3", "1e99999", "3/0", "1 2", "12a", "--5", True, None, [1], float("nan")]
)
def test_parse_number_rejects(text):
    assert parse_number(text) is None


def test_exact():
    assert score_exact("  Hello   World. ", "hello world") == 1.0
    assert score_exact("'apple banana'", "apple banana") == 1.0
    assert score_exact("hello worlds", "hello world") == 0.0
    assert score_exact(None, "x") == 0.0


def test_nospace():
    assert score_nospace(") ] >", ")]>") == 1.0
    assert score_nospace(")]>", ") ] >") == 1.0
    assert score_nospace(") ]", ") ] >") == 0.0


def test_numeric():
    assert score_numeric("437340123", "437340123") == 1.0
    assert score_numeric("437,340,123", 437340123) == 1.0
    assert score_numeric("437340124", "437340123") == 0.0  # no tolerance between integers
    assert score_numeric("0.3333333", "1/3") == 1.0
    assert score_numeric("0.33", "1/3") == 0.0
    assert score_numeric("1.5e3", "1500") == 1.0
    assert score_numeric("0.75", "3/4") == 1.0
    assert score_numeric("0.3", "0.30001", rel_tol=1e-3) == 1.0
    assert score_numeric("0.3", "0.30001") == 0.0
    assert score_numeric("twelve", "12") == 0.0
    assert score_numeric(None, "12") == 0.0
    with pytest.raises(ValueError, match="not a number"):
        score_numeric("1", "abc")


@pytest.mark.parametrize(
    "answer,gold,expected",
    [
        ("True", "True", 1.0),
        ("true.", True, 1.0),
        ("Yes", "yes", 1.0),
        ("yes", "True", 1.0),
        ("valid", "valid", 1.0),
        ("Invalid", "invalid", 1.0),
        ("No", "False", 1.0),
        ("False", "True", 0.0),
        ("no", "yes", 0.0),
        ("invalid", "valid", 0.0),
        ("maybe", "yes", 0.0),
        (None, "yes", 0.0),
    ],
)
def test_boolean(answer, gold, expected):
    assert score_boolean(answer, gold) == expected


def test_single_letters_are_not_booleans():
    assert score_auto("no", "n") == 0.0
    assert score_auto("n", "n") == 1.0


def test_boolean_rejects_non_boolean_gold():
    with pytest.raises(ValueError, match="not True/False"):
        score_boolean("yes", "perhaps")


OPTIONS = {"A": "12/11/1937", "B": "01/02/1938", "C": "Paris"}


@pytest.mark.parametrize(
    "answer,expected",
    [
        ("(B)", 1.0),
        ("B", 1.0),
        ("B)", 1.0),
        ("B.", 1.0),
        ("b", 1.0),
        ("(B) 01/02/1938", 1.0),
        ("01/02/1938", 1.0),
        ("Option B", 1.0),
        ("(A)", 0.0),
        ("A", 0.0),
        ("(B) 12/11/1937", 0.0),  # letter and text disagree
        ("12/11/1937", 0.0),
        ("", 0.0),
        (None, 0.0),
    ],
)
def test_multiple_choice(answer, expected):
    assert score_multiple_choice(answer, "(B)", OPTIONS) == expected


def test_multiple_choice_gold_forms_and_no_options():
    assert score_multiple_choice("C", "Paris", OPTIONS) == 1.0
    assert score_multiple_choice("(C)", "C", None) == 1.0
    assert score_multiple_choice("C)", "(C)", None) == 1.0
    assert score_multiple_choice("D", "(C)", None) == 0.0
    assert choice_letter("a") is None  # a lower-case word is not a choice without options
    with pytest.raises(ValueError, match="names no option"):
        score_multiple_choice("A", "London", OPTIONS)


def test_parse_options_bbh_layout():
    question = "Which date?\nOptions:\n(A) 12/11/1937\n(B) 01/02/1938\n(C) Paris"
    assert parse_options(question) == OPTIONS


@pytest.mark.parametrize(
    "text,items",
    [
        ("[1, 2, 3]", [1, 2, 3]),
        ("(1, 2, 3)", [1, 2, 3]),
        ("1, 2, 3", [1, 2, 3]),
        ("x, y", ["x", "y"]),
        ("a b c", ["a", "b", "c"]),
        ("[apple, banana]", ["apple", "banana"]),
        ("['x', 'y']", ["x", "y"]),
        ("[]", []),
        ("", None),
    ],
)
def test_parse_list(text, items):
    assert parse_list(text) == items


def test_list_and_set():
    assert score_list("[3, 5, 9]", "[3, 5, 9]") == 1.0
    assert score_list("3, 5, 9", [3, 5, 9]) == 1.0
    assert score_list("3 5 9.0", "[3, 5, 9]") == 1.0
    assert score_list("[9, 5, 3]", "[3, 5, 9]") == 0.0
    assert score_list("[3, 5]", "[3, 5, 9]") == 0.0
    assert score_list("[[1, 2], [3]]", [[1, 2], [3]]) == 1.0
    assert score_list(None, "[1]") == 0.0
    assert score_set("{9, 3, 5}", "[3, 5, 9]") == 1.0
    assert score_set("Banana, apple", ["apple", "banana"]) == 1.0
    assert score_set("[3, 5, 5]", "[3, 5]") == 0.0
    assert score_set("[3, 4]", "[3, 5]") == 0.0


def test_auto_picks_by_gold():
    assert score_auto("yes", "Yes") == 1.0
    assert score_auto("(A)", "(A)", {"A": "x", "B": "y"}) == 1.0
    assert score_auto("x", "(A)", {"A": "x", "B": "y"}) == 1.0
    assert score_auto("B", "(A)") == 0.0
    assert score_auto("1,000", "1000") == 1.0
    assert score_auto("1001", 1000) == 0.0
    assert score_auto("[1, 2]", [1, 2]) == 1.0
    assert score_auto('{"a": 1}', {"a": 1}) == 1.0
    assert score_auto("{a: 1}", {"a": 1}) == 0.0
    assert score_auto("apple banana", "apple banana") == 1.0
    assert score_auto("banana apple", "apple banana") == 0.0
    assert score_auto(None, "x") == 0.0


def test_game24_checker():
    assert score_game24("(7-8/8)*4", [4, 7, 8, 8]) == 1.0
    assert score_game24("4 × (7 − 8 ÷ 8)", [8, 8, 7, 4]) == 1.0
    assert score_game24("(7-8/8)*4 = 24", [4, 7, 8, 8]) == 1.0
    assert score_game24("(7-8/8)*4 = 25", [4, 7, 8, 8]) == 0.0
    assert score_game24("8*3", [8, 3, 1, 1]) == 0.0  # numbers not all used
    assert score_game24("(7-8/8)*4*1", [4, 7, 8, 8]) == 0.0  # extra number
    assert score_game24("24", [4, 7, 8, 8]) == 0.0
    assert score_game24("__import__('os')", [1]) == 0.0
    assert score_game24("2**3*3", [2, 3, 3]) == 0.0  # powers are not allowed
    assert score_game24("8/(3-3)", [8, 3, 3]) == 0.0
    assert score_game24(None, [1, 2, 3, 4]) == 0.0
    assert evaluate_arithmetic("(1+2)/3") == (Fraction(1), [1, 2, 3])


def test_date_checker():
    assert parse_date("March 5, 2021").isoformat() == "2021-03-05"
    assert score_date("2021-03-05", "2021-03-05") == 1.0
    assert score_date("2021-3-5", "2021-03-05") == 1.0
    assert score_date("March 5, 2021", "2021-03-05") == 1.0
    assert score_date("2021-03-05 00:00:00", "2021-03-05") == 1.0
    assert score_date("2021-03-06", "2021-03-05") == 0.0
    assert score_date("not a date", "2021-03-05") == 0.0
    assert score_date("674", "674") == 1.0  # a count of days compares as a number
    assert score_date("675", "674") == 0.0


def test_named_verifiers_read_example_meta():
    names = list_verifiers()
    for name in ("exact", "nospace", "numeric", "boolean", "multiple_choice", "list", "set", "auto", "game24", "date"):
        assert name in names
    question = "Pick one.\nOptions:\n(A) red\n(B) blue"
    mc = Example(task="t", id="1", question=question, answer="(B)")
    assert get_verifier("multiple_choice")("blue", mc) == 1.0
    assert get_verifier("multiple_choice")("red", mc) == 0.0
    loose = Example(task="t", id="2", question="q", answer="10", meta={"rel_tol": 0.1})
    assert get_verifier("numeric")("10.5", loose) == 1.0
    assert get_verifier("numeric")("12", loose) == 0.0
    game = Example(task="t", id="3", question="q", answer="(1+2)*8", meta={"numbers": [1, 2, 8], "target": 24})
    assert get_verifier("game24")("8*(2+1)", game) == 1.0
    with pytest.raises(ValueError, match="unknown verifier"):
        get_verifier("fuzzy")
