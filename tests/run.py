"""Run the suite as `make test` does: on SQLite, then on PostgreSQL and on MariaDB when they answer.

Node packages (Prism, axe-core) are installed first when npm is present. Whatever cannot run is said
loudly; with TRUSTHUB_REQUIRE_SERVICES=1 it is a failure instead. The servers are the ones that
TRUSTHUB_TEST_POSTGRES_URL and TRUSTHUB_TEST_MARIADB_URL name (see the README's Development
section); each pass makes its own test database there and drops it at the end.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

from tests.services import (
    AXE_JS,
    MARIADB_URL,
    POSTGRES_URL,
    PRISM_BIN,
    ROOT,
    answers,
    require_services,
)
from tests.services import where as address_of


def banner(message: str) -> None:
    line = "!" * 78
    print(f"\n{line}\n!! {message}\n{line}\n", flush=True)


def install_node_packages() -> None:
    if PRISM_BIN.exists() and AXE_JS.exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        banner("npm not found: Prism conformance and axe-core accessibility tests cannot run")
        return
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=ROOT, check=False
    )


def pytest(extra_env: dict[str, str], label: str, args: list[str]) -> int:
    print(f"\n===== test pass: {label} =====", flush=True)
    env = {**os.environ, **extra_env}
    return subprocess.call([sys.executable, "-m", "pytest", *args], cwd=ROOT, env=env)


def server_pass(
    label: str, url: str, variable: str, driver: str, install: str, args: list[str]
) -> int | None:
    """Run the suite against the database server at ``url``; None when it was skipped."""
    why = None
    if not answers(url):
        why = f"no {label} on {address_of(url)} ({variable})"
    elif importlib.util.find_spec(driver) is None:
        why = f"the {label} driver is not installed ({install})"
    if why is None:
        return pytest({"TRUSTHUB_TEST_DATABASE_URL": url}, label, ["-q", *args])
    if require_services():
        banner(f"FAILED: TRUSTHUB_REQUIRE_SERVICES=1 but {why}")
        return 1
    banner(f"SKIPPED: the {label} pass ({why})")
    return None


def main() -> int:
    args = sys.argv[1:]
    install_node_packages()
    codes = [pytest({}, "SQLite", ["--cov", "--cov-report=term", "--cov-fail-under=90", *args])]
    for label, url, variable, driver, install in (
        ("PostgreSQL", POSTGRES_URL, "TRUSTHUB_TEST_POSTGRES_URL", "psycopg", "the postgres extra"),
        (
            "MariaDB",
            MARIADB_URL,
            "TRUSTHUB_TEST_MARIADB_URL",
            "MySQLdb",
            "apt-get install default-libmysqlclient-dev pkg-config build-essential; make venv",
        ),
    ):
        code = server_pass(label, url, variable, driver, install, args)
        if code is not None:
            codes.append(code)
    # pytest exits 5 when it collected nothing: that is a failure here too.
    return next((code for code in codes if code != 0), 0)


if __name__ == "__main__":
    sys.exit(main())
