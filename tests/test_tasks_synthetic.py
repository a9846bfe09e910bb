"""Built-in synthetic tasks: gold answers and canonical programs pass their own checker."""
import contextlib
import io

import pytest

from r1ci_jax.tasks import SYNTHETIC_TASK_NAMES, Example, extract_answer, get_task, split_of
from r1ci_jax.tasks import protocol

SEEDS = range(100)

# Small knobs keep 100 seeds fast; defaults are exercised by the determinism test.
SMALL = {
    "multiplication": {"digits_a": 4, "digits_b": 3},
    "letter_count": {"length": 25},
    "sorting": {"count": 6, "order": "random"},
    "modular_arithmetic": {},
    "game24": {},
    "date_arithmetic": {},
}


def run_program(source: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, "<canonical>", "exec"), {"__name__": "__main__"})  # noqa: S102 - our own programs
    return out.getvalue().strip()


def test_small_knobs_cover_every_synthetic_task():
    from r1ci_jax.tasks.synthetic import SYNTHETIC_TASKS

    assert set(SMALL) == set(SYNTHETIC_TASK_NAMES) == set(SYNTHETIC_TASKS)


@pytest.mark.parametrize("name", SYNTHETIC_TASK_NAMES)
def test_gold_and_canonical_program_pass_checker_on_100_seeds(name):
    task = get_task(name, **SMALL[name])
    for seed in SEEDS:
        example = task.example(0, seed=seed)
        assert task.score(example.answer, example) == 1.0, example
        printed = run_program(task.solution_code(example))
        assert task.score(printed, example) == 1.0, (example, printed)
        # a full protocol transcript round-trips through extraction
        transcript = (
            protocol.format_code_block(task.solution_code(example))
            + protocol.format_execution_results(printed)
            + protocol.format_answer(printed)
        )
        assert task.score(extract_answer(transcript), example) == 1.0


@pytest.mark.parametrize("name", SYNTHETIC_TASK_NAMES)
def test_wrong_answers_score_zero(name):
    task = get_task(name, **SMALL[name])
    for seed in range(20):
        example = task.example(0, seed=seed)
        assert task.score(None, example) == 0.0
        assert task.score("", example) == 0.0
        assert task.score("not an answer", example) == 0.0
        assert task.score(_perturb(name, example), example) == 0.0, example


def _perturb(name: str, example: Example) -> str:
    """A near miss for each task's answer format."""
    if name == "sorting":
        values = sorted(example.meta["values"], reverse=not example.meta["descending"])
        return str(values) if values != sorted(values, reverse=example.meta["descending"]) else str(values + [1])
    if name == "game24":
        return "+".join(map(str, example.meta["numbers"])) + "+1"
    if name == "date_arithmetic" and example.meta["op"] != "between":
        year, rest = example.answer.split("-", 1)
        return f"{int(year) + 1}-{rest}" if rest != "02-29" else f"{int(year) + 4}-{rest}"
    return str(int(example.answer) + 1)


@pytest.mark.parametrize("name", SYNTHETIC_TASK_NAMES)
def test_deterministic_and_splits_disjoint(name):
    task = get_task(name)
    first = task.examples(5, seed=3)
    assert first == get_task(name).examples(5, seed=3)
    assert first != task.examples(5, seed=4)
    assert task.example(4, seed=3) == first[4]  # random access, no need for earlier ones
    train = task.examples(30, seed=0, split="train")
    test = task.examples(30, seed=0, split="test")
    assert all(split_of(e.question) == "train" for e in train)
    assert all(split_of(e.question) == "test" for e in test)
    assert not {e.question for e in train} & {e.question for e in test}


@pytest.mark.parametrize("name", SYNTHETIC_TASK_NAMES)
def test_prompt_is_system_then_short_question(name):
    task = get_task(name)
    example = task.example(0)
    messages = task.prompt(example)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert protocol.ANSWER_OPEN in messages[0]["content"]
    assert messages[1]["content"] == example.question
    assert task.prompt(example, style="none") == [{"role": "user", "content": example.question}]
    if name != "letter_count":  # its question holds the long string by design
        assert len(example.question) < 120


def test_question_formats():
    assert get_task("multiplication", digits_a=2, digits_b=1).example(0).question.startswith("Compute ")
    letters = get_task("letter_count", length=12, alphabet="ab").example(0)
    assert letters.question.startswith("How many times does the letter '")
    assert len(letters.meta["text"]) == 12 and set(letters.meta["text"]) <= {"a", "b"}
    sort = get_task("sorting", count=3, order="descending").example(0)
    assert sort.question.startswith("Sort in descending order: ")
    assert sort.answer == str(sorted(sort.meta["values"], reverse=True))
    dates = get_task("date_arithmetic", ops=["between"]).example(0)
    assert dates.question.startswith("How many days are there from ")


def test_knobs_change_difficulty():
    small = get_task("multiplication", digits_a=2, digits_b=2).example(0)
    big = get_task("multiplication", digits_a=9, digits_b=8).example(0)
    assert len(str(small.meta["a"])) == 2 and len(str(big.meta["a"])) == 9 and len(str(big.meta["b"])) == 8


@pytest.mark.parametrize(
    "name,options,message",
    [
        ("multiplication", {"digits_a": 0}, "digits_a must be in"),
        ("letter_count", {"alphabet": "a"}, "alphabet must have"),
        ("sorting", {"order": "sideways"}, "order must be one of"),
        ("sorting", {"min_value": 5, "max_value": 5}, "min_value must be < max_value"),
        ("game24", {"count": 7}, "count must be in"),
        ("date_arithmetic", {"ops": ["after", "around"]}, "ops must be"),
        ("multiplication", {"digits": 3}, "unknown option"),
    ],
)
def test_bad_knobs_are_named(name, options, message):
    with pytest.raises(ValueError, match=message):
        get_task(name, **options)


def test_tiny_problem_space_reports_exhaustion():
    task = get_task("multiplication", digits_a=1, digits_b=1)
    assert task.example(0, split="test").answer  # 100 questions still have test ones
    with pytest.raises(IndexError):
        task.example(-1)
    with pytest.raises(ValueError, match="unknown split"):
        task.example(0, split="validation")


def test_relabel_with_name():
    task = get_task("multiplication", name="multiplication_hard", digits_a=7)
    assert task.name == "multiplication_hard"
    assert task.example(0).task == "multiplication_hard"
