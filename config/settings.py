"""Settings, all read from the environment; every one has an embedded default for a laptop.

The README's "Settings" section documents each variable.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import environ
from kombu import Queue

from config.env import (
    DEFAULT_SECRET_KEY,
    check_environment_name,
    check_production_settings,
    read_secret,
)

BASE_DIR = Path(__file__).resolve().parent.parent
# Local state of a laptop run (SQLite file, embedded Redis, demo key); git-ignored.
VAR_DIR = BASE_DIR / "var"

env = environ.Env()

DJANGO_ENV = check_environment_name(env.str("DJANGO_ENV", default="development"))
IS_PRODUCTION = DJANGO_ENV == "production"

DEBUG = env.bool("DEBUG", default=not IS_PRODUCTION)
SECRET_KEY = read_secret("SECRET_KEY", DEFAULT_SECRET_KEY)
ALLOWED_HOSTS = env.list(
    "ALLOWED_HOSTS", default=[] if IS_PRODUCTION else ["localhost", "127.0.0.1", "[::1]"]
)
if not IS_PRODUCTION:
    # The Django test client's host; harmless on a laptop, never added in production.
    ALLOWED_HOSTS = [*ALLOWED_HOSTS, "testserver"]
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

if IS_PRODUCTION:
    check_production_settings(debug=DEBUG, secret_key=SECRET_KEY, allowed_hosts=ALLOWED_HOSTS)
else:
    VAR_DIR.mkdir(exist_ok=True)

INSTALLED_APPS = [
    "config.apps.GovernorAdminConfig",  # django.contrib.admin, with a login attempt limit
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "models_catalog",
    "conversations",
    "billing",
    "idempotency",
    "openai_api",
]

MIDDLEWARE = [
    "config.request_context.request_context_middleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Outside ApiJsonErrorMiddleware: gives /v1/ errors OpenAI's shape, its refusals included.
    "openai_api.errors.OpenAIErrorShapeMiddleware",
    "config.middleware.ApiJsonErrorMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
# The model authentication puts on request.tenant, named by app label (like AUTH_USER_MODEL):
# config's scoped API base (config.api_base) needs it and imports no app.
TENANT_MODEL = "conversations.Tenant"
# Django 6 behaviour now: a URL typed without a scheme (a webhook URL in the admin) is https.
FORMS_URLFIELD_ASSUME_HTTPS = True
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

# Database: PostgreSQL in production through DATABASE_URL; a SQLite file by default.
DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=0)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web server, worker and management commands share the file: WAL lets readers run beside
    # the writer, IMMEDIATE takes the write lock up front (no deadlock upgrading a read
    # lock), and the timeout waits for a busy lock instead of failing.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        timeout=20,
        transaction_mode="IMMEDIATE",
        init_command="PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    )
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A bounded pool per process (psycopg_pool): a flood of requests waits for one of
    # DATABASE_POOL_MAX_SIZE connections instead of opening one each and exhausting the
    # server's max_connections for every other process. Pooling replaces CONN_MAX_AGE.
    DATABASE_POOL_MAX_SIZE = env.int("DATABASE_POOL_MAX_SIZE", default=40)
    if DATABASE_POOL_MAX_SIZE > 0:
        DATABASES["default"]["CONN_MAX_AGE"] = 0
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": 0,
            "max_size": DATABASE_POOL_MAX_SIZE,
            "timeout": env.float("DATABASE_POOL_TIMEOUT_SECONDS", default=10.0),
        }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Redis: broker, stream bus and rate counters. The run command starts an embedded Redis
# on this address when REDIS_URL is not set.
EMBEDDED_REDIS_PORT = env.int("EMBEDDED_REDIS_PORT", default=6380)
EMBEDDED_REDIS_URL = f"redis://127.0.0.1:{EMBEDDED_REDIS_PORT}/0"
REDIS_URL = env.str("REDIS_URL", default=EMBEDDED_REDIS_URL)
REDIS_SOCKET_TIMEOUT_SECONDS = env.float("REDIS_SOCKET_TIMEOUT_SECONDS", default=2.0)

# Celery
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
# No backend keeps no state: let Celery build it once per process instead of looking it up
# (entry points of every installed package) on every enqueue from a new web thread.
CELERY_RESULT_BACKEND_THREAD_SAFE = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery's Django fixup closes a task thread's database connections before and after every
# task, whatever CONN_MAX_AGE says (a new SQLite connection, PRAGMAs and all, was 5% of the
# worker's CPU per answer: benchmarks/peer_compare.py --profile). With this it does so only
# every so many tasks, and config.celery applies Django's own rule around each task instead
# (closed if broken or older than CONN_MAX_AGE: with the default 0, after every task, as
# before; a PostgreSQL pool forces 0 and takes the connection back).
CELERY_DB_REUSE_MAX = 1000
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
# With late acks a task whose whole worker died comes back after this long; it must be
# longer than the longest generation, or a slow answer would be handed to a second worker.
CELERY_VISIBILITY_TIMEOUT_SECONDS = env.int("CELERY_VISIBILITY_TIMEOUT_SECONDS", default=900)
# Publishing a task must fail fast when Redis is away (the API then answers 503), not hang
# a request in kombu's default retries.
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2,
}  # fmt: skip
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT_SECONDS,
    "socket_timeout": REDIS_SOCKET_TIMEOUT_SECONDS,
    "socket_connect_timeout": REDIS_SOCKET_TIMEOUT_SECONDS,
    # kombu looks for abandoned tasks every interval x throttle seconds (10 x 10 by
    # default): without these a dead worker's task waits up to ~100 s past the timeout.
    "unacked_restore_interval": max(1, min(10, CELERY_VISIBILITY_TIMEOUT_SECONDS // 2)),
    "unacked_restore_throttle": 1,
}

# Periodic work (Celery beat): release reservations of answers whose task was lost.
RESERVATION_EXPIRY_SECONDS = env.int("RESERVATION_EXPIRY_SECONDS", default=3600)
CELERY_BEAT_SCHEDULE = {
    "expire-stale-generations": {
        "task": "conversations.tasks.expire_stale_generations",
        "schedule": env.float("RESERVATION_EXPIRY_CHECK_SECONDS", default=60.0),
    },
    "purge-expired-idempotency-records": {
        "task": "idempotency.tasks.purge_expired_idempotency_records",
        "schedule": 3600.0,
    },
    "purge-finished-openai-calls": {
        "task": "openai_api.tasks.purge_finished_stateless_calls",
        "schedule": 3600.0,
    },
}
# Idempotency-Key (idempotency/): how long a key is kept, and how long a duplicate waits for
# the request that holds its key before answering 409 idempotency_in_progress.
IDEMPOTENCY_KEY_TTL_SECONDS = env.int("IDEMPOTENCY_KEY_TTL_SECONDS", default=86_400)
IDEMPOTENCY_WAIT_SECONDS = env.float("IDEMPOTENCY_WAIT_SECONDS", default=30.0)
# OpenAI-compatible surface (openai_api/): how long a non-streaming completion waits for its
# answer, and how long the hidden record of a call without `conversation` is kept once its
# answer is final (at least the idempotency window, so retries still find it).
OPENAI_COMPLETION_TIMEOUT_SECONDS = env.float("OPENAI_COMPLETION_TIMEOUT_SECONDS", default=600.0)
OPENAI_STATELESS_RETENTION_SECONDS = env.int(
    "OPENAI_STATELESS_RETENTION_SECONDS", default=IDEMPOTENCY_KEY_TTL_SECONDS
)
# Budget alert webhooks
WEBHOOK_TIMEOUT_SECONDS = env.float("WEBHOOK_TIMEOUT_SECONDS", default=10.0)
WEBHOOK_MAX_RETRIES = env.int("WEBHOOK_MAX_RETRIES", default=8)

# Generation
GENERATION_MAX_RETRIES = env.int("GENERATION_MAX_RETRIES", default=5)
GENERATION_RETRY_BACKOFF_SECONDS = env.float("GENERATION_RETRY_BACKOFF_SECONDS", default=1.0)
GENERATION_RETRY_BACKOFF_MAX_SECONDS = env.float(
    "GENERATION_RETRY_BACKOFF_MAX_SECONDS", default=30.0
)
GENERATION_SYNC_WAIT_SECONDS = env.float("GENERATION_SYNC_WAIT_SECONDS", default=60.0)
GENERATION_CANCEL_CHECK_SECONDS = 0.25
# The database is the truth about work: a running answer holds a lease its worker renews
# every GENERATION_LEASE_RENEW_SECONDS; the sweeper (every GENERATION_SWEEP_SECONDS) hands
# back answers whose lease lapsed (a dead worker) and queued answers not claimed within
# GENERATION_REQUEUE_AFTER_SECONDS (a task lost with Redis), so nothing waits for the
# broker's visibility timeout or the reservation expiry.
GENERATION_LEASE_SECONDS = env.float("GENERATION_LEASE_SECONDS", default=30.0)
GENERATION_LEASE_RENEW_SECONDS = env.float("GENERATION_LEASE_RENEW_SECONDS", default=5.0)
GENERATION_SWEEP_SECONDS = env.float("GENERATION_SWEEP_SECONDS", default=10.0)
GENERATION_REQUEUE_AFTER_SECONDS = env.float("GENERATION_REQUEUE_AFTER_SECONDS", default=30.0)
# Fair share: each tenant's answers go to one of these queues (tenant id modulo the count),
# which workers serve round-robin; and a tenant has at most this many answers running at
# once across all workers (0: no cap), so one tenant's backlog is not everyone's queue. The
# rest wait in the database, first come first served, woken as the tenant's answers end.
GENERATION_QUEUE_SHARDS = env.int("GENERATION_QUEUE_SHARDS", default=16)
GENERATION_TENANT_MAX_RUNNING = env.int("GENERATION_TENANT_MAX_RUNNING", default=8)
# And in each web process, at most this many of a tenant's API requests are worked on at once
# (0: no limit); the rest wait, parked, for a slot (config/fair_share.py).
WEB_TENANT_ACTIVE_REQUESTS = env.int("WEB_TENANT_ACTIVE_REQUESTS", default=4)
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_TASK_QUEUES = [
    Queue("celery"),
    *(Queue(f"generation.{shard}") for shard in range(GENERATION_QUEUE_SHARDS)),
]
CELERY_BEAT_SCHEDULE["sweep-generations"] = {
    "task": "conversations.tasks.sweep_generations",
    "schedule": GENERATION_SWEEP_SECONDS,
}
ANSWER_STREAM_TTL_SECONDS = env.int("ANSWER_STREAM_TTL_SECONDS", default=3600)
ANSWER_STREAM_MAX_EVENTS = env.int("ANSWER_STREAM_MAX_EVENTS", default=20_000)
# Deltas arriving within this long of the last publish are sent as one event (the first
# delta always goes at once).
ANSWER_STREAM_COALESCE_SECONDS = env.float("ANSWER_STREAM_COALESCE_SECONDS", default=0.03)
SSE_HEARTBEAT_SECONDS = env.float("SSE_HEARTBEAT_SECONDS", default=15.0)
# Idle timeout of the proxy or load balancer in front (0: none declared). conversations/checks.py
# refuses silent waits (mode: sync, ...) it would cut, and SSE heartbeats it would outlast.
PROXY_IDLE_TIMEOUT_SECONDS = env.float("PROXY_IDLE_TIMEOUT_SECONDS", default=0.0)

# Bedrock
AWS_REGION = env.str("AWS_REGION", default="us-west-2")
BEDROCK_ENDPOINT_URL = env.str("BEDROCK_ENDPOINT_URL", default="") or None
BEDROCK_CONNECT_TIMEOUT_SECONDS = env.float("BEDROCK_CONNECT_TIMEOUT_SECONDS", default=5.0)
BEDROCK_READ_TIMEOUT_SECONDS = env.float("BEDROCK_READ_TIMEOUT_SECONDS", default=120.0)

# Money: every DecimalField that holds money uses these, so per-token prices fit.
MONEY_MAX_DIGITS = 20
MONEY_DECIMAL_PLACES = 10
MONEY_CURRENCY = "USD"
MONEY_QUANTUM = Decimal(1).scaleb(-MONEY_DECIMAL_PLACES)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(VAR_DIR / "staticfiles")))
# Without collectstatic (laptop, tests) serve straight from the apps' static folders.
WHITENOISE_USE_FINDERS = not IS_PRODUCTION
if not IS_PRODUCTION:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)

API_PAGE_SIZE = env.int("API_PAGE_SIZE", default=50)
MESSAGE_MAX_CHARACTERS = env.int("MESSAGE_MAX_CHARACTERS", default=200_000)
METADATA_MAX_BYTES = env.int("METADATA_MAX_BYTES", default=16_384)
API_KEY_LAST_USED_RESOLUTION_SECONDS = 60

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["conversations.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["conversations.authentication.IsTenantAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "config.openapi.ErrorDocumentingAutoSchema",
    "EXCEPTION_HANDLER": "config.exception_handler.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Llama conversation backend API",
    "DESCRIPTION": (
        "Multi-tenant conversations for Meta Llama models on AWS Bedrock, with cost "
        "governance. Authenticate with `Authorization: Bearer <API key>`. Every error "
        'answers `{"error": {"code", "message", "details"}}`.'
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Logging (config/logging.py): one JSON object per line, or LOG_FORMAT=plain for people.
# Every line carries the request id and tenant, or the Celery task, it was logged for, and
# API keys and bearer tokens are redacted from it.
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOG_FORMAT = env.str("LOG_FORMAT", default="json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "context": {"()": "config.logging.RequestContextFilter"},
        "redact": {"()": "config.logging.SecretRedactionFilter"},
    },
    "formatters": {"default": {"()": "config.logging.formatter_for", "log_format": LOG_FORMAT}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "default",
            "filters": ["context", "redact"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Django, uvicorn and Celery bring handlers of their own: everything goes through ours
        # (Celery makes its task logger stop propagating, so that one gets ours directly).
        "django": {"handlers": [], "propagate": True},
        "uvicorn": {"handlers": [], "propagate": True},
        "celery.task": {"handlers": ["console"], "propagate": False},
        # The middleware writes a richer access line (request id, tenant, URL name).
        "uvicorn.access": {"level": "WARNING"},
    },
}

if IS_PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True

# Observability (config/logging.py, config/metrics.py). Celery keeps its hands off the
# root logger, so worker lines are JSON too. /metrics answers a bearer METRICS_TOKEN, or,
# when it is empty, only unproxied requests from loopback; everyone else gets 404.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
METRICS_TOKEN = read_secret("METRICS_TOKEN", "")

# Hostile input and key guessing (config/body_limit.py, config/middleware.py,
# config/auth_throttle.py). Bodies over MAX_REQUEST_BODY_BYTES answer 413 as they arrive,
# before they are spooled; the default leaves room for the longest message written entirely
# as \uXXXX escapes. Failed authentications are counted per client address and per presented
# key prefix; over AUTH_FAILURE_LIMIT in an AUTH_FAILURE_WINDOW_SECONDS window, failures answer
# 429 until the window ends (a valid key is always served). The address is REMOTE_ADDR, or
# with TRUSTED_PROXY_COUNT proxies in front, the X-Forwarded-For entry that many from the
# right (0: never trust the header; config/web_server.py keeps uvicorn from trusting it).
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("MAX_REQUEST_BODY_BYTES", default=4 * 1024 * 1024)
# Django's ASGI handler holds a body in memory up to this size and spools the rest to a temp
# file; a body we accept is read into memory whole anyway, so none is ever written to disk.
FILE_UPLOAD_MAX_MEMORY_SIZE = DATA_UPLOAD_MAX_MEMORY_SIZE
AUTH_FAILURE_LIMIT = env.int("AUTH_FAILURE_LIMIT", default=20)
AUTH_FAILURE_WINDOW_SECONDS = env.int("AUTH_FAILURE_WINDOW_SECONDS", default=60)
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)
# Admin password guessing (config/admin_site.py): failed logins per username and per client
# address; over the limit in a window, the login page answers 429 until the window ends.
ADMIN_LOGIN_FAILURE_LIMIT = env.int("ADMIN_LOGIN_FAILURE_LIMIT", default=10)
ADMIN_LOGIN_FAILURE_WINDOW_SECONDS = env.int("ADMIN_LOGIN_FAILURE_WINDOW_SECONDS", default=900)
