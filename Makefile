# Two commands on a fresh machine: `make demo`, `make test`. Both create .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export PYTHONDONTWRITEBYTECODE := 1
export TF_CPP_MIN_LOG_LEVEL := 3

.PHONY: demo test test-slow test-all lint format bench bench-merge bench-checkpoints bench-eval bench-learn clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

demo: $(STAMP)
	$(BIN)/jaxmerge demo

# Two workers, a test file at a time; the tests that join JAX processes over loopback
# take turns so that they never race for a port (tests/conftest.py).
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -n 2 --dist loadfile --durations=15

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python benchmarks/methods.py

bench-merge: $(STAMP)
	$(BIN)/python benchmarks/merge.py

bench-checkpoints: $(STAMP)
	$(BIN)/python benchmarks/checkpoints.py

bench-eval: $(STAMP)
	$(BIN)/python -m benchmarks.evaluate --sizes tiny small

bench-learn: $(STAMP)
	$(BIN)/python -m benchmarks.learn

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
