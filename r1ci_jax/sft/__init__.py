"""Multi-turn SFT on code-interpreter trajectories.

    tokenize.py    jsonl chats -> token ids + a loss mask that is 1 only on assistant text
    packing.py     rows of fixed length by packing (segment ids) or padding; a resumable
                   batch iterator
    forward.py     the model over packed rows (attention stays inside each segment)
    train_step.py  the masked next-token loss and the jitted, sharded update
    config.py      SFTConfig (YAML)
    loop.py        run_sft: the `r1ci sft` loop (eval, checkpoints, resume)
"""
