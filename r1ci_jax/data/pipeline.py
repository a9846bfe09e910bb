"""Grain pipeline of prompt batches for GRPO: mix tasks, shard per host, repeat G times.

Stream construction (all index-based, so deterministic and resumable from an index):
  1. each task is an endless MapDataset of examples: a finite split is shuffled and
     reshuffled every epoch; a generated task maps index -> example(index) directly;
  2. `MapDataset.mix` interleaves the tasks in proportion to their weights; position k
     of that stream is global prompt k, and k is the prompt's group id;
  3. global step t uses prompts [t*P, (t+1)*P) for P = prompts_per_batch; host h of n
     takes the contiguous chunk h of P/n of them, so hosts never overlap and the union
     over hosts is exactly what a single host would see;
  4. each prompt is rendered with the tokenizer's chat template; a batch holds its
     P/n prompts, each repeated group_size times in a row.

Iterate with `it = iter(dataset)`; `it.get_state()` is a small dict to checkpoint and
`it.set_state(state)` on a fresh iterator resumes with the same next batches.
"""
from __future__ import annotations

import dataclasses
import hashlib
import sys
from typing import Any, Mapping, Sequence

import grain
import numpy as np

from r1ci_jax.config import ConfigError
from r1ci_jax.data.mixture import MixtureConfig, build_tasks, load_mixture, task_weights, validate_mixture
from r1ci_jax.data.tokenize import PADDING_SIDES, encode_prompt, pad_sequences, pad_token_id
from r1ci_jax.tasks import Example, Task
from r1ci_jax.tasks.protocol import SYSTEM_PROMPT_STYLES

# Length of a generated task's index space: effectively endless.
_ENDLESS = sys.maxsize


@dataclasses.dataclass
class DataConfig:
    """Prompt-batch settings; give the mixture inline or as a stage/mixture YAML file."""

    mixture: MixtureConfig | None = None
    mixture_file: str | None = None
    split: str = "train"
    seed: int = 0
    prompts_per_batch: int = 8  # global, over all hosts
    group_size: int = 8  # G: completions sampled per prompt
    max_prompt_tokens: int = 512
    system_prompt: str = "default"  # protocol style: default | short | none
    padding_side: str = "left"
    read_threads: int = 1  # grain prefetch threads; 0 reads in the consuming thread
    prefetch_batches: int = 4


def resolve_mixture(config: DataConfig) -> MixtureConfig:
    if (config.mixture is None) == (config.mixture_file is None):
        raise ConfigError("data: set exactly one of `mixture` (inline) and `mixture_file` (YAML path)")
    if config.mixture_file is not None:
        return load_mixture(config.mixture_file)
    validate_mixture(config.mixture, "data.mixture")
    return config.mixture


def _check_config(config: DataConfig, shard_count: int) -> None:
    if config.prompts_per_batch < 1 or config.group_size < 1:
        raise ConfigError(
            f"data: prompts_per_batch and group_size must be >= 1, got {config.prompts_per_batch}, {config.group_size}"
        )
    if config.prompts_per_batch % shard_count:
        raise ConfigError(
            f"data.prompts_per_batch={config.prompts_per_batch} is not divisible by the {shard_count} hosts"
        )
    if config.system_prompt not in SYSTEM_PROMPT_STYLES:
        raise ConfigError(f"data.system_prompt: {config.system_prompt!r} is not one of {list(SYSTEM_PROMPT_STYLES)}")
    if config.padding_side not in PADDING_SIDES:
        raise ConfigError(f"data.padding_side: {config.padding_side!r} is not one of {list(PADDING_SIDES)}")


def _derived_seed(seed: int, label: str) -> int:
    digest = hashlib.blake2b(f"{seed}|{label}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big")


def task_stream(task: Task, split: str, seed: int) -> grain.MapDataset:
    """Endless MapDataset of `task`'s examples in `split`."""
    size = task.size(split)
    if size == 0:
        raise ConfigError(f"task {task.name!r} has no examples in split {split!r}")
    if size is None:
        return grain.MapDataset.range(_ENDLESS).map(lambda i: task.example(i, seed, split))
    indices = grain.MapDataset.range(size).shuffle(seed=_derived_seed(seed, task.name)).repeat()
    return indices.map(lambda i: task.example(i, seed, split))


class _HostChunks(grain.MapDataset):
    """Host `shard_index`'s prompts: chunk `shard_index` of every global batch."""

    def __init__(self, parent: grain.MapDataset, global_batch: int, shard_index: int, shard_count: int):
        super().__init__(parent)
        self._local = global_batch // shard_count
        self._global = global_batch
        self._offset = shard_index * self._local
        self._length = len(parent) // global_batch * self._local

    def __len__(self) -> int:
        return self._length

    def global_index(self, index: int) -> int:
        step, position = divmod(index, self._local)
        return step * self._global + self._offset + position

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        global_index = self.global_index(index)
        return {"group_id": global_index, "example": self._parent[global_index]}

    def __str__(self) -> str:
        return f"_HostChunks(local={self._local}, global={self._global}, offset={self._offset})"


def _prepare(element: dict[str, Any], tasks: Mapping[str, Task], config: DataConfig, tokenizer: Any) -> dict[str, Any]:
    example: Example = element["example"]
    messages = tasks[example.task].prompt(example, style=config.system_prompt)
    prepared = {**element, "messages": messages}
    if tokenizer is not None:
        ids = encode_prompt(tokenizer, messages)
        if len(ids) > config.max_prompt_tokens:
            raise ValueError(
                f"prompt of {example.id} has {len(ids)} tokens > data.max_prompt_tokens={config.max_prompt_tokens}"
            )
        prepared["prompt_ids"] = ids
    return prepared


def _collate(elements: Sequence[dict[str, Any]], config: DataConfig, pad_id: int | None) -> dict[str, Any]:
    """Repeat each prompt group_size times in a row; arrays for ids, lists for the rest."""
    g = config.group_size
    rows = [e for e in elements for _ in range(g)]
    batch: dict[str, Any] = {
        "group_ids": np.asarray([e["group_id"] for e in rows], dtype=np.int64),
        "tasks": [e["example"].task for e in rows],
        "examples": [e["example"] for e in rows],
        "messages": [e["messages"] for e in rows],
    }
    if pad_id is not None:
        ids, mask = pad_sequences(
            [e["prompt_ids"] for e in rows], config.max_prompt_tokens, pad_id, config.padding_side
        )
        batch["input_ids"], batch["attention_mask"] = ids, mask
    return batch


def jax_shard() -> tuple[int, int]:
    """(this host's index, number of hosts) from jax."""
    import jax

    return jax.process_index(), jax.process_count()


def build_prompt_dataset(
    config: DataConfig,
    tokenizer: Any | None = None,
    *,
    shard_index: int | None = None,
    shard_count: int | None = None,
) -> grain.IterDataset:
    """Endless IterDataset of this host's prompt batches.

    Each batch has `prompts_per_batch / shard_count * group_size` rows:
      group_ids [rows] int64     global prompt index (equal within a group)
      tasks, examples, messages  per-row lists (task label, Example, chat messages)
      input_ids, attention_mask  [rows, max_prompt_tokens] int32, when a tokenizer is given
    Shards default to jax's process index and count. To score rows, build the same
    tasks with `build_tasks(resolve_mixture(config))` and use `tasks[row_task]`.
    """
    if (shard_index is None) != (shard_count is None):
        raise ValueError("give both shard_index and shard_count, or neither")
    if shard_index is None:
        shard_index, shard_count = jax_shard()
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} out of range for {shard_count} shards")
    _check_config(config, shard_count)
    mixture = resolve_mixture(config)
    built = build_tasks(mixture)
    weights = task_weights(mixture, built)
    streams = [task_stream(built[label], config.split, config.seed) for label in weights]
    mixed = streams[0] if len(streams) == 1 else grain.MapDataset.mix(streams, list(weights.values()))
    pad_id = pad_token_id(tokenizer) if tokenizer is not None else None
    local = (
        _HostChunks(mixed, config.prompts_per_batch, shard_index, shard_count)
        .map(lambda element: _prepare(element, built, config, tokenizer))
        .batch(
            config.prompts_per_batch // shard_count,
            drop_remainder=True,
            batch_fn=lambda elements: _collate(elements, config, pad_id),
        )
    )
    read = grain.ReadOptions(num_threads=config.read_threads, prefetch_buffer_size=config.prefetch_batches)
    return local.to_iter_dataset(read)
