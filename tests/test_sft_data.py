"""SFT data: the assistant-only loss mask (checked by decoding), packing, and the
resumable batch iterator. A tiny byte-level BPE tokenizer with a Qwen-like chat
template is trained here (no hub access)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from r1ci_jax.sft.packing import SFTBatches, build_rows, truncate
from r1ci_jax.sft.tokenize import ConversationError, read_conversations, tokenize_conversation

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def conversation(a: int, b: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "Use ```python blocks; answer as <<<x>>>."},
        {"role": "user", "content": f"What is {a} * {b}?"},
        {"role": "assistant", "content": f"Let me compute it.\n```python\nprint({a} * {b})\n```"},
        {"role": "tool", "content": f"Code Execution Results:\n{a * b}\n"},
        {"role": "assistant", "content": f"The product is <<<{a * b}>>>"},
    ]


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [m["content"] for a in range(12) for m in conversation(a, a + 3)] * 3
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def test_mask_covers_exactly_the_assistant_text(tokenizer):
    messages = conversation(6, 7)
    ids, mask = tokenize_conversation(tokenizer, messages)
    assert ids.dtype == np.int32 and mask.shape == ids.shape
    # The ids are the template's own tokenization of the whole conversation.
    assert ids.tolist() == list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
    on = np.flatnonzero(mask)
    runs = np.split(on, np.flatnonzero(np.diff(on) > 1) + 1)
    decoded = [tokenizer.decode(ids[r].tolist()) for r in runs]
    assert decoded == [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
    untrained = tokenizer.decode(ids[mask == 0].tolist())
    for m in messages:
        if m["role"] != "assistant":
            assert m["content"] in untrained  # prompt and tool output are never trained on
    assert "Code Execution Results" not in tokenizer.decode(ids[mask == 1].tolist())


def test_end_of_turn_can_be_left_out(tokenizer):
    ids, mask = tokenize_conversation(tokenizer, conversation(2, 3), end_of_turn=None)
    assert tokenizer.decode(ids[mask == 1].tolist()) == "Let me compute it.\n```python\nprint(2 * 3)\n```" \
                                                       "The product is <<<6>>>"


def test_bad_trajectories_name_file_and_line(tmp_path, tokenizer):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"messages": conversation(1, 2)}) + "\n"
                    + json.dumps({"messages": [{"role": "robot", "content": "hi"}]}) + "\n")
    with pytest.raises(ConversationError, match=r"bad.jsonl:2: messages\[0\] must be"):
        read_conversations(path)
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(ConversationError, match="bad.jsonl:1: no assistant message"):
        read_conversations(path)
    tokenizer_without_template = make_tokenizer()
    tokenizer_without_template.chat_template = None
    with pytest.raises(ConversationError, match="no chat template"):
        tokenize_conversation(tokenizer_without_template, conversation(1, 2))


def examples():
    rng = np.random.default_rng(0)
    out = []
    for n in (5, 9, 3, 7, 4, 6, 2, 8):
        ids = rng.integers(3, 50, n).astype(np.int32)
        mask = (rng.random(n) < 0.5).astype(np.int32)
        mask[0] = 1  # must be dropped: a segment's first token has no prediction
        out.append((ids, mask))
    return out


@pytest.mark.parametrize("packing", [True, False])
def test_rows_keep_every_token_in_its_own_segment(packing):
    exs = examples()
    rows = build_rows(exs, seq_len=12, pad_id=0, packing=packing)
    assert len(rows["tokens"]) == (5 if packing else 8)
    found = []
    for r in range(len(rows["tokens"])):
        for seg in range(1, rows["segment_ids"][r].max() + 1):
            at = np.flatnonzero(rows["segment_ids"][r] == seg)
            assert np.array_equal(rows["positions"][r, at], np.arange(len(at)))
            assert rows["loss_mask"][r, at[0]] == 0
            found.append((rows["tokens"][r, at], rows["loss_mask"][r, at]))
    assert len(found) == len(exs)
    for ids, mask in exs:
        match = [f for f in found if np.array_equal(f[0], ids)]
        assert match and np.array_equal(match[0][1][1:], mask[1:])
    assert np.all(rows["loss_mask"][rows["segment_ids"] == 0] == 0)


def test_truncate_counts_cut_conversations():
    kept, cut = truncate(examples(), 6)
    assert cut == 3 and max(len(ids) for ids, _ in kept) == 6


def test_batches_resume_from_state_across_epochs():
    it = SFTBatches(examples(), batch_size=2, seq_len=12, pad_id=0, packing=True, seed=3)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(4)]  # crosses into the next epoch
    assert it.epoch >= 1
    fresh = SFTBatches(examples(), batch_size=2, seq_len=12, pad_id=0, packing=True, seed=3)
    fresh.set_state(state)
    for want in expected:
        got = next(fresh)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
