# The two commands a newcomer needs: `make demo` and `make test` (both install first).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= runs/demo

.PHONY: install test lint demo world clean

install: $(STAMP)

# torch goes in first, pinned to the CPU build that lies on local disk: a bare `torch`
# requirement with no torch installed would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: install lint
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check safealign tests benchmarks
	$(VENV)/bin/ruff format --check safealign tests benchmarks

demo: install
	$(VENV)/bin/safealign demo --out $(OUT)

world: install
	$(VENV)/bin/safealign world export --out $(OUT)/world

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
