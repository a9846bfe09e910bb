"""Pallas kernels (installed as r1ci_jax.kernels), each beside its pure-JAX reference."""
