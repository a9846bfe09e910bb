"""Shared pytest setup: 8 simulated CPU devices, float32 matmuls, tiny HF model fixtures."""
import os

# Must be set before jax is imported anywhere (Makefile sets it too).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: slower checks, run in bench rather than make test")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("R1CI_RUN_SLOW"):
        return
    skip = pytest.mark.skip(reason="slow: set R1CI_RUN_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
