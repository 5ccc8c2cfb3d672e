"""Settings for the test suite: the example project's, with a test database and eager Celery.

TRUSTHUB_TEST_DATABASE_URL picks the database (default: a SQLite file under var/, so that a
separate worker process can share it); the PostgreSQL pass of `make test` sets it.
"""

import os

import dj_database_url

from project.settings import *  # noqa: F403
from project.settings import VAR_DIR

_url = os.environ.get("TRUSTHUB_TEST_DATABASE_URL", f"sqlite:///{VAR_DIR / 'test-main.sqlite3'}")
DATABASES = {"default": dj_database_url.parse(_url)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL;",
    }
else:
    DATABASES["default"]["TEST"] = {"NAME": "test_trusthub_eval"}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = True
TRUSTHUB_EVAL = {
    # Pointed at the in-thread sandbox by the `trusthub_settings` fixture.
    "BASE_URL": "http://127.0.0.1:9",
    "ACCOUNT_SID": None,
    "AUTH_TOKEN": None,
    "RETRY_BACKOFF": 0.01,
    "RETRY_BACKOFF_MAX": 0.05,
    "READ_TIMEOUT": 2.0,
    "CONNECT_TIMEOUT": 2.0,
}
LOGGING = {"version": 1, "disable_existing_loggers": False}
