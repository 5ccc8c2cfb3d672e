"""Settings for the test suite: the app and what it needs around it, on a test database.

TRUSTHUB_TEST_DATABASE_URL picks the database (default: a SQLite file under var/, so that a
separate worker process can share it); the PostgreSQL and MariaDB passes of `make test` set it.
Celery runs tasks eagerly in the suite's process; tests/worker.py starts real workers with
TRUSTHUB_TEST_EAGER=0, CELERY_BROKER_URL and TRUSTHUB_BROKER_DIR (the filesystem broker's
folder). The example project's own settings are tested as such, in tests/test_example_project.py.
"""

import json
import os
from pathlib import Path

import dj_database_url

ROOT = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("TRUSTHUB_VAR_DIR") or ROOT / "var")
VAR_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = "the test suite's own key, for test databases only; never a deployment's"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

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
    "drf_spectacular_sidecar",
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
ROOT_URLCONF = "tests.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
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
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

_url = os.environ.get("TRUSTHUB_TEST_DATABASE_URL", f"sqlite:///{VAR_DIR / 'test-main.sqlite3'}")
DATABASES = {"default": dj_database_url.parse(_url)}
# Named per run, so that two suites running at once never share a test database.
_run = os.environ.setdefault("TRUSTHUB_TEST_RUN", str(os.getpid()))
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not memory: a worker process started by the suite opens the same database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{_run}.sqlite3")}
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL;",
    }
else:
    DATABASES["default"]["TEST"] = {"NAME": f"test_trusthub_eval_{_run}"}
if DATABASES["default"]["ENGINE"] == "django.db.backends.mysql":
    # Four-byte UTF-8 (names with emoji), whatever the server's default character set.
    DATABASES["default"]["OPTIONS"] = {"charset": "utf8mb4"}
    DATABASES["default"]["TEST"].update({"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"})
# A worker process started by the suite connects straight to the suite's test database, and
# keeps its connections as the example project's workers do.
if os.environ.get("TRUSTHUB_TEST_DB_NAME"):
    DATABASES["default"]["NAME"] = os.environ["TRUSTHUB_TEST_DB_NAME"]
    DATABASES["default"]["CONN_MAX_AGE"] = 600
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

# In-process tests run tasks eagerly; tests/worker.py starts real workers with this off.
CELERY_TASK_ALWAYS_EAGER = os.environ.get("TRUSTHUB_TEST_EAGER", "1") == "1"
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    # The example project's transport, which writes each message whole (project/broker.py).
    CELERY_BROKER_TRANSPORT = "project.broker:Transport"
    _broker_dir = Path(os.environ.get("TRUSTHUB_BROKER_DIR") or VAR_DIR / "broker")
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
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
# Workers keep their database connections, as the README's "Running workers" says to.
CELERY_DB_REUSE_MAX = 1000

TRUSTHUB_EVAL = {
    # Pointed at the in-thread sandbox by the `trusthub_settings` fixture (or, for a worker
    # process, by the environment).
    "BASE_URL": os.environ.get("TRUSTHUB_BASE_URL", "http://127.0.0.1:9"),
    "ACCOUNT_SID": os.environ.get("TRUSTHUB_TEST_ACCOUNT_SID"),
    "AUTH_TOKEN": os.environ.get("TRUSTHUB_TEST_AUTH_TOKEN"),
    "TASK_QUEUE": os.environ.get("TRUSTHUB_TEST_QUEUE"),
    "RETRY_BACKOFF": 0.01,
    "RETRY_BACKOFF_MAX": 0.05,
    "READ_TIMEOUT": 2.0,
    "CONNECT_TIMEOUT": 2.0,
    # A worker process started by the suite gets the test's own overrides (tests/worker.py).
    **json.loads(os.environ.get("TRUSTHUB_TEST_SETTINGS", "{}")),
}
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
# The app's lines go to the root logger, which a worker started by the suite prints.
LOGGING = {"version": 1, "disable_existing_loggers": False}
