# Every target sets itself up on a fresh machine.
# VENV: where the virtual environment lives. Point it at an existing one
# (make test VENV=/path/to/venv) so torch (~5.5 GB) is not copied again.
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8501

.PHONY: run test test-fast lint format bench screenshots clean

$(VENV)/.installed-run: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(PY) -m streamlit run app.py --server.port $(PORT)

test: $(VENV)/.installed-dev
	$(PY) -m pytest

# The loop while working: everything that trains no model and drives no browser.
test-fast: $(VENV)/.installed-dev
	$(PY) -m pytest -m "not slow and not e2e"

lint: $(VENV)/.installed-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy finetune_core

format: $(VENV)/.installed-dev
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: $(VENV)/.installed-dev
	$(PY) -m benchmarks.run

screenshots: $(VENV)/.installed-dev
	$(PY) scripts/screenshots.py

clean:
	rm -rf artifacts .pytest_cache .ruff_cache
