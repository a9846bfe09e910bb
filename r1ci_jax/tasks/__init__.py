"""Tasks: prompts of the code-interpreter protocol, examples, and rule-based scores.

    from r1ci_jax.tasks import extract_answer, get_task, list_tasks

    task = get_task("multiplication", digits_a=3, digits_b=2)
    example = task.example(0, seed=0)           # or task.examples(8, seed=0, split="test")
    messages = task.prompt(example)              # [system, user]
    reward = task.score(extract_answer(response), example)

Protocol markers and the system prompt live in `r1ci_jax.tasks.protocol`.
"""
from r1ci_jax.tasks.base import Example, Task, split_of
from r1ci_jax.tasks.extract import extract_answer
from r1ci_jax.tasks.registry import (
    SYNTHETIC_TASK_NAMES,
    UnknownTaskError,
    get_task,
    list_tasks,
    register_task,
)

__all__ = [
    "SYNTHETIC_TASK_NAMES",
    "Example",
    "Task",
    "UnknownTaskError",
    "extract_answer",
    "get_task",
    "list_tasks",
    "register_task",
    "split_of",
]
