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
STAMP := $(VENV)/.installed

.PHONY: install demo lint test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[test,tools,trackers,peft]' $(CHECKED_SPEC)
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

# ruff (config in pyproject.toml [tool.ruff]): unused names, long lines, bugbear; `make test` runs it first.
lint: $(STAMP)
	$(PY) -m ruff check src tests bench examples

# Two workers (one per core); each test file runs on one worker, so its shared runs are trained once.
test: lint
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=25

test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow"

bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf runs .pytest_cache
