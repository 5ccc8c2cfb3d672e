"""Settings of the example project, read from the environment; safe by default.

DJANGO_DEBUG          default: off (`make run` turns it on for the demo)
DJANGO_SECRET_KEY     default: a random key made once per machine in var/secret_key; set it
                      (the same on every machine) when more than one machine serves the project
DJANGO_ALLOWED_HOSTS  default: 127.0.0.1,localhost
DATABASE_URL          default: SQLite in var/db.sqlite3
CELERY_BROKER_URL     default: kombu's filesystem transport under var/broker (no server needed)
TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN, or TWILIO_API_KEY / TWILIO_API_SECRET
TRUSTHUB_BASE_URL     default: the local sandbox when no credentials are set
TRUSTHUB_SANDBOX_PORT default: 8765, the local sandbox's port (`make run` starts it there)
"""

import json
import os
import secrets
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("TRUSTHUB_VAR_DIR") or BASE_DIR / "var")
VAR_DIR.mkdir(parents=True, exist_ok=True)


def env_bool(name: str, default: bool = False) -> bool:
    return os.environ.get(name, str(default)).lower() in {"1", "true", "yes", "on"}


def machine_secret_key(path: Path) -> str:
    """The key stored at ``path``, made (random, readable by this user only) on first use.

    Never a constant: copied example settings must not sign sessions with a key the world knows.
    Created with a hard link so that two processes starting at once agree on one key.
    """
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(secrets.token_urlsafe(50))
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass  # another process made it first: use that one
    finally:
        temporary.unlink()
    return path.read_text().strip()


DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or machine_secret_key(VAR_DIR / "secret_key")
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")
# Error reports (the DEBUG page, mails to ADMINS) hide passwords inside URLs too, such as
# DATABASE_URL's in the environment a development server passes on as request.META.
DEFAULT_EXCEPTION_REPORTER_FILTER = "project.errors.CredentialsHidingFilter"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files served from here, not from a CDN
    "trusthub_eval",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"

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

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
        # Keep connections (a worker runs many evaluations on one), checked once per request
        # or task: see the README, "Running workers".
        conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", "600")),
        conn_health_checks=True,
    )
}
# Every database call is bounded in time (see the README, "Running workers"): a worker whose
# link to the database stalls gets an error within seconds instead of hanging for minutes.
_DATABASE_BOUNDS: dict[str, dict[str, object]] = {
    "django.db.backends.sqlite3": {
        # A web process and a worker write to the same file: wait for the lock rather than fail.
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL;",
    },
    "django.db.backends.postgresql": {
        "connect_timeout": 5,
        # A silent peer (a partition, a failover) is noticed by TCP keepalives after ~25 s idle,
        # and unacknowledged writes by tcp_user_timeout; no statement runs past 30 s.
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "tcp_user_timeout": 25000,
        "options": "-c statement_timeout=30000 -c idle_in_transaction_session_timeout=60000",
    },
    "django.db.backends.mysql": {"connect_timeout": 5, "read_timeout": 30, "write_timeout": 30},
}
DATABASES["default"].setdefault("OPTIONS", {}).update(
    _DATABASE_BOUNDS.get(DATABASES["default"]["ENGINE"], {})
)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Celery ---
_broker_dir = Path(os.environ.get("TRUSTHUB_BROKER_DIR") or VAR_DIR / "broker")
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    CELERY_BROKER_TRANSPORT = "project.broker:Transport"
    for sub in ("queue", "processed", "control"):
        (_broker_dir / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
        "polling_interval": 0.2,
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
# Celery's default prefetch (4) is kept: see the README, "Running workers".
# Celery's Django fixup closes every database connection around every task unless this is
# set; trusthub_eval's tasks close the expired (CONN_MAX_AGE) and broken ones themselves.
CELERY_DB_REUSE_MAX = 1000
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)

# --- trusthub_eval ---
_SANDBOX_URL = f"http://127.0.0.1:{int(os.environ.get('TRUSTHUB_SANDBOX_PORT', '8765'))}"
_has_credentials = bool(
    (os.environ.get("TWILIO_ACCOUNT_SID") and os.environ.get("TWILIO_AUTH_TOKEN"))
    or (os.environ.get("TWILIO_API_KEY") and os.environ.get("TWILIO_API_SECRET"))
)
TRUSTHUB_EVAL = {
    "BASE_URL": os.environ.get(
        "TRUSTHUB_BASE_URL", "https://trusthub.twilio.com" if _has_credentials else _SANDBOX_URL
    ),
    "DEFAULT_POLICY_SID": os.environ.get("TRUSTHUB_DEFAULT_POLICY_SID") or None,
}
SANDBOX_WORLD = Path(
    os.environ.get("TRUSTHUB_SANDBOX_WORLD", BASE_DIR / "fixtures" / "demo" / "world.json")
)
if not _has_credentials and SANDBOX_WORLD.exists():
    # No TWILIO_* credentials: talk to the sandbox with its world's (fake) credentials.
    _world = json.loads(SANDBOX_WORLD.read_text())
    TRUSTHUB_EVAL.update({"ACCOUNT_SID": _world["account_sid"], "AUTH_TOKEN": _world["auth_token"]})

# --- REST framework ---
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_RATES": {"trusthub_eval_trigger": "60/minute"},
}
SPECTACULAR_SETTINGS = {
    "TITLE": "TrustHub evaluations API",
    "DESCRIPTION": "Compliance evaluations of Twilio TrustHub Customer Profiles.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    # Not propagated: a Celery worker puts a handler of its own on the root logger, and every
    # line would be printed twice.
    "loggers": {"trusthub_eval": {"handlers": ["console"], "level": "INFO", "propagate": False}},
}
