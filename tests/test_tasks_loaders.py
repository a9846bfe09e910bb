"""Loaders on small fixture folders, the registry's errors, and the reasoning-gym adapter."""
import json
import sys

import pytest

from r1ci_jax.tasks import UnknownTaskError, get_task, list_tasks, register_task, split_of
from r1ci_jax.tasks.loaders import DataFormatError, load_bbh, load_jsonl, load_symbench


def write_symbench(root, samples):
    root.mkdir(parents=True, exist_ok=True)
    for index, (question, solution) in samples.items():
        sample = root / f"sample_{index}"
        sample.mkdir()
        (sample / "question.txt").write_text(question, encoding="utf-8")
        (sample / "solution.json").write_text(json.dumps(solution), encoding="utf-8")
    return root


BBH = {
    "canary": "fixture",
    "examples": [
        {"input": "Is 7 prime? Options:\n- Yes\n- No", "target": "Yes"},
        {"input": "Which is a colour?\nOptions:\n(A) red\n(B) seven", "target": "(A)"},
        {"input": "not ( True ) and ( True ) is", "target": "False"},
        {"input": "((-1 + 2) * 3) =", "target": "3"},
        {"input": "Sort: pear apple", "target": "apple pear"},
    ],
}


def test_symbench_folder(tmp_path):
    root = write_symbench(
        tmp_path / "number_multiply",
        {10: ("What is 12 * 12?", 144), 2: ("What is 3 * 4?", "12"), 1: ("List 1 to 3.", [1, 2, 3])},
    )
    task = load_symbench(root)
    assert task.name == "symbench/number_multiply"
    examples = task.examples(split="test")
    assert [e.question for e in examples] == ["List 1 to 3.", "What is 3 * 4?", "What is 12 * 12?"]  # numeric order
    assert [task.score(a, e) for a, e in zip(["[1, 2, 3]", "12", "144"], examples)] == [1.0, 1.0, 1.0]
    assert [task.score(a, e) for a, e in zip(["[3, 2, 1]", "13", "1440"], examples)] == [0.0, 0.0, 0.0]
    assert get_task("symbench", path=str(root), name="mult").name == "mult"


def test_symbench_unwraps_answer_markers_and_selects_verifier(tmp_path):
    root = write_symbench(tmp_path / "game24", {0: ("Make 24 from 4 7 8 8.", "<<<(7-8/8)*4>>>")})
    task = load_symbench(root, verifier="exact")
    example = task.example(0, split="test")
    assert example.answer == "(7-8/8)*4"
    assert task.score("(7-8/8)*4", example) == 1.0


def test_symbench_errors_name_the_file(tmp_path):
    with pytest.raises(DataFormatError, match="not a folder"):
        load_symbench(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataFormatError, match="no sample_<i>/ folders"):
        load_symbench(empty)
    root = write_symbench(tmp_path / "bad", {0: ("q", 1)})
    (root / "sample_0" / "solution.json").write_text('{\n  "answer": 1,\n  oops\n}')
    with pytest.raises(DataFormatError, match=r"sample_0/solution.json:3:"):
        load_symbench(root)
    root = write_symbench(tmp_path / "noquestion", {0: ("   ", 1)})
    with pytest.raises(DataFormatError, match=r"sample_0/question.txt:1: empty question"):
        load_symbench(root)
    root = write_symbench(tmp_path / "nosolution", {0: ("q", 1)})
    (root / "sample_0" / "solution.json").unlink()
    with pytest.raises(DataFormatError, match=r"solution.json: file not found"):
        load_symbench(root)


def test_bbh_file(tmp_path):
    file = tmp_path / "mixed.json"
    file.write_text(json.dumps(BBH, indent=2))
    task = load_bbh(file, split="train")
    assert task.name == "bbh/mixed" and task.size("train") == 5
    ex = task.examples(split="train")
    assert ex[1].meta["options"] == {"A": "red", "B": "seven"}
    good = ["yes", "A", "false", "3.0", "Apple pear"]
    bad = ["no", "(B)", "True", "4", "pear apple"]
    assert [task.score(a, e) for a, e in zip(good, ex)] == [1.0] * 5
    assert [task.score(a, e) for a, e in zip(bad, ex)] == [0.0] * 5
    assert task.score("red", ex[1]) == 1.0
    with pytest.raises(ValueError, match="unknown split 'test'"):
        task.examples(split="test")


def test_bbh_dyck_ignores_spacing(tmp_path):
    file = tmp_path / "dyck_languages.json"
    file.write_text(json.dumps({"examples": [{"input": "Complete: [ ( <", "target": "> ) ]"}]}))
    task = load_bbh(file)
    assert task.verifier == "nospace"
    assert task.score(">)]", task.example(0, split="test")) == 1.0


def test_bbh_errors_name_file_and_line(tmp_path):
    file = tmp_path / "broken.json"
    file.write_text('{\n  "examples": [\n    {"input": "a", "target": "b"},\n    {"input": "c" "target": "d"}\n  ]\n}')
    with pytest.raises(DataFormatError, match=r"broken.json:4:"):
        load_bbh(file)
    file.write_text('{\n  "examples": [\n    {"input": "a", "target": "b"},\n\n    {"input": "c"}\n  ]\n}')
    with pytest.raises(DataFormatError, match=r"broken.json:5: example 1 has no \"target\""):
        load_bbh(file)
    file.write_text('{"data": []}')
    with pytest.raises(DataFormatError, match=r"broken.json:1: expected an object with an \"examples\" list"):
        load_bbh(file)
    file.write_text('{"examples": []}')
    with pytest.raises(DataFormatError, match="no examples found"):
        load_bbh(file)


def test_jsonl_file_and_split_by_hash(tmp_path):
    file = tmp_path / "arith.jsonl"
    rows = [{"question": f"What is {i} + {i}?", "answer": str(2 * i), "id": f"q{i}"} for i in range(60)]
    rows.append({"question": "Pick.\n(A) x\n(B) y", "answer": "B", "options": {"A": "x", "B": "y"}})
    file.write_text("\n".join(json.dumps(r) for r in rows[:30]) + "\n\n" + "\n".join(json.dumps(r) for r in rows[30:]))
    task = load_jsonl(file, split="by_hash", name="arith")
    assert task.size("train") + task.size("test") == 61
    train, test = task.examples(split="train"), task.examples(split="test")
    assert all(split_of(e.question) == "train" for e in train) and all(split_of(e.question) == "test" for e in test)
    first = next(e for e in train + test if e.id == "q7")
    assert task.score("14", first) == 1.0 and task.score("15", first) == 0.0
    choice = next(e for e in train + test if "Pick" in e.question)
    assert task.score("y", choice) == 1.0 and task.score("(A)", choice) == 0.0


def test_jsonl_custom_keys(tmp_path):
    file = tmp_path / "custom.jsonl"
    file.write_text(json.dumps({"prompt": "2+2?", "target": 4}) + "\n")
    task = load_jsonl(file, question_key="prompt", answer_key="target", verifier="numeric")
    assert task.score("4.0", task.example(0, split="test")) == 1.0


def test_jsonl_errors_name_file_and_line(tmp_path):
    file = tmp_path / "bad.jsonl"
    file.write_text('{"question": "a", "answer": "b"}\n\n{"question": "c", "answer": \n')
    with pytest.raises(DataFormatError, match=r"bad.jsonl:3:\d+: invalid JSON"):
        load_jsonl(file)
    file.write_text('{"question": "a", "answer": "b"}\n{"q": "c", "answer": "d"}\n')
    with pytest.raises(DataFormatError, match=r"bad.jsonl:2: missing or empty 'question'"):
        load_jsonl(file)
    file.write_text('[1, 2]\n')
    with pytest.raises(DataFormatError, match=r"bad.jsonl:1: expected a JSON object"):
        load_jsonl(file)
    file.write_text("\n\n")
    with pytest.raises(DataFormatError, match="no examples found"):
        load_jsonl(file)
    with pytest.raises(DataFormatError, match="file not found"):
        load_jsonl(tmp_path / "nope.jsonl")
    file.write_text('{"question": "a", "answer": "b"}\n')
    with pytest.raises(ValueError, match="unknown verifier"):
        load_jsonl(file, verifier="fuzzy")
    with pytest.raises(ValueError, match="split must be one of"):
        load_jsonl(file, split="dev")


def test_unknown_task_lists_close_names():
    with pytest.raises(UnknownTaskError, match="did you mean 'multiplication'"):
        get_task("multiplicaton")
    with pytest.raises(UnknownTaskError, match="did you mean 'game24'"):
        get_task("game_24")
    with pytest.raises(UnknownTaskError, match="unknown task 'zzz'"):
        get_task("zzz")


def test_list_and_register_tasks():
    names = list_tasks()
    for name in ("multiplication", "letter_count", "sorting", "modular_arithmetic", "game24", "date_arithmetic"):
        assert name in names
    assert {"symbench", "bbh", "jsonl"} <= set(names)
    with pytest.raises(ValueError, match="is taken"):
        register_task("sorting", lambda: None)


def test_loader_needs_path():
    with pytest.raises(ValueError, match=r"task 'bbh': missing option\(s\) \['path'\]"):
        get_task("bbh")


def test_reasoning_gym_absent_gives_install_hint(monkeypatch):
    from r1ci_jax.tasks import reasoning_gym_tasks

    reasoning_gym_tasks.reasoning_gym_datasets.cache_clear()
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # import now fails
    with pytest.raises(reasoning_gym_tasks.MissingDependencyError, match=r"pip install 'r1ci-jax\[tasks\]'"):
        get_task("rg/leg_counting")
    reasoning_gym_tasks.reasoning_gym_datasets.cache_clear()


def test_reasoning_gym_dataset_as_task():
    pytest.importorskip("reasoning_gym")
    task = get_task("rg/leg_counting", size=50)
    assert task.name == "rg/leg_counting" and task.size("train") == 50
    examples = task.examples(5, seed=1)
    assert examples == task.examples(5, seed=1)
    assert examples != task.examples(5, seed=1, split="test")
    for example in examples:
        assert task.score(example.answer, example) == 1.0
        assert task.score(str(int(example.answer) + 1), example) == 0.0
        assert task.score(None, example) == 0.0
    assert "rg/leg_counting" in list_tasks(include_reasoning_gym=True)
    with pytest.raises(KeyError, match="did you mean rg/leg_counting"):
        get_task("rg/leg_countin")
