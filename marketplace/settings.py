"""Django settings, read from the environment through django-environ.

Defaults give a local demo: SQLite under ``var/`` and Celery tasks run eagerly in the calling
process. ``DATABASE_URL`` switches to PostgreSQL and ``REDIS_URL`` to a Redis broker.
"""

from pathlib import Path

import environ

from marketplace.logs import configure_structlog, formatter

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=True)
if DEBUG:
    SECRET_KEY = env.str("SECRET_KEY", default="insecure-development-key-set-SECRET_KEY-in-production")
else:
    SECRET_KEY = env.str("SECRET_KEY")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_filters",
    "django_htmx",
    "django_celery_beat",
    "health_check",
    "django_prometheus",
    "marketplace",
    "allocation",
    "capacity",
    "scheduler",
    "providers",
    "task_runs",
]

# django-prometheus times each request between its first and last middleware (metrics on /metrics).
MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "marketplace.logs.RequestIdMiddleware",
    "marketplace.middleware.RejectNulCharactersMiddleware",
    "marketplace.middleware.DatabaseUnavailableMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "marketplace.urls"
WSGI_APPLICATION = "marketplace.wsgi.application"
ASGI_APPLICATION = "marketplace.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database: PostgreSQL when DATABASE_URL is set, otherwise SQLite for the demo.
# SQLite opens every transaction with BEGIN IMMEDIATE, so writers are serialised from the first
# statement and a placement decision never reads capacity that another writer is changing.
SQLITE_PATH = Path(env.str("SQLITE_PATH", default=str(VAR_DIR / "marketplace.sqlite3")))
if env.str("DATABASE_URL", default=""):
    DATABASES = {"default": env.db_url("DATABASE_URL")}
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DB_CONN_MAX_AGE", default=0))
    # A kept connection is checked before reuse (marketplace/postgresql/base.py), so after a PostgreSQL restart
    # each process opens a new one instead of failing a request.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # Server-side parameters let psycopg prepare a statement once it has run 5 times on a connection,
    # so PostgreSQL stops planning the hot queries again on every request. Planning a 10-table join
    # cost 3 ms against 0.2 ms to run it. Set false behind a pooler in transaction mode.
    if env.bool("DB_SERVER_SIDE_BINDING", default=True):
        DATABASES["default"].setdefault("OPTIONS", {}).update(server_side_binding=True, prepare_threshold=5)
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": SQLITE_PATH,
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }

# django-prometheus's backends subclass Django's and count connections, queries, errors and query time.
# On PostgreSQL, marketplace.postgresql subclasses that one with a health check that sends no query.
DATABASES["default"]["ENGINE"] = DATABASES["default"]["ENGINE"].replace(
    "django.db.backends.", "django_prometheus.db.backends.", 1).replace(
    "django_prometheus.db.backends.postgresql", "marketplace.postgresql", 1)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "marketplace.api.authentication.TokenWithOrganizationAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "marketplace.api.pagination.StrictPageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "marketplace.api.errors.problem_exception_handler",
    "DEFAULT_PARSER_CLASSES": ["marketplace.api.parsers.SafeJSONParser"],
    # JSON only, whatever the Accept header: errors never come back as the HTML browsable API.
    # /api/docs/ is for exploring.
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "marketplace.api.parsers.JSONOnlyNegotiation",
    "URL_FORMAT_OVERRIDE": None,
    # Requests per caller and minute. Over the rate the API returns 429 with Retry-After. Agents are
    # counted per node key, customers per user, anonymous callers per address.
    "DEFAULT_THROTTLE_CLASSES": [
        "marketplace.api.throttling.AgentRateThrottle",
        "marketplace.api.throttling.CustomerRateThrottle",
        "marketplace.api.throttling.AnonymousRateThrottle",
    ],
    # Proxies in front of the web tier that append to X-Forwarded-For; 0 trusts only the socket's address, so a
    # client cannot spend another address's budget by sending the header itself.
    "NUM_PROXIES": env.int("NUM_PROXIES", default=0),
    "DEFAULT_THROTTLE_RATES": {
        "agent": env.str("THROTTLE_AGENT_RATE", default="600/minute"),
        "user": env.str("THROTTLE_USER_RATE", default="6000/minute"),
        "anon": env.str("THROTTLE_ANON_RATE", default="300/minute"),
    },
}


SPECTACULAR_SETTINGS = {
    "TITLE": "GPU marketplace API",
    "DESCRIPTION": "Reserve shares of GPUs on provider nodes, now or for a future window.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Celery: Redis when REDIS_URL is set; otherwise tasks run eagerly so the demo needs no broker.
REDIS_URL = env.str("REDIS_URL", default="")
CELERY_BROKER_URL = REDIS_URL or "memory://"
# Redis, with workers that reconnect instead of exiting when Redis goes away mid-task (see the module).
CELERY_BROKER_TRANSPORT = "marketplace.broker_transport:Transport" if REDIS_URL else None
CELERY_RESULT_BACKEND = REDIS_URL or None
CELERY_TASK_ALWAYS_EAGER = not REDIS_URL
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=30 * 60)
# A message whose worker died without acknowledging it (SIGKILL, a lost machine) is delivered again once the
# visibility timeout passes, so it must be longer than the longest task. Workers look for such messages every
# restore interval.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=CELERY_TASK_TIME_LIMIT * 2),
    "unacked_restore_interval": env.int("CELERY_UNACKED_RESTORE_INTERVAL", default=10),
    "unacked_restore_throttle": 1,
    "socket_connect_timeout": 2,
}
# Sending a task while Redis is down gives up after about a second; callers log it and beat catches up.
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.3, "interval_max": 0.5}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"
# Workers log through LOGGING below (structlog), not through Celery's own root handler.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# Throttle counters and other short-lived values: Redis when configured, so every web process
# shares them; otherwise memory of the one demo process.
# django-redis ignores a Redis outage (logged): throttling lets requests through instead of failing them.
if REDIS_URL:
    # django-redis through django-prometheus, which counts gets, hits, misses and failed gets.
    CACHES = {"default": {
        "BACKEND": "django_prometheus.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL,
        "KEY_PREFIX": env.str("CACHE_KEY_PREFIX", default="marketplace"),
        "OPTIONS": {"IGNORE_EXCEPTIONS": True, "SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 1},
    }}
    DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True
    DJANGO_REDIS_LOGGER = "marketplace.cache"

# /metrics: with a token, scrapes must send "Authorization: Bearer <token>"; without, only loopback clients may scrape.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")

# Production (DEBUG off): HTTPS only, secure cookies, HSTS. TLS may end at a proxy that sets
# X-Forwarded-Proto; SECURE_SSL_REDIRECT=false leaves redirects to it.
if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    # Only a local stack served over plain HTTP (make up) turns secure cookies off.
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env.bool("SECURE_COOKIES", default=True)
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=True)
    SECURE_CONTENT_TYPE_NOSNIFF = True
    X_FRAME_OPTIONS = "DENY"
# Beat keeps its schedule in the database (django-celery-beat); the entries below are synced into it.
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BEAT_SCHEDULE = {
    "advance-reservations": {"task": "allocation.advance_reservations", "schedule": 60.0},
    "purge-idempotency-keys": {"task": "allocation.purge_idempotency_keys", "schedule": 3600.0},
    "purge-capacity-changes": {"task": "allocation.purge_capacity_changes", "schedule": 600.0},
    "expire-reservations": {"task": "allocation.expire_reservations", "schedule": 60.0},
    "rollup-demand-metrics": {"task": "capacity.rollup_demand_metrics", "schedule": 3600.0},
    "refresh-demand-forecasts": {"task": "capacity.refresh_forecasts", "schedule": 24 * 3600.0},
    "propose-rebalancing": {"task": "allocation.propose_rebalance", "schedule": 3600.0},
    "scheduling-cycle": {"task": "scheduler.run_cycle", "schedule": 30.0},
    "finish-preemptions": {"task": "scheduler.finish_preemptions", "schedule": 15.0},
    "advance-migrations": {"task": "scheduler.advance_migrations", "schedule": 15.0},
    "check-heartbeats": {"task": "providers.check_heartbeats", "schedule": 30.0},
    "drain-unhealthy-nodes": {"task": "providers.drain_unhealthy_nodes", "schedule": 60.0},
    "rollup-gpu-readings": {"task": "providers.rollup_readings", "schedule": 600.0},
    "ingest-heartbeats": {"task": "providers.ingest_heartbeats", "schedule": 5.0},
    "close-open-assignments": {"task": "providers.close_open_assignments", "schedule": 300.0},
    "fit-failure-risk": {"task": "providers.fit_failure_risk", "schedule": 24 * 3600.0},
    "purge-task-deliveries": {"task": "marketplace.purge_task_deliveries", "schedule": 3600.0},
}

# Business settings of the marketplace, in one namespace.
MARKETPLACE = {
    # Online placement policy, by name from allocation.solvers.POLICIES.
    "PLACEMENT_POLICY": env.str("PLACEMENT_POLICY", default="fgd_best_fit"),
    # FGD policies keep room for the typical shapes of the reservations of the last days, once
    # there are enough of them (at most the newest MAX), and recompute them this often per process.
    "TARGET_WORKLOAD_DAYS": env.int("TARGET_WORKLOAD_DAYS", default=30),
    "TARGET_WORKLOAD_MIN_REQUESTS": env.int("TARGET_WORKLOAD_MIN_REQUESTS", default=500),
    "TARGET_WORKLOAD_MAX_REQUESTS": env.int("TARGET_WORKLOAD_MAX_REQUESTS", default=20000),
    "TARGET_WORKLOAD_REFRESH_SECONDS": env.int("TARGET_WORKLOAD_REFRESH_SECONDS", default=600),
    # Time limit of one batch placement (CP-SAT or the genetic search) in a scheduling cycle.
    "BATCH_TIME_LIMIT_SECONDS": env.float("BATCH_TIME_LIMIT_SECONDS", default=2.0),
    # Rebalancing plans: at most this many moves, of scheduled reservations starting within the
    # horizon, looking at no more than this many of them (the soonest first).
    "REBALANCE_MAX_MOVES": env.int("REBALANCE_MAX_MOVES", default=10),
    "REBALANCE_HORIZON_HOURS": env.int("REBALANCE_HORIZON_HOURS", default=72),
    "REBALANCE_MAX_RESERVATIONS": env.int("REBALANCE_MAX_RESERVATIONS", default=500),
    # Nodes that the database pre-ranks and hands to the policy for one decision.
    "PLACEMENT_SHORTLIST_SIZE": env.int("PLACEMENT_SHORTLIST_SIZE", default=24),
    # On PostgreSQL each web thread keeps capacity in memory, current from the database's change
    # feed, and shortlists nodes and checks quotas there (allocation/ledger_sync.py). It reloads
    # everything every RELOAD_SECONDS. It contains allocations that ended at most LOOKBACK ago, so
    # windows that start earlier than that read the database.
    "CAPACITY_LEDGER": env.bool("CAPACITY_LEDGER", default=True),
    "CAPACITY_LEDGER_RELOAD_SECONDS": env.int("CAPACITY_LEDGER_RELOAD_SECONDS", default=600),
    "CAPACITY_LEDGER_LOOKBACK_SECONDS": env.int("CAPACITY_LEDGER_LOOKBACK_SECONDS", default=3600),
    # A request may start this many seconds in the past, to absorb client clock skew.
    "START_CLOCK_SKEW_SECONDS": env.int("START_CLOCK_SKEW_SECONDS", default=300),
    # Window limits: shortest and longest window, and how far ahead a window may start.
    "MIN_DURATION_SECONDS": env.int("RESERVATION_MIN_DURATION_SECONDS", default=1),
    "MAX_DURATION_SECONDS": env.int("RESERVATION_MAX_DURATION_SECONDS", default=400 * 86400),
    "MAX_HORIZON_SECONDS": env.int("RESERVATION_MAX_HORIZON_SECONDS", default=730 * 86400),
    "DEFAULT_CURRENCY": "USD",
    # How long the alternatives of one rejected request shape are reused, per customer and process.
    "ALTERNATIVES_CACHE_SECONDS": env.int("ALTERNATIVES_CACHE_SECONDS", default=5),
    # How long a reservation pending approval holds its capacity before it expires unapproved.
    "APPROVAL_HOLD_SECONDS": env.int("APPROVAL_HOLD_SECONDS", default=30 * 60),
    # How long a POST's Idempotency-Key is remembered; a retry after that is a new request.
    "IDEMPOTENCY_KEY_RETENTION_SECONDS": env.int("IDEMPOTENCY_KEY_RETENTION_SECONDS", default=24 * 3600),
    # Capacity planning: hours each periodic rollup recomputes, hours of history a forecast is
    # fitted on, and hours ahead it looks.
    "DEMAND_ROLLUP_LOOKBACK_HOURS": env.int("DEMAND_ROLLUP_LOOKBACK_HOURS", default=48),
    "FORECAST_HISTORY_HOURS": env.int("FORECAST_HISTORY_HOURS", default=8 * 168),
    "FORECAST_HORIZON_HOURS": env.int("FORECAST_HORIZON_HOURS", default=168),
    # Days a forecast is kept after a newer one replaced it.
    "FORECAST_RETENTION_DAYS": env.int("FORECAST_RETENTION_DAYS", default=90),
    # Interruptible reservations pay this share of the node's price and may be preempted.
    "INTERRUPTIBLE_PRICE_FACTOR": env.float("INTERRUPTIBLE_PRICE_FACTOR", default=0.6),
    # Scheduler: how long a queued request may wait after its start_at; how many blocked requests
    # get a held start per cycle; at most how many preemptions and placements one cycle makes.
    "QUEUE_MAX_WAIT_SECONDS": env.int("QUEUE_MAX_WAIT_SECONDS", default=7 * 86400),
    "SCHEDULER_RESERVE_DEPTH": env.int("SCHEDULER_RESERVE_DEPTH", default=100),
    "SCHEDULER_MAX_PREEMPTIONS": env.int("SCHEDULER_MAX_PREEMPTIONS", default=10),
    "SCHEDULER_MAX_PLACEMENTS": env.int("SCHEDULER_MAX_PLACEMENTS", default=200),
    # CP-SAT places each priority's ready requests together when there are at most this many and the
    # cycle order cannot place them all; its plan is used when it places more. CP-SAT usually runs
    # to its time limit, so each such priority adds up to that much to a cycle.
    "SCHEDULER_BATCH_SOLVER": env.bool("SCHEDULER_BATCH_SOLVER", default=True),
    "SCHEDULER_BATCH_MAX_REQUESTS": env.int("SCHEDULER_BATCH_MAX_REQUESTS", default=100),
    "SCHEDULER_BATCH_TIME_LIMIT_SECONDS": env.float("SCHEDULER_BATCH_TIME_LIMIT_SECONDS", default=1.0),
    # Fair share counts each organization's usage of the last window, halving its weight every half-life.
    "FAIR_SHARE_WINDOW_HOURS": env.int("FAIR_SHARE_WINDOW_HOURS", default=7 * 24),
    "FAIR_SHARE_HALF_LIFE_HOURS": env.float("FAIR_SHARE_HALF_LIFE_HOURS", default=24.0),
    # A start that agents report as failed is retried on another node this many times in all.
    "MAX_START_ATTEMPTS": env.int("MAX_START_ATTEMPTS", default=3),
    # Migrations: how long a source's agent gets to stop the work, and a pause after each step
    # (0 in production; the crash drill and its test raise it to kill a worker between steps).
    "MIGRATION_STOP_SECONDS": env.int("MIGRATION_STOP_SECONDS", default=120),
    "MIGRATION_STEP_PAUSE_SECONDS": env.float("MIGRATION_STEP_PAUSE_SECONDS", default=0.0),
    # Provider health: a node without a heartbeat for this long is unknown (nothing is moved); a
    # recovered GPU stays out of placement for the probation; a node unhealthy for the drain delay
    # is drained, after an admin's approval when more reservations than the limit run there. Raw
    # readings are kept for the retention, hourly rollups for good.
    "HEARTBEAT_TIMEOUT_SECONDS": env.int("HEARTBEAT_TIMEOUT_SECONDS", default=60),
    "PROBATION_SECONDS": env.int("PROBATION_SECONDS", default=3600),
    "UNHEALTHY_DRAIN_AFTER_SECONDS": env.int("UNHEALTHY_DRAIN_AFTER_SECONDS", default=600),
    "DRAIN_APPROVAL_ABOVE_RESERVATIONS": env.int("DRAIN_APPROVAL_ABOVE_RESERVATIONS", default=5),
    "READING_RETENTION_HOURS": env.int("READING_RETENTION_HOURS", default=48),
    # With Redis, heartbeats wait in a list and are stored in batches of this size (202 responses);
    # without it, or with HEARTBEAT_QUEUE=false, each request stores its heartbeat at once (200 with
    # the node's health).
    "HEARTBEAT_QUEUE": env.bool("HEARTBEAT_QUEUE", default=bool(REDIS_URL)),
    "HEARTBEAT_BATCH": env.int("HEARTBEAT_BATCH", default=500),
    # The marketplace's share of metered usage; providers earn the rest.
    "PLATFORM_FEE_RATE": env.float("PLATFORM_FEE_RATE", default=0.10),
    # Hours a task delivery record is kept, so a redelivered message is recognised; longer than the visibility timeout.
    "TASK_DELIVERY_RETENTION_HOURS": env.int("TASK_DELIVERY_RETENTION_HOURS", default=48),
    # Days of GPU health history the daily failure-risk fit learns from.
    "RISK_HISTORY_DAYS": env.int("RISK_HISTORY_DAYS", default=30),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # One structlog formatter for every record: JSON lines with LOG_FORMAT=json, key=value text otherwise.
    "formatters": {
        "structured": formatter(json_lines=env.str("LOG_FORMAT", default="text") == "json"),
    },
    "filters": {
        "skip_logged_decisions": {"()": "marketplace.logs.SkipLoggedDecisions"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "structured"},
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="WARNING")},
    "loggers": {
        "marketplace": {"level": env.str("APP_LOG_LEVEL", default="INFO")},
        "allocation": {"level": env.str("APP_LOG_LEVEL", default="INFO")},
        "capacity": {"level": env.str("APP_LOG_LEVEL", default="INFO")},
        "scheduler": {"level": env.str("APP_LOG_LEVEL", default="INFO")},
        "providers": {"level": env.str("APP_LOG_LEVEL", default="INFO")},
        "celery": {"level": env.str("CELERY_LOG_LEVEL", default="INFO")},
        # Django logs every 4xx response as a warning, except for rejected reservations (see SkipLoggedDecisions).
        "django.request": {"level": env.str("REQUEST_LOG_LEVEL", default="WARNING"),
                           "filters": ["skip_logged_decisions"]},
    },
}

configure_structlog()
