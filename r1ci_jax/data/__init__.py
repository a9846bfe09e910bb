"""Training data: task mixtures, Grain prompt pipelines, and the curriculum.

    mixture.py    TaskSpec / MixtureConfig (YAML), build_tasks
    tokenize.py   chat-template rendering and padding
    pipeline.py   DataConfig, build_prompt_dataset (grain; deterministic, sharded, resumable)
    curriculum.py pass rates -> improvement potential 4p(1-p) -> stage mixture files

Submodules are imported directly (`from r1ci_jax.data.pipeline import ...`) so that
using the curriculum does not import grain.
"""
