"""Which external services this machine offers the suite, and what to do when one is missing.

`make test` runs the tests that need PostgreSQL, Redis, RabbitMQ, Prism or Chromium when those are
reachable and skips the others loudly; with TRUSTHUB_REQUIRE_SERVICES=1 a missing one fails.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC_PATH = ROOT.parent / "shared" / "twilio-oai" / "twilio_trusthub_v1.json"
PRISM_BIN = ROOT / "node_modules" / ".bin" / "prism"
CHROMIUM_BIN = Path(os.environ.get("TRUSTHUB_CHROMIUM", "/usr/bin/chromium"))

REDIS_URL = os.environ.get("TRUSTHUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
AMQP_URL = os.environ.get("TRUSTHUB_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def require_services() -> bool:
    return os.environ.get("TRUSTHUB_REQUIRE_SERVICES", "") not in ("", "0", "false")


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@functools.cache
def available(service: str) -> tuple[bool, str]:
    """(available, why not) for one of the services named by the suite's markers."""
    if service == "postgres":
        from django.conf import settings

        engine = settings.DATABASES["default"]["ENGINE"]
        if "postgresql" in engine:
            return True, ""
        return False, "the suite runs on SQLite; the PostgreSQL pass of `make test` runs these"
    if service == "redis":
        return _port_open(6379), "no Redis on 127.0.0.1:6379"
    if service == "rabbitmq":
        return _port_open(5672), "no RabbitMQ on 127.0.0.1:5672"
    if service == "prism":
        ok = PRISM_BIN.exists() and shutil.which("node") is not None and SPEC_PATH.exists()
        return ok, f"Prism is not installed ({PRISM_BIN}; `npm ci` installs it)"
    if service == "browser":
        try:
            import playwright  # noqa: F401
        except ImportError:
            return False, "playwright is not installed"
        return CHROMIUM_BIN.exists(), f"no Chromium at {CHROMIUM_BIN} (apt-get install chromium)"
    if service == "spec":
        return SPEC_PATH.exists(), f"Twilio's spec is not at {SPEC_PATH}"
    raise ValueError(service)
