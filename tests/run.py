"""Run the suite as `make test` does: on SQLite, then again on PostgreSQL when it is reachable.

Node packages (Prism) are installed first when npm is present. Whatever cannot run is said
loudly; with TRUSTHUB_REQUIRE_SERVICES=1 it is a failure instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from tests.services import PRISM_BIN, ROOT, _port_open, require_services

POSTGRES_URL = os.environ.get(
    "TRUSTHUB_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"
)


def banner(message: str) -> None:
    line = "!" * 78
    print(f"\n{line}\n!! {message}\n{line}\n", flush=True)


def install_node_packages() -> None:
    if PRISM_BIN.exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        banner("npm not found: Prism conformance tests cannot run")
        return
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=ROOT, check=False
    )


def pytest(extra_env: dict[str, str], label: str, args: list[str]) -> int:
    print(f"\n===== test pass: {label} =====", flush=True)
    env = {**os.environ, **extra_env}
    return subprocess.call([sys.executable, "-m", "pytest", *args], cwd=ROOT, env=env)


def main() -> int:
    args = sys.argv[1:]
    install_node_packages()
    codes = [pytest({}, "SQLite", ["--cov", "--cov-report=term", "--cov-fail-under=90", *args])]
    if _port_open(5432):
        codes.append(
            pytest({"TRUSTHUB_TEST_DATABASE_URL": POSTGRES_URL}, "PostgreSQL", ["-q", *args])
        )
    elif require_services():
        banner("FAILED: TRUSTHUB_REQUIRE_SERVICES=1 but PostgreSQL is not on 127.0.0.1:5432")
        codes.append(1)
    else:
        banner("SKIPPED: the PostgreSQL pass (no PostgreSQL on 127.0.0.1:5432)")
    # pytest exits 5 when it collected nothing: that is a failure here too.
    return next((code for code in codes if code != 0), 0)


if __name__ == "__main__":
    sys.exit(main())
