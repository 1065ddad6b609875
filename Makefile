# Two entry points, both self-installing into .venv with the pinned constraints:
#   make quickstart   the whole pipeline on a small synthetic dataset (< 5 min on 2 cores)
#   make test         the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: quickstart test install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev,accel]"
	$(BIN)/rayrec build-kernels --optional
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/rayrec quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) quickstart-out .pytest_cache
