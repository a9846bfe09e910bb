"""Train a small byte-level BPE tokenizer with a Qwen-style chat template (no downloads).

The demo and the tests need a tokenizer that `transformers.AutoTokenizer` loads like a
real Qwen2.5 one. Special tokens follow Qwen: <|endoftext|>, <|im_start|>, <|im_end|>.

The chat template renders code-interpreter tool output inline, inside the assistant
turn, exactly as the rollout appends it (the model's ```python block, then
"Code Execution Results: ..." and the model goes on): a "tool" message adds its
content with no role header, and the assistant turn it interrupts is not closed.
So SFT trajectories and RL episodes present the same text to the model.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

INLINE_TOOL_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- set prev = messages[loop.index0 - 1]['role'] if not loop.first else '' -%}"
    "{%- set next = messages[loop.index0 + 1]['role'] if not loop.last else '' -%}"
    "{%- if message['role'] == 'tool' -%}"
    "{{ message['content'] }}"
    "{%- elif message['role'] == 'assistant' and prev == 'tool' -%}"
    "{{ message['content'] }}{% if next != 'tool' %}<|im_end|>\n{% endif %}"
    "{%- else -%}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "{%- if not (message['role'] == 'assistant' and next == 'tool') %}<|im_end|>\n{% endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif -%}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, min_frequency: int = 2,
                    extra_tokens: Sequence[str] = (), chat_template: str = INLINE_TOOL_CHAT_TEMPLATE) -> Any:
    """A byte-level BPE `PreTrainedTokenizerFast` trained on `texts`.

    extra_tokens: strings kept as single tokens (added tokens, not special, so they
    decode as text), e.g. protocol markers. EOS is <|im_end|> (end of a turn), pad
    is <|endoftext|>, as in Qwen2.5 instruct models.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} is too small for a byte-level BPE (needs >= "
                         f"{256 + len(SPECIAL_TOKENS)})")
    tok = Tokenizer(models.BPE())
    # Digits are single tokens, as in Qwen2.5's tokenizer: numbers then copy digit by digit.
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None,
                                   additional_special_tokens=["<|im_start|>"])
    if extra_tokens:
        fast.add_tokens(list(extra_tokens))
    fast.chat_template = chat_template
    return fast


def save_tokenizer(tokenizer: Any, path: str | os.PathLike) -> None:
    """Write tokenizer files that `AutoTokenizer.from_pretrained(path)` loads."""
    tokenizer.save_pretrained(str(path))
