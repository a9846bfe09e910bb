"""Qwen2Config: the architecture figures of a Qwen-2.5 model, and HF config conversion."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# Figures from the public Qwen2.5 base-model config.json files.
_PRESETS: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24,
                         num_heads=14, num_kv_heads=2, rms_norm_eps=1e-6, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28,
                         num_heads=12, num_kv_heads=2, rms_norm_eps=1e-6, tie_word_embeddings=True),
    "qwen2.5-3b": dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_layers=36,
                       num_heads=16, num_kv_heads=2, rms_norm_eps=1e-6, tie_word_embeddings=True),
    "qwen2.5-7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28,
                       num_heads=28, num_kv_heads=4, rms_norm_eps=1e-6, tie_word_embeddings=False),
    "qwen2.5-14b": dict(vocab_size=152064, hidden_size=5120, intermediate_size=13824, num_layers=48,
                        num_heads=40, num_kv_heads=8, rms_norm_eps=1e-5, tie_word_embeddings=False),
    "qwen2.5-32b": dict(vocab_size=152064, hidden_size=5120, intermediate_size=27648, num_layers=64,
                        num_heads=40, num_kv_heads=8, rms_norm_eps=1e-5, tie_word_embeddings=False),
}


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
    """Architecture of a Qwen2-family decoder. Frozen, so it can be a static jit argument.

    dtype is the compute dtype, param_dtype the storage dtype of params
    ("bfloat16" for both on TPU; "float32" in tests).
    """
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int | None = None  # None: hidden_size // num_heads
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False  # rematerialise each layer in the backward pass (saves memory)

    def __post_init__(self) -> None:
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}; "
                                 "set head_dim explicitly")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Qwen2Config.{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ValueError(f"Qwen2Config.{name}={getattr(self, name)!r}; expected one of {sorted(_DTYPES)}")

    @property
    def jnp_dtype(self) -> Any:
        return _DTYPES[self.dtype]

    @property
    def param_jnp_dtype(self) -> Any:
        return _DTYPES[self.param_dtype]

    @property
    def eos_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        return self.eos_token_id if isinstance(self.eos_token_id, tuple) else (self.eos_token_id,)

    def num_params(self) -> int:
        D, F, V, L = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_layers
        H, K, Dh = self.num_heads, self.num_kv_heads, self.head_dim
        attn = D * H * Dh * 2 + D * K * Dh * 2 + (H + 2 * K) * Dh
        per_layer = attn + 3 * D * F + 2 * D
        return V * D * (1 if self.tie_word_embeddings else 2) + L * per_layer + D

    # ------------------------------------------------------------------ presets / HF

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "Qwen2Config":
        """Config of a public Qwen2.5 size, e.g. `Qwen2Config.preset("qwen2.5-7b")` (bf16 by default)."""
        key = name.lower()
        if key not in _PRESETS:
            raise ValueError(f"unknown preset {name!r}; known: {sorted(_PRESETS)}")
        base = {"bos_token_id": 151643, "eos_token_id": 151643, "dtype": "bfloat16", "param_dtype": "bfloat16"}
        return cls(**{**_PRESETS[key], **base, **overrides})

    @staticmethod
    def preset_names() -> list[str]:
        return sorted(_PRESETS)

    @classmethod
    def from_hf(cls, hf: dict[str, Any], **overrides: Any) -> "Qwen2Config":
        """From a transformers Qwen2 config.json dict (rope theta read from either place)."""
        archs = hf.get("architectures") or []
        model_type = hf.get("model_type")
        if model_type not in (None, "qwen2") or any(a not in ("Qwen2ForCausalLM", "Qwen2Model") for a in archs):
            raise ValueError(f"not a Qwen2 model: model_type={model_type!r}, architectures={archs}")
        if hf.get("use_sliding_window"):
            raise ValueError("use_sliding_window=true is not supported (Qwen2.5 models do not use it)")
        missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads") if k not in hf]
        if missing:
            raise ValueError(f"config is missing required key(s) {missing}")
        rope = hf.get("rope_parameters") or {}
        if rope.get("rope_type", "default") != "default" or (hf.get("rope_scaling") or {}).get("type") not in (None, "default"):
            raise ValueError(f"only default RoPE is supported, got rope_parameters={rope} "
                             f"rope_scaling={hf.get('rope_scaling')}")
        theta = rope.get("rope_theta", hf.get("rope_theta", 1_000_000.0))
        kwargs: dict[str, Any] = dict(
            vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            head_dim=hf.get("head_dim"), rope_theta=float(theta),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
            initializer_range=float(hf.get("initializer_range", 0.02)),
            bos_token_id=hf.get("bos_token_id"), eos_token_id=hf.get("eos_token_id"),
            pad_token_id=hf.get("pad_token_id"),
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf(self, torch_dtype: str | None = None) -> dict[str, Any]:
        """A config.json dict that transformers' Qwen2ForCausalLM loads."""
        out: dict[str, Any] = {
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads, "num_key_value_heads": self.num_kv_heads,
            "hidden_act": "silu", "max_position_embeddings": self.max_position_embeddings,
            "initializer_range": self.initializer_range, "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": {"rope_theta": self.rope_theta, "rope_type": "default"},
            "rope_theta": self.rope_theta,  # for transformers < 5
            "tie_word_embeddings": self.tie_word_embeddings, "use_sliding_window": False,
            "attention_dropout": 0.0, "use_cache": True,
            "bos_token_id": self.bos_token_id, "eos_token_id": (list(self.eos_token_id)
                                                                if isinstance(self.eos_token_id, tuple)
                                                                else self.eos_token_id),
            "pad_token_id": self.pad_token_id,
            "dtype": torch_dtype or self.param_dtype,
        }
        if self.head_dim != self.hidden_size // self.num_heads:
            out["head_dim"] = self.head_dim
        return out
