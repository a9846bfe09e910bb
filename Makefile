# The two README commands: `make demo` and `make test`. Both set up .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# 8 simulated CPU devices so sharding tests run anywhere.
TEST_ENV := XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu

.PHONY: test demo bench venv clean

venv: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -q tests

demo: $(STAMP)
	JAX_PLATFORMS=cpu $(VENV)/bin/r1ci demo

bench: $(STAMP)
	for f in bench/*.py; do JAX_PLATFORMS=cpu $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
