# The README's commands. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# The demo always uses the embedded SQLite database and eager tasks, whatever the shell or .env
# sets: an empty value wins over .env, and the settings treat it as unset.
DEMO_ENV := env DATABASE_URL= REDIS_URL=

.PHONY: install demo test bench bench-api bench-forecast bench-placement bench-scheduler bench-heartbeats serve clean

$(VENV)/.installed: pyproject.toml agent/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]' -e ./agent
	touch $@

install: $(VENV)/.installed

demo: install
	mkdir -p var
	$(DEMO_ENV) $(BIN)/python manage.py migrate --noinput
	$(DEMO_ENV) $(BIN)/python manage.py import_trace
	$(DEMO_ENV) $(BIN)/python manage.py replay_trace
	$(DEMO_ENV) $(BIN)/python manage.py import_demand
	$(DEMO_ENV) $(BIN)/python manage.py refresh_capacity --propose
	$(DEMO_ENV) $(BIN)/python manage.py demo_users --base-url http://$(HOST):$(PORT)
	$(DEMO_ENV) $(BIN)/python manage.py runserver $(HOST):$(PORT)

serve: install
	$(DEMO_ENV) $(BIN)/python manage.py runserver $(HOST):$(PORT)

test: install
	$(BIN)/pytest

bench: install
	$(DEMO_ENV) $(BIN)/python -m bench.replay --output docs/benchmarks.md

# Backtests the demand forecasts on the shipped series and times a 100-series fleet; writes docs/forecast-helios.svg too.
bench-forecast: install
	$(BIN)/python -m bench.forecast --output docs/benchmarks.md

# Replays the FGD paper's packing protocol for every online policy; writes docs/placement-unallocated.svg too.
bench-placement: install
	$(BIN)/python -m bench.placement --output docs/benchmarks.md

# One scheduling cycle over 10,000 waiting requests on the trace fleet, preemption search included.
bench-scheduler: install
	$(BIN)/python -m bench.scheduler --output docs/benchmarks.md

# Heartbeat ingestion with health evaluation on PostgreSQL, for the trace fleet; needs a local PostgreSQL.
bench-heartbeats: install
	$(BIN)/python -m bench.heartbeats --output docs/benchmarks.md

# Needs a local PostgreSQL; BENCH_ADMIN_DATABASE_URL names another server with the right to create databases.
bench-api: install
	$(BIN)/python -m bench.api --output docs/benchmarks.md

clean:
	rm -rf var .pytest_cache
