# The two README commands: `make demo` and `make test`. Both create .venv and install into it first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first and pinned: an unpinned torch pulled in by transformers would fetch a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[test,tools,trackers,peft]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

# Two workers (one per core); each test file runs on one worker, so its shared runs are trained once.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=25

test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow"

bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf runs .pytest_cache
