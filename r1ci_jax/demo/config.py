"""DemoConfig: every knob of `r1ci demo` (configs/demo.yaml mirrors these defaults)."""
from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class DemoTask:
    task: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    # share of SFT trajectories (weight x sft_examples_per_task) and of GRPO prompts
    weight: float = 1.0
    # share of its SFT trajectories that state the answer without code, as a text-only
    # reasoner would: the SFT policy then calls the interpreter only on some questions,
    # and GRPO's reward has a tool-use decision to learn (the R1-CI setting)
    direct_share: float = 0.0


@dataclasses.dataclass
class DemoConfig:
    # tasks where code clearly helps; the same knobs for training and held-out evaluation
    # Half of each task's SFT trajectories answer without code, so GRPO has the R1-CI
    # lesson to learn: when computing with the interpreter pays.
    tasks: list[DemoTask] = dataclasses.field(default_factory=lambda: [
        DemoTask("multiplication", {"digits_a": 3, "digits_b": 3}, direct_share=0.5),
        # Letters no task wording uses: with the tokenizer's frequency floor each stays one
        # token, so a string copies at a constant offset (lowercase random pairs got merged).
        DemoTask("letter_count", {"length": 16, "alphabet": "ABDFGIJKLMNOPQSTUVWXYZ"}, direct_share=0.5),
    ])
    system_prompt: str = "none"
    sft_examples_per_task: int = 1000
    vocab_size: int = 384
    # model: a small Qwen2 architecture
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    # std of the random init: with 0.02 (HF's default) SFT sat on a loss plateau for 200 to
    # 600+ steps before the copy-from-the-question circuit formed; 0.06 left it by step ~80
    # for every seed tried (bench/RESULTS.md, demo fifth session)
    init_std: float = 0.06
    # SFT
    sft_steps: int = 450
    sft_batch_size: int = 16
    sft_seq_len: int = 256
    sft_learning_rate: float = 3e-3
    # Adam's second-moment decay: 0.95 with lr 3e-3 trains to a lower loss than 0.999 with
    # 5e-3 once the copy circuit has formed (bench/RESULTS.md, demo fourth and fifth sessions)
    sft_adam_b2: float = 0.95
    # GRPO
    grpo_steps: int = 20
    grpo_prompts_per_step: int = 16
    grpo_group_size: int = 4
    grpo_learning_rate: float = 5e-5
    # rollouts sample at this temperature and the policy loss uses the same one
    grpo_temperature: float = 1.0
    max_total_tokens: int = 64
    max_len: int = 160
    # evaluation
    eval_n: int = 100
    eval_seed: int = 1000
    executor_workers: int = 2
    seed: int = 0

    @classmethod
    def quick(cls) -> "DemoConfig":
        """Toy scale for tests: every phase runs, nothing is expected to be learned."""
        return cls(tasks=[DemoTask("multiplication", {"digits_a": 2, "digits_b": 2}),
                          DemoTask("letter_count", {"length": 6}, direct_share=0.5)],
                   sft_examples_per_task=40, vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=1,
                   num_heads=2, num_kv_heads=1, sft_steps=3, sft_batch_size=8, sft_seq_len=256,
                   grpo_steps=1, grpo_prompts_per_step=4, grpo_group_size=2, max_total_tokens=24, max_len=128,
                   eval_n=2)
