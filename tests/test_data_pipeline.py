"""Grain prompt pipeline: determinism, per-host sharding, resume, tokenization, mixing."""
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from r1ci_jax.config import ConfigError
from r1ci_jax.data.mixture import MixtureConfig, TaskSpec, build_tasks, load_mixture, mixture_from_dict
from r1ci_jax.data.pipeline import DataConfig, build_prompt_dataset, resolve_mixture
from r1ci_jax.data.tokenize import encode_prompt, pad_sequences, render_prompt
from r1ci_jax.tasks import get_task, split_of

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "curriculum"

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    """A tiny byte-level BPE with a chat template, trained here (no downloads)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from r1ci_jax.tasks.protocol import SHORT_SYSTEM_PROMPT, SYSTEM_PROMPT

    corpus = [SYSTEM_PROMPT, SHORT_SYSTEM_PROMPT] + [
        get_task(name).example(i).question for name in ("multiplication", "sorting", "letter_count") for i in range(20)
    ]
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", eos_token="<|im_end|>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def mixture(*specs):
    return MixtureConfig(tasks=list(specs))


MIX = mixture(
    TaskSpec("multiplication", weight=2.0, options={"digits_a": 3, "digits_b": 2}),
    TaskSpec("sorting", weight=1.0, options={"count": 4}),
    TaskSpec("letter_count", weight=1.0, options={"length": 12}),
)


def config(**overrides):
    settings = dict(mixture=MIX, prompts_per_batch=8, group_size=3, max_prompt_tokens=512, read_threads=0, seed=5)
    settings.update(overrides)
    return DataConfig(**settings)


def take(dataset, n, state=None):
    it = iter(dataset)
    if state is not None:
        it.set_state(state)
    return [next(it) for _ in range(n)], it


def questions(batch):
    return [e.question for e in batch["examples"]]


def test_batch_layout_and_groups(tokenizer):
    (batch,), _ = take(build_prompt_dataset(config(), tokenizer, shard_index=0, shard_count=1), 1)
    rows = 8 * 3
    assert batch["input_ids"].shape == (rows, 512) and batch["input_ids"].dtype == np.int32
    assert batch["attention_mask"].shape == (rows, 512)
    assert batch["group_ids"].tolist() == [g for g in range(8) for _ in range(3)]
    for start in range(0, rows, 3):  # every group is G copies of one prompt
        group = slice(start, start + 3)
        assert len(set(questions(batch)[group])) == 1
        assert (batch["input_ids"][group] == batch["input_ids"][start]).all()
    # left padding: each row ends with the assistant header of its own prompt
    row = batch["input_ids"][0][batch["attention_mask"][0] == 1].tolist()
    assert row == encode_prompt(tokenizer, batch["messages"][0])
    assert batch["attention_mask"][0, -1] == 1 and batch["attention_mask"][0, 0] == 0
    assert tokenizer.decode(row).endswith("<|im_start|>assistant\n")
    assert set(batch["tasks"]) <= {"multiplication", "sorting", "letter_count"}


def test_deterministic_across_builds(tokenizer):
    first, _ = take(build_prompt_dataset(config(), tokenizer, shard_index=0, shard_count=1), 3)
    second, _ = take(build_prompt_dataset(config(), tokenizer, shard_index=0, shard_count=1), 3)
    for a, b in zip(first, second):
        assert questions(a) == questions(b)
        np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
    other, _ = take(build_prompt_dataset(config(seed=6), tokenizer, shard_index=0, shard_count=1), 1)
    assert questions(other[0]) != questions(first[0])


def test_hosts_do_not_overlap_and_cover_the_global_batch():
    steps = 4
    single, _ = take(build_prompt_dataset(config(), shard_index=0, shard_count=1), steps)
    shards = [take(build_prompt_dataset(config(), shard_index=h, shard_count=4), steps)[0] for h in range(4)]
    for step in range(steps):
        per_host = [shards[h][step] for h in range(4)]
        ids = [set(b["group_ids"].tolist()) for b in per_host]
        assert all(len(s) == 2 for s in ids)  # 8 prompts / 4 hosts
        assert not set.intersection(*ids) and all(not (a & b) for a, b in itertools.combinations(ids, 2))
        union = sorted(set().union(*ids))
        assert union == sorted(set(single[step]["group_ids"].tolist()))
        merged = [q for b in per_host for q in questions(b)]
        assert merged == questions(single[step])


@pytest.mark.parametrize("read_threads", [0, 2])
def test_resume_from_saved_state_gives_same_batches(tokenizer, read_threads):
    dataset = build_prompt_dataset(config(read_threads=read_threads), tokenizer, shard_index=1, shard_count=2)
    it = iter(dataset)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # survives a checkpoint as JSON
    expected = [next(it) for _ in range(3)]
    fresh = build_prompt_dataset(config(read_threads=read_threads), tokenizer, shard_index=1, shard_count=2)
    resumed, _ = take(fresh, 3, state=state)
    for a, b in zip(expected, resumed):
        assert questions(a) == questions(b)
        np.testing.assert_array_equal(a["group_ids"], b["group_ids"])
        np.testing.assert_array_equal(a["input_ids"], b["input_ids"])


def test_mixture_weights_are_respected():
    batches, _ = take(build_prompt_dataset(config(group_size=1, prompts_per_batch=40), shard_index=0, shard_count=1), 3)
    counts = {name: sum(t == name for b in batches for t in b["tasks"]) for name in ("multiplication", "sorting", "letter_count")}
    assert counts == {"multiplication": 60, "sorting": 30, "letter_count": 30}


def test_finite_task_cycles_through_all_examples_each_epoch(tmp_path):
    file = tmp_path / "five.jsonl"
    file.write_text("\n".join(f'{{"question": "q{i}", "answer": "{i}"}}' for i in range(5)) + "\n")
    data = config(mixture=mixture(TaskSpec("jsonl", options={"path": str(file), "split": "train"})),
                  prompts_per_batch=5, group_size=1)
    batches, _ = take(build_prompt_dataset(data, shard_index=0, shard_count=1), 3)
    epochs = [questions(b) for b in batches]
    assert all(sorted(e) == [f"q{i}" for i in range(5)] for e in epochs)
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]  # reshuffled per epoch


def test_no_tokenizer_gives_messages_only():
    (batch,), _ = take(build_prompt_dataset(config(system_prompt="short"), shard_index=0, shard_count=1), 1)
    assert "input_ids" not in batch
    assert batch["messages"][0][0]["role"] == "system" and batch["messages"][0][1]["role"] == "user"


def test_bad_configs_are_named(tokenizer, tmp_path):
    with pytest.raises(ConfigError, match="not divisible by the 3 hosts"):
        build_prompt_dataset(config(), shard_index=0, shard_count=3)
    with pytest.raises(ConfigError, match="exactly one of"):
        build_prompt_dataset(config(mixture=None), shard_index=0, shard_count=1)
    with pytest.raises(ConfigError, match="at least one task"):
        build_prompt_dataset(config(mixture=mixture()), shard_index=0, shard_count=1)
    with pytest.raises(ConfigError, match=r"tasks\[0\].weight: must be > 0"):
        build_prompt_dataset(config(mixture=mixture(TaskSpec("sorting", weight=0))), shard_index=0, shard_count=1)
    with pytest.raises(ConfigError, match="did you mean 'sorting'"):
        build_prompt_dataset(config(mixture=mixture(TaskSpec("sortin"))), shard_index=0, shard_count=1)
    with pytest.raises(ConfigError, match="appears twice"):
        build_prompt_dataset(config(mixture=mixture(TaskSpec("sorting"), TaskSpec("sorting"))), shard_index=0, shard_count=1)
    file = tmp_path / "one.jsonl"
    file.write_text('{"question": "q", "answer": "a"}\n')
    with pytest.raises(ValueError, match="unknown split 'train'; known: \\['test'\\]"):
        spec = TaskSpec("jsonl", options={"path": str(file)})  # loaded as the test split
        build_prompt_dataset(config(mixture=mixture(spec)), shard_index=0, shard_count=1)
    test_only = next(f"q{i}" for i in range(1000) if split_of(f"q{i}") == "test")
    file.write_text(f'{{"question": "{test_only}", "answer": "a"}}\n')
    with pytest.raises(ConfigError, match="no examples in split 'train'"):
        spec = TaskSpec("jsonl", options={"path": str(file), "split": "by_hash"})
        build_prompt_dataset(config(mixture=mixture(spec)), shard_index=0, shard_count=1)
    with pytest.raises(ValueError, match="max_prompt_tokens=8"):
        take(build_prompt_dataset(config(max_prompt_tokens=8), tokenizer, shard_index=0, shard_count=1), 1)


def test_mixture_yaml_round_trip(tmp_path):
    file = tmp_path / "mix.yaml"
    file.write_text(
        "tasks:\n"
        "  - task: multiplication\n    weight: 2\n    options: {digits_a: 3}\n"
        "  - task: multiplication\n    name: multiplication_hard\n    options: {digits_a: 8}\n"
    )
    mix = load_mixture(file)
    tasks = build_tasks(mix)
    assert list(tasks) == ["multiplication", "multiplication_hard"]
    assert resolve_mixture(DataConfig(mixture_file=str(file))) == mix
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['wieght'\]"):
        mixture_from_dict({"tasks": [{"task": "sorting", "wieght": 2}]})


def test_shipped_curriculum_configs_load():
    mix = load_mixture(str(CONFIGS / "synthetic_mixture.yaml"))
    assert len(build_tasks(mix)) == 6


def test_render_and_pad_helpers(tokenizer):
    text = render_prompt(tokenizer, [{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids, mask = pad_sequences([[5, 6], [7]], 3, 0, side="right")
    assert ids.tolist() == [[5, 6, 0], [7, 0, 0]] and mask.tolist() == [[1, 1, 0], [1, 0, 0]]
    with pytest.raises(ValueError, match="more than the padded length"):
        pad_sequences([[1, 2, 3]], 2, 0)
