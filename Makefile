# Two commands set up and use everything on a fresh machine: `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0

.PHONY: install demo demo-rl test test-slow bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)        # the CPU build first, so no CUDA wheels are pulled
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rlhfscale study run configs/quickstart.yaml

demo-rl: $(STAMP)
	$(VENV)/bin/rlhfscale demo

test: $(STAMP)
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

bench: $(STAMP)
	$(VENV)/bin/rlhfscale bench rollout

clean:
	rm -rf runs .pytest_cache
