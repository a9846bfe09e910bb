"""r1ci-jax: train and run LLMs that reason with a code interpreter, in JAX."""
from setuptools import find_packages, setup

setup(
    name="r1ci-jax",
    version="0.1.0",
    description="R1-Code-Interpreter training (multi-turn SFT + GRPO with a sandboxed executor) in JAX",
    python_requires=">=3.10",
    # The Pallas kernels live in r1ci_jax/kernels/, not in a top-level kernels/ directory:
    # from the repo root such a directory shadows the PyPI `kernels` package that
    # transformers (>= 5.25) imports when loading a model.
    packages=find_packages(include=["r1ci_jax", "r1ci_jax.*"]),
    package_data={"r1ci_jax": ["py.typed", "kernels/*.cc", "kernels/*.h"]},
    install_requires=[
        "jax>=0.6",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.10",
        "transformers>=4.50",
        "safetensors>=0.4",
        "tokenizers>=0.20",
        "numpy>=1.26",
        "pyyaml>=6",
        "tqdm>=4.66",
        "matplotlib>=3.8",
    ],
    extras_require={
        # torch only for parity tests against transformers; pinned to the CPU wheel.
        "test": ["torch==2.13.0", "pytest>=8", "pytest-timeout>=2.3", "sympy>=1.12"],
        "tpu": ["jax[tpu]"],
        "gpu": ["jax[cuda13]"],
        "tasks": ["reasoning-gym>=0.1.20"],
    },
    entry_points={"console_scripts": ["r1ci=r1ci_jax.cli:main"]},
)
