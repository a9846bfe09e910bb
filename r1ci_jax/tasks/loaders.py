"""Tasks from the released data layouts in a local folder or file.

    load_symbench(path)   a folder of sample_<i>/question.txt + sample_<i>/solution.json
    load_bbh(path)        a Big-Bench-Hard file {"examples": [{"input", "target"}, ...]}
    load_jsonl(path)      one JSON object per line with a question and an answer key

Each returns a `DatasetTask`. `split` says which split the file is: "train", "test",
or "by_hash" (train/test chosen per question by a stable hash, see `base.split_of`).
`verifier` names a checker from `verifiers.get_verifier` ("auto" picks from the gold).
Bad input raises `DataFormatError` naming the file and line (or sample folder).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

from r1ci_jax.tasks.base import SPLITS, Example, Task, check_index, check_split, split_of
from r1ci_jax.tasks.extract import extract_answer
from r1ci_jax.tasks.verifiers import get_verifier, parse_options

SPLIT_CHOICES = (*SPLITS, "by_hash")


class DataFormatError(ValueError):
    """A data file is missing, malformed or empty; the message names file and line."""


@dataclasses.dataclass(frozen=True, eq=False)
class DatasetTask(Task):
    """A fixed list of examples per split, scored by a named verifier."""

    name: str
    splits: dict[str, tuple[Example, ...]]
    verifier: str = "auto"
    source: str = ""

    def __post_init__(self) -> None:
        get_verifier(self.verifier)  # fail at load time, not at the first score

    def size(self, split: str = "train") -> int:
        check_split(self.name, split, tuple(self.splits))
        return len(self.splits[split])

    def example(self, index: int, seed: int = 0, split: str = "train") -> Example:
        """The `index`-th example in file order; `seed` is unused (the pipeline shuffles)."""
        size = self.size(split)
        check_index(self.name, index, size)
        return self.splits[split][index]

    def score(self, answer: str | None, example: Example) -> float:
        return get_verifier(self.verifier)(answer, example)


def _make_task(name: str, examples: list[Example], split: str, verifier: str, source: Path) -> DatasetTask:
    if not examples:
        raise DataFormatError(f"{source}: no examples found")
    if split not in SPLIT_CHOICES:
        raise ValueError(f"task {name!r}: split must be one of {list(SPLIT_CHOICES)}, got {split!r}")
    if split == "by_hash":
        by_split = {s: tuple(e for e in examples if split_of(e.question) == s) for s in SPLITS}
    else:
        by_split = {split: tuple(examples)}
    return DatasetTask(name=name, splits=by_split, verifier=verifier, source=str(source))


def _json_error(path: Path, error: json.JSONDecodeError, line_offset: int = 0) -> DataFormatError:
    return DataFormatError(f"{path}:{error.lineno + line_offset}:{error.colno}: invalid JSON: {error.msg}")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


# --- SymBench ------------------------------------------------------------------------

_SAMPLE_DIR = re.compile(r"^sample_(\d+)$")


def load_symbench(
    path: str | os.PathLike, name: str | None = None, split: str = "test", verifier: str = "auto"
) -> DatasetTask:
    """A SymBench task folder: sample_<i>/question.txt and sample_<i>/solution.json.

    A solution that is a string wrapped as <<<...>>> is unwrapped to its content.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataFormatError(f"{root}: not a folder (expected sample_<i>/ subfolders)")
    samples = sorted(
        ((int(m.group(1)), d) for d in root.iterdir() if d.is_dir() and (m := _SAMPLE_DIR.match(d.name))),
        key=lambda pair: pair[0],
    )
    if not samples:
        raise DataFormatError(f"{root}: no sample_<i>/ folders found")
    task_name = name or f"symbench/{root.name}"
    examples = [_symbench_example(task_name, index, folder) for index, folder in samples]
    return _make_task(task_name, examples, split, verifier, root)


def _symbench_example(task_name: str, index: int, folder: Path) -> Example:
    question_file, solution_file = folder / "question.txt", folder / "solution.json"
    question = _read_text(question_file).strip()
    if not question:
        raise DataFormatError(f"{question_file}:1: empty question")
    solution_text = _read_text(solution_file)
    try:
        solution = json.loads(solution_text)
    except json.JSONDecodeError as e:
        raise _json_error(solution_file, e) from None
    if isinstance(solution, str) and solution.strip().startswith("<<<"):
        unwrapped = extract_answer(solution)
        if unwrapped is None:
            raise DataFormatError(f"{solution_file}:1: solution {solution[:60]!r} opens <<< but never closes it")
        solution = unwrapped
    if solution is None or solution == "" or solution == []:
        raise DataFormatError(f"{solution_file}:1: empty solution")
    meta = {"source": str(folder)}
    if options := parse_options(question):
        meta["options"] = options
    return Example(task=task_name, id=f"{task_name}/{index}", question=question, answer=solution, meta=meta)


# --- Big-Bench-Hard ------------------------------------------------------------------

def load_bbh(
    path: str | os.PathLike, name: str | None = None, split: str = "test", verifier: str = "auto"
) -> DatasetTask:
    """A BBH task file. Options written "(A) text" in the input become meta["options"].

    With verifier="auto", dyck_languages files compare ignoring whitespace (their
    targets are spaced bracket sequences like ") ] >").
    """
    file = Path(path)
    text = _read_text(file)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise _json_error(file, e) from None
    if not isinstance(data, dict) or not isinstance(data.get("examples"), list):
        raise DataFormatError(f"{file}:1: expected an object with an \"examples\" list")
    task_name = name or f"bbh/{file.stem}"
    lines = _array_element_lines(text, "examples")
    examples = []
    for i, record in enumerate(data["examples"]):
        where = f"{file}:{lines[i] if i < len(lines) else 1}"
        if not isinstance(record, dict):
            raise DataFormatError(f"{where}: example {i} is not an object")
        question, target = record.get("input"), record.get("target")
        if not isinstance(question, str) or not question.strip():
            raise DataFormatError(f"{where}: example {i} has no \"input\" text")
        if target is None or (isinstance(target, str) and not target.strip()):
            raise DataFormatError(f"{where}: example {i} has no \"target\"")
        meta: dict[str, Any] = {}
        if options := parse_options(question):
            meta["options"] = options
        examples.append(Example(task=task_name, id=f"{task_name}/{i}", question=question.strip(), answer=target, meta=meta))
    if verifier == "auto" and file.stem.startswith("dyck"):
        verifier = "nospace"
    return _make_task(task_name, examples, split, verifier, file)


def _array_element_lines(text: str, key: str) -> list[int]:
    """1-based line of each element of the top-level array `key` in valid JSON `text`."""
    match = re.search(rf'"{re.escape(key)}"\s*:\s*\[', text)
    if match is None:
        return []
    decoder, pos, lines = json.JSONDecoder(), match.end(), []
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return lines
        lines.append(text.count("\n", 0, pos) + 1)
        try:
            _, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return lines


# --- generic JSONL -------------------------------------------------------------------

def load_jsonl(
    path: str | os.PathLike,
    name: str | None = None,
    split: str = "test",
    verifier: str = "auto",
    question_key: str = "question",
    answer_key: str = "answer",
) -> DatasetTask:
    """One JSON object per line; other keys go to meta ("options": {"A": ...} for choices).

    Blank lines are skipped; an "id" key, when present, names the example.
    """
    file = Path(path)
    task_name = name or file.stem
    examples = [
        _jsonl_example(task_name, file, line_number, record, question_key, answer_key)
        for line_number, record in _jsonl_records(file)
    ]
    return _make_task(task_name, examples, split, verifier, file)


def _jsonl_records(file: Path) -> Iterable[tuple[int, Any]]:
    for line_number, line in enumerate(_read_text(file).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield line_number, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{file}:{line_number}:{e.colno}: invalid JSON: {e.msg}") from None


def _jsonl_example(
    task_name: str, file: Path, line_number: int, record: Any, question_key: str, answer_key: str
) -> Example:
    where = f"{file}:{line_number}"
    if not isinstance(record, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
    question, answer = record.get(question_key), record.get(answer_key)
    if not isinstance(question, str) or not question.strip():
        raise DataFormatError(f"{where}: missing or empty {question_key!r} (keys: {sorted(record)})")
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        raise DataFormatError(f"{where}: missing or empty {answer_key!r} (keys: {sorted(record)})")
    meta = {k: v for k, v in record.items() if k not in (question_key, answer_key, "id")}
    if "options" in meta and not isinstance(meta["options"], dict):
        raise DataFormatError(f"{where}: \"options\" must map letters to option texts")
    example_id = str(record.get("id", f"{task_name}/{line_number}"))
    return Example(task=task_name, id=example_id, question=question.strip(), answer=answer, meta=meta)
