# marketsync: `make run` starts the service, `make test` runs every test.
# Both create or refresh .venv from pyproject.toml first (fast when nothing changed).

PYTHON ?= python3
# Test processes: the suite waits on subprocesses, sockets and browsers more than it computes, so
# four workers keep two cores busy. Each test file runs whole on one worker (--dist loadfile).
TEST_WORKERS ?= 4
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test faults venv bench soak emulators clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip setuptools wheel
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/marketsync run

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

faults: $(STAMP)  ## the fault suite alone (also part of `make test`)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile tests/faults $(PYTEST_ARGS)

emulators: $(STAMP)
	$(BIN)/marketsync emulators

bench: $(STAMP)  ## every benchmark but the 10-minute soak (`make soak`)
	@for b in bench/*.py; do case $$b in */__init__.py|*/common.py|*/soak.py) ;; *) $(BIN)/python -m bench.$$(basename $$b .py) || exit 1;; esac; done

soak: $(STAMP)
	$(BIN)/python -m bench.soak --minutes 10

clean:
	rm -rf $(VENV) var
