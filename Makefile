# The two README commands: `make demo` and `make test`. Both create .venv and install into it first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first and pinned: an unpinned torch pulled in by transformers would fetch a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
# The releases gptresume's private-behaviour checks (src/gptresume/compat.py CHECKED) were made against.
# pyproject.toml admits wider ranges for users (with a warning outside these); the demo and the tests run on the
# checked ones. Pinned because pip's resolver, with the test extras' many dependencies, may otherwise settle on an
# older release (it chose transformers 5.23.0 in a fresh clone).
CHECKED_SPEC ?= "transformers>=5.24,<5.25" "accelerate>=1.15,<1.16"
# Two install stamps: `make demo` installs what the demo needs (torch and gptresume's own dependencies: the demo,
# and `gptresume verify`, the tool it suggests, need nothing else); `make test` adds the test, tools, trackers and
# LoRA extras (pytest, moto, s3fs, matplotlib, tensorboard, wandb, mlflow, peft: several times the packages), also
# after a `make demo`. pip shows what it downloads and installs (no --quiet): a first install takes minutes.
STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test
PIP := $(PY) -m pip install --progress-bar off --no-input

.PHONY: install install-test demo lint test test-fast bench clean

install: $(STAMP)

install-test: $(TEST_STAMP)

$(STAMP): pyproject.toml
	@echo ">>> make: creating $(VENV), then installing what the demo needs: $(TORCH_SPEC) (CPU), then gptresume with transformers, datasets, accelerate, tokenizers and safetensors"
	$(PYTHON) -m venv $(VENV)
	$(PIP) --quiet --upgrade pip
	$(PIP) "$(TORCH_SPEC)"
	$(PIP) -e . $(CHECKED_SPEC)
	@echo ">>> make: $(VENV) holds $$(du -sh $(VENV) | cut -f1) in $$($(PY) -m pip list --format=freeze 2>/dev/null | wc -l) packages"
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	@echo ">>> make: installing the test, tools, trackers and peft extras (pytest, moto, s3fs, ruff, matplotlib, tensorboard, wandb, mlflow, peft)"
	$(PIP) -e '.[test,tools,trackers,peft]' $(CHECKED_SPEC)
	touch $(TEST_STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

# ruff (config in pyproject.toml [tool.ruff]): unused names, long lines, bugbear; `make test` runs it first.
lint: $(TEST_STAMP)
	$(PY) -m ruff check src tests bench examples

# Two workers (one per core); each test file runs on one worker, so its shared runs are trained once.
test: lint
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=25

test-fast: $(TEST_STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow"

bench: $(TEST_STAMP)
	$(PY) bench/run.py

clean:
	rm -rf runs .pytest_cache
