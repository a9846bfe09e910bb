"""r1ci-jax: R1-Code-Interpreter training and inference in JAX.

Submodules are imported lazily by users (`from r1ci_jax.models.qwen2 import forward`),
so importing the package itself stays cheap (no jax import for the executor's workers).
"""

__version__ = "0.1.0"
