"""Trainer pieces shared by SFT and GRPO.

    optim.py       OptimizerConfig, warmup + cosine schedule, AdamW with global-norm clipping
    state.py       TrainState (step, params, opt_state, rng) and its shardings
    step.py        micro-batching with gradient accumulation, optimizer update
    model.py       ModelSpec: load (HF / Orbax) or randomly init a model onto the mesh
    checkpoint.py  TrainCheckpointer: async Orbax checkpoints of the state + JSON extras
    metrics.py     MetricsWriter: metrics.jsonl + TensorBoard event files (process 0 only)
    tfevents.py    a dependency-free TensorBoard event-file writer
    loop.py        LoopConfig, progress bar, plugin loading, small loop helpers
"""
