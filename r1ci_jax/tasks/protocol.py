"""The code-interpreter protocol: the one place its markers and prompt text live.

A model solves a task in turns: it writes Python in a ```python block and stops;
the system runs the block and appends the output after a line "Code Execution
Results:"; the model continues, and ends with its final answer wrapped as
<<<answer>>>. Rollout, SFT data generation, prompts and answer extraction all import
these names, so the format cannot drift between writing and reading it.
"""
from __future__ import annotations

import re

CODE_BLOCK_START = "```python"
CODE_BLOCK_END = "```"
# Generation stops once the model closes a code block: the closing fence plus newline.
# The opening fence "```python\n" cannot match it, so only a finished block stops.
CODE_STOP = CODE_BLOCK_END + "\n"
STOP_STRINGS: tuple[str, ...] = (CODE_STOP,)

RESULTS_HEADER = "Code Execution Results:"

ANSWER_OPEN = "<<<"
ANSWER_CLOSE = ">>>"

# Budget of code calls per response in the R1-Code-Interpreter papers (v1 and v2).
MAX_CODE_CALLS_V1 = 5
MAX_CODE_CALLS_V2 = 8
MAX_CODE_CALLS = MAX_CODE_CALLS_V2

# A complete python block; its body is group 1. The closing fence must start a line
# so backticks inside the code (in a string, say) do not end the block early.
CODE_BLOCK_PATTERN = re.compile(r"```python[ \t]*\n(.*?)(?:^|\n)```", re.DOTALL | re.MULTILINE)
# An opened python block that never closes (a response cut off mid-code).
UNCLOSED_CODE_BLOCK_PATTERN = re.compile(r"```python[ \t]*\n(?:(?!```).)*\Z", re.DOTALL)

SYSTEM_PROMPT_TEMPLATE = (
    "You are a helpful assistant who can run Python code. To run code, write it in a "
    "block that starts with ```python and ends with ```; the code will be executed and "
    f"its printed output returned to you after the line \"{RESULTS_HEADER}\". Use print() "
    "to see values. You may run code at most {max_code_calls} times, or answer with text "
    "reasoning alone when code does not help. When you are done, write the final answer "
    f"wrapped in triple angle brackets, like {ANSWER_OPEN}42{ANSWER_CLOSE}."
)
SYSTEM_PROMPT = SYSTEM_PROMPT_TEMPLATE.format(max_code_calls=MAX_CODE_CALLS)

# For tiny models with small context windows: the same contract in few tokens.
SHORT_SYSTEM_PROMPT = (
    f"Use {CODE_BLOCK_START} blocks to compute; output follows \"{RESULTS_HEADER}\". "
    f"Answer as {ANSWER_OPEN}answer{ANSWER_CLOSE}."
)

SYSTEM_PROMPT_STYLES = ("default", "short", "none")


def system_prompt(style: str = "default", max_code_calls: int = MAX_CODE_CALLS) -> str | None:
    """The system prompt text for `style` ("default", "short", or "none" -> None)."""
    if style == "default":
        return SYSTEM_PROMPT_TEMPLATE.format(max_code_calls=max_code_calls)
    if style == "short":
        return SHORT_SYSTEM_PROMPT
    if style == "none":
        return None
    raise ValueError(f"unknown system prompt style {style!r}; known: {list(SYSTEM_PROMPT_STYLES)}")


def format_code_block(code: str) -> str:
    """Wrap Python source as the model writes it: fenced block ending in CODE_STOP."""
    return f"{CODE_BLOCK_START}\n{code.strip(chr(10))}\n{CODE_STOP}"


def format_execution_results(output: str) -> str:
    """The text the system appends after running a code block."""
    return f"{RESULTS_HEADER}\n{output.rstrip()}\n"


def format_answer(answer: str) -> str:
    """The final-answer span the model writes and `extract_answer` reads back."""
    return f"{ANSWER_OPEN}{answer}{ANSWER_CLOSE}"


def find_code_blocks(text: str) -> list[str]:
    """Bodies of the complete ```python blocks in `text`, in order."""
    return [m.group(1) for m in CODE_BLOCK_PATTERN.finditer(text)]


def strip_code_blocks(text: str) -> str:
    """`text` with every python block (complete or cut off at the end) removed."""
    return UNCLOSED_CODE_BLOCK_PATTERN.sub("", CODE_BLOCK_PATTERN.sub("\n", text))
