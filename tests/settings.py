"""Settings for the test suite: the example project's, with a test database and eager Celery.

TRUSTHUB_TEST_DATABASE_URL picks the database (default: a SQLite file under var/, so that a
separate worker process can share it); the PostgreSQL and MariaDB passes of `make test` set it.
"""

import json
import os

import dj_database_url

from project.settings import *  # noqa: F403
from project.settings import VAR_DIR

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

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# In-process tests run tasks eagerly; tests/worker.py starts real workers with this off.
CELERY_TASK_ALWAYS_EAGER = os.environ.get("TRUSTHUB_TEST_EAGER", "1") == "1"
CELERY_TASK_EAGER_PROPAGATES = True
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
LOGGING = {"version": 1, "disable_existing_loggers": False}
