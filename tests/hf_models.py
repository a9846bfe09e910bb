"""Tiny random transformers Qwen2 models, saved locally (no hub access)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def make_hf_model(seed: int = 0, **overrides):
    """A random Qwen2ForCausalLM in float32 with every tensor random (norms and biases too)."""
    import torch
    import transformers

    kwargs = dict(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                  rope_theta=10000.0, max_position_embeddings=512, eos_token_id=1, bos_token_id=0)
    kwargs.update(overrides)
    cfg = transformers.Qwen2Config(**kwargs)
    torch.manual_seed(seed)
    model = transformers.Qwen2ForCausalLM(cfg).eval().to(torch.float32)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model


def save_hf_model(model, path: Path, dtype=None, **kwargs) -> Path:
    import torch
    if dtype is not None:
        model = model.to(getattr(torch, dtype))
    model.save_pretrained(str(path), **kwargs)
    return Path(path)


def hf_logits(model, tokens: np.ndarray, attention_mask: np.ndarray | None = None,
              position_ids: np.ndarray | None = None) -> np.ndarray:
    import torch
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(tokens, dtype=torch.long),
                    attention_mask=None if attention_mask is None else torch.as_tensor(attention_mask),
                    position_ids=None if position_ids is None else torch.as_tensor(position_ids, dtype=torch.long))
    return out.logits.float().numpy()
