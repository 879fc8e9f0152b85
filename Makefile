# The README's commands. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# The demo always uses the embedded SQLite database and eager tasks, whatever the shell or .env
# sets: an empty value wins over .env, and the settings treat it as unset.
DEMO_ENV := env DATABASE_URL= REDIS_URL=

.PHONY: install demo test up down bench bench-api bench-writes bench-forecast bench-placement bench-scheduler bench-heartbeats bench-soak serve clean

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

# The deployment shape on this machine: gunicorn, two Celery workers and beat against PostgreSQL and
# Redis (the local servers unless DATABASE_URL and REDIS_URL name others), with debug off.
UP_ENV := env DATABASE_URL=$${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/marketplace} \
	REDIS_URL=$${REDIS_URL:-redis://127.0.0.1:6379/0} DEBUG=false SECURE_SSL_REDIRECT=false SECURE_COOKIES=false \
	LOG_FORMAT=$${LOG_FORMAT:-json} \
	SECRET_KEY=$$(cat var/secret_key)

up: install
	mkdir -p var
	test -s var/secret_key || $(BIN)/python -c "import secrets; print(secrets.token_urlsafe(50))" > var/secret_key
	$(UP_ENV) $(BIN)/python bin/ensure_database.py
	$(UP_ENV) $(BIN)/python manage.py migrate --noinput
	$(UP_ENV) $(BIN)/python manage.py collectstatic --noinput -v 0
	$(UP_ENV) HOST=$(HOST) PORT=$(PORT) bin/up || test $$? -eq 143

# Stops exactly the processes that `make up` started: honcho passes the signal on to each of them. A stale
# var/up.pid whose process is not honcho is ignored.
down:
	@if test -s var/up.pid && grep -qs honcho /proc/$$(cat var/up.pid)/cmdline; then \
		kill -TERM $$(cat var/up.pid); \
		for i in $$(seq 1 60); do kill -0 $$(cat var/up.pid) 2>/dev/null || break; sleep 0.5; done; \
		if kill -0 $$(cat var/up.pid) 2>/dev/null; then \
			echo "honcho (pid $$(cat var/up.pid)) still runs after 30 s; see its terminal, or kill it." >&2; exit 1; \
		fi; \
		rm -f var/up.pid; echo "Stopped."; \
	else echo "Nothing to stop: no stack started by make up is running."; rm -f var/up.pid; fi

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

# Ten minutes of mixed load against `make up` (its own database and Redis) while a worker is killed and Redis and
# the local PostgreSQL server restart; SOAK_SECONDS shortens it, SOAK_ARGS= leaves PostgreSQL alone.
SOAK_ARGS ?= --restart-postgres
bench-soak: install
	$(BIN)/python -m bench.soak --seconds $${SOAK_SECONDS:-600} $(SOAK_ARGS) --output docs/benchmarks.md

# Needs a local PostgreSQL; BENCH_ADMIN_DATABASE_URL names another server with the right to create databases.
bench-api: install
	$(BIN)/python -m bench.api --output docs/benchmarks.md

# PostgreSQL's CPU per written reservation, one per transaction or in batches (about 1 minute).
bench-writes: install
	$(BIN)/python -m bench.batched_writes --output docs/benchmarks.md

clean:
	rm -rf var .pytest_cache
