"""Built-in synthetic tasks where running code clearly helps; no download needed.

Each is a dataclass whose fields are its difficulty knobs (`get_task("multiplication",
digits_a=3, digits_b=2)`), generates examples from a seed, and has
`solution_code(example)`: a short Python program that prints the gold answer, the
canonical code-interpreter solution used to build SFT data.
"""
from r1ci_jax.tasks.synthetic.arithmetic import ModularArithmetic, Multiplication
from r1ci_jax.tasks.synthetic.base import SyntheticTask
from r1ci_jax.tasks.synthetic.dates import DateArithmetic
from r1ci_jax.tasks.synthetic.game24 import Game24
from r1ci_jax.tasks.synthetic.text import LetterCount, Sorting

SYNTHETIC_TASKS: dict[str, type[SyntheticTask]] = {
    cls.name: cls for cls in (Multiplication, LetterCount, Sorting, ModularArithmetic, Game24, DateArithmetic)
}

__all__ = [
    "SYNTHETIC_TASKS",
    "DateArithmetic",
    "Game24",
    "LetterCount",
    "ModularArithmetic",
    "Multiplication",
    "Sorting",
    "SyntheticTask",
]
