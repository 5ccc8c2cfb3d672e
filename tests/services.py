"""Which external services this machine offers the suite, and what to do when one is missing.

`make test` runs the tests that need a database server, Redis, RabbitMQ, Prism or Chromium when
those are reachable and skips the others loudly; with TRUSTHUB_REQUIRE_SERVICES=1 a missing one
fails. Each service's URL can be changed with a TRUSTHUB_TEST_* variable (see the README's
Development section), so that a shared machine's or CI's own servers can be used.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
SPEC_PATH = ROOT.parent / "shared" / "twilio-oai" / "twilio_trusthub_v1.json"
PRISM_BIN = ROOT / "node_modules" / ".bin" / "prism"
AXE_JS = ROOT / "node_modules" / "axe-core" / "axe.min.js"
CHROMIUM_BIN = Path(os.environ.get("TRUSTHUB_CHROMIUM", "/usr/bin/chromium"))

REDIS_URL = os.environ.get("TRUSTHUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
AMQP_URL = os.environ.get("TRUSTHUB_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
POSTGRES_URL = os.environ.get(
    "TRUSTHUB_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"
)
MARIADB_URL = os.environ.get("TRUSTHUB_TEST_MARIADB_URL", "mysql://root@127.0.0.1:3306/test")
DEFAULT_PORTS = {"redis": 6379, "amqp": 5672, "postgres": 5432, "postgresql": 5432, "mysql": 3306}


def require_services() -> bool:
    return os.environ.get("TRUSTHUB_REQUIRE_SERVICES", "") not in ("", "0", "false")


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a server a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def address(url: str) -> tuple[str, int]:
    """The host and port a service URL points at (its scheme's default port if none)."""
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or DEFAULT_PORTS.get(parts.scheme, 0)


def answers(url: str) -> bool:
    """Whether something accepts connections where ``url`` points."""
    host, port = address(url)
    return _port_open(port, host)


def where(url: str) -> str:
    host, port = address(url)
    return f"{host}:{port}"


@functools.cache
def available(service: str) -> tuple[bool, str]:
    """(available, why not) for one of the services named by the suite's markers."""
    if service == "dbserver":
        from django.db import connection

        if connection.vendor in ("postgresql", "mysql"):
            return True, ""
        return False, "the suite runs on SQLite; the PostgreSQL and MariaDB passes run these"
    if service == "redis":
        return answers(REDIS_URL), f"no Redis on {where(REDIS_URL)} (TRUSTHUB_TEST_REDIS_URL)"
    if service == "rabbitmq":
        return answers(AMQP_URL), f"no RabbitMQ on {where(AMQP_URL)} (TRUSTHUB_TEST_AMQP_URL)"
    if service == "prism":
        ok = PRISM_BIN.exists() and shutil.which("node") is not None and SPEC_PATH.exists()
        return ok, f"Prism is not installed ({PRISM_BIN}; `npm ci` installs it)"
    if service == "browser":
        try:
            import playwright  # noqa: F401
        except ImportError:
            return False, "playwright is not installed"
        return CHROMIUM_BIN.exists(), f"no Chromium at {CHROMIUM_BIN} (apt-get install chromium)"
    if service == "axe":
        return AXE_JS.exists(), f"axe-core is not installed ({AXE_JS}; `npm ci` installs it)"
    if service == "spec":
        return SPEC_PATH.exists(), f"Twilio's spec is not at {SPEC_PATH}"
    raise ValueError(service)
