"""The end-to-end CPU demo: tokenizer, SFT on executor-made trajectories, GRPO, evaluation."""
