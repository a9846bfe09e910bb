"""Long multiplication and modular exponentiation: exact big-integer arithmetic."""
from __future__ import annotations

import dataclasses
import random
from typing import Any

from r1ci_jax.tasks.base import Example
from r1ci_jax.tasks.synthetic.base import SyntheticTask, random_int_with_digits, require
from r1ci_jax.tasks.verifiers import score_numeric


@dataclasses.dataclass(frozen=True, kw_only=True)
class Multiplication(SyntheticTask):
    """"Compute 48213 * 9071." with operands of `digits_a` and `digits_b` digits."""

    digits_a: int = 5
    digits_b: int = 4
    name: str = "multiplication"

    def __post_init__(self) -> None:
        for knob in ("digits_a", "digits_b"):
            value = getattr(self, knob)
            require(self.name, 1 <= value <= 200, f"{knob} must be in [1, 200], got {value}")

    def sample(self, rng: random.Random) -> dict[str, Any]:
        return {"a": random_int_with_digits(rng, self.digits_a), "b": random_int_with_digits(rng, self.digits_b)}

    def question(self, params: dict[str, Any]) -> str:
        return f"Compute {params['a']} * {params['b']}."

    def solve(self, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return str(params["a"] * params["b"]), dict(params)

    def score(self, answer: str | None, example: Example) -> float:
        return score_numeric(answer, example.answer)

    def solution_code(self, example: Example) -> str:
        return f"print({example.meta['a']} * {example.meta['b']})"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModularArithmetic(SyntheticTask):
    """"Compute 7^123 mod 1009.": modular exponentiation with sized operands."""

    base_digits: int = 4
    exponent_digits: int = 4
    modulus_digits: int = 4
    name: str = "modular_arithmetic"

    def __post_init__(self) -> None:
        for knob in ("base_digits", "exponent_digits", "modulus_digits"):
            value = getattr(self, knob)
            require(self.name, 1 <= value <= 100, f"{knob} must be in [1, 100], got {value}")

    def sample(self, rng: random.Random) -> dict[str, Any]:
        modulus = max(2, random_int_with_digits(rng, self.modulus_digits))
        return {
            "base": random_int_with_digits(rng, self.base_digits),
            "exponent": random_int_with_digits(rng, self.exponent_digits),
            "modulus": modulus,
        }

    def question(self, params: dict[str, Any]) -> str:
        return f"Compute {params['base']}^{params['exponent']} mod {params['modulus']}."

    def solve(self, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return str(pow(params["base"], params["exponent"], params["modulus"])), dict(params)

    def score(self, answer: str | None, example: Example) -> float:
        return score_numeric(answer, example.answer)

    def solution_code(self, example: Example) -> str:
        m = example.meta
        return f"print(pow({m['base']}, {m['exponent']}, {m['modulus']}))"
