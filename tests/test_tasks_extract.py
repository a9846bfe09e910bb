"""extract_answer on a table of tricky responses, and the protocol helpers."""
import pytest

from r1ci_jax.tasks import extract_answer
from r1ci_jax.tasks import protocol

CASES = [
    # plain and whitespace
    ("<<<42>>>", "42"),
    ("The answer is <<<42>>>.", "42"),
    ("<<< 42 >>>", "42"),
    ("<<<\n  42\n>>>", "42"),
    ("<<<\t-3.5\t>>>", "-3.5"),
    ("<<<hello world>>>", "hello world"),
    ("<<<  multi\nline\nanswer  >>>", "multi\nline\nanswer"),
    # the last span wins
    ("<<<1>>> then <<<2>>>", "2"),
    ("First guess <<<10>>>. On reflection, <<<12>>>", "12"),
    ("<<<a>>><<<b>>>", "b"),
    # brackets inside the answer
    ("<<<[1, 2, 3]>>>", "[1, 2, 3]"),
    ("<<<[[1, 2], [3, 4]]>>>", "[[1, 2], [3, 4]]"),
    ("<<<{'a': [1, {'b': 2}]}>>>", "{'a': [1, {'b': 2}]}"),
    ("<<<(A)>>>", "(A)"),
    ("<<<x > 3>>>", "x > 3"),
    ("<<<a < b>>>", "a < b"),
    ("<<<1 << 4>>>", "1 << 4"),
    ("<<<x >> 2>>>", "x >> 2"),
    ("<<<f(<x>)>>>", "f(<x>)"),
    ("<<<(7-8/8)*4>>>", "(7-8/8)*4"),
    # doubled wrappers
    ("<<<<<<42>>>>>>", "42"),
    ("<<<<42>>>>", "42"),
    ("<<<42>>>>", "42"),
    # no answer / truncated / empty
    ("", None),
    (None, None),
    ("no answer here", None),
    ("<<42>>", None),
    ("<<<42", None),
    ("<<<42>>", None),
    ("<<<1>>> and finally <<<2", None),
    ("The final answer is <<<", None),
    ("<<<>>>", None),
    ("<<<   >>>", None),
    ("42>>>", None),
    # code blocks are not answers; execution results are text
    ("```python\nprint('<<<' + str(x) + '>>>')\n```\n", None),
    ("```python\nprint(f'<<<{x}>>>')\n```\nCode Execution Results:\n<<<7>>>\n", "7"),
    ("<<<5>>>\n```python\ns = '<<<'\n```\n", "5"),
    ("Answer: <<<9>>>\n```python\nprint(1)\n", "9"),
    ("```python\nx = 1\n```\nSo <<<x=1>>>", "x=1"),
    # unicode, quotes, markdown
    ("**<<<Paris>>>**", "Paris"),
    ("<<<'yes'>>>", "'yes'"),
    ("<<<2021-03-15>>>", "2021-03-15"),
    ("Résumé: <<<naïve café>>>", "naïve café"),
    ("<<<1,234,567>>>", "1,234,567"),
    ("<<<$\\frac{3}{4}$>>>", "$\\frac{3}{4}$"),
    ("text <<<True>>> more text after", "True"),
]


def test_table_is_large_enough():
    assert len(CASES) >= 40


@pytest.mark.parametrize("text,expected", CASES)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_long_truncated_response_gives_none():
    text = "step " * 5000 + "<<<12345"
    assert extract_answer(text) is None


def test_protocol_round_trip():
    code = "print(6 * 7)"
    block = protocol.format_code_block(code)
    assert block.startswith(protocol.CODE_BLOCK_START) and block.endswith(protocol.CODE_STOP)
    assert protocol.find_code_blocks(block) == [code]
    transcript = block + protocol.format_execution_results("42") + protocol.format_answer("42")
    assert protocol.RESULTS_HEADER in transcript
    assert extract_answer(transcript) == "42"


def test_code_block_with_backticks_inside_a_line():
    text = "```python\ns = 'a ``` b'\nprint(s)\n```\n"
    assert protocol.find_code_blocks(text) == ["s = 'a ``` b'\nprint(s)"]


def test_system_prompt_styles():
    assert protocol.ANSWER_OPEN in protocol.system_prompt("default")
    assert str(protocol.MAX_CODE_CALLS) in protocol.system_prompt("default")
    assert protocol.RESULTS_HEADER in protocol.system_prompt("short")
    assert protocol.system_prompt("none") is None
    with pytest.raises(ValueError, match="unknown system prompt style"):
        protocol.system_prompt("verbose")
