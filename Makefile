# `make demo` runs the built-in demo; `make test` runs the test suite. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
export PYSPARK_PYTHON := $(abspath $(PY))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PY))

.PHONY: setup demo test test-quick photos clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@bash infra/check-java.sh
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	@touch $@

demo: setup
	$(VENV)/bin/sparkvision run

photos:
	@bash tests/fetch_photos.sh .cache/photos

test: setup photos
	$(VENV)/bin/pytest

test-quick: setup photos
	$(VENV)/bin/pytest -m "not slow"

clean:
	rm -rf runs .pytest_cache spark-warehouse
