"""Run the suite as `make test` does: every supported Django, and every database on one of them.

With the interpreter that runs this (the project's `.venv`: Python 3.11, Django 5.2), the suite
runs on SQLite, then on PostgreSQL and on MariaDB when they answer. Then the SQLite pass runs on
each newer Django of MATRIX, with its Python, in a venv of its own that is made (or brought up to
date with pyproject.toml) here: `.venv-django60`, `.venv-django61`.

Node packages (Prism, axe-core) are installed first when npm is present. Whatever cannot run (a
database server, a Python of the matrix) is said loudly; with TRUSTHUB_REQUIRE_SERVICES=1 it is a
failure instead. The servers are the ones that TRUSTHUB_TEST_POSTGRES_URL and
TRUSTHUB_TEST_MARIADB_URL name (see the README's Development section); each pass makes its own
test database there and drops it at the end. TRUSTHUB_TEST_MATRIX=0 leaves the matrix out.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

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


class Combination(NamedTuple):
    """A newer Django, the Python it is tested with, and the venv that holds them."""

    name: str
    django: str  # a pip requirement
    python: str  # major.minor
    venv: str
    pytest_args: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"SQLite, {self.name}, Python {self.python}"


# Python 3.11 with Django 5.2 is the project's own .venv; Django 6.0 and 6.1 need Python 3.12+.
MATRIX = (
    Combination("Django 6.0", "django~=6.0.0", "3.12", ".venv-django60"),
    # The newest Django: what it deprecates fails the pass, while there is a release to fix it.
    Combination(
        "Django 6.1", "django~=6.1.0", "3.13", ".venv-django61", ("-W", "error::DeprecationWarning")
    ),
)
# What a matrix venv installs besides Django: the app with the extras the SQLite pass uses, and
# the test group.
MATRIX_INSTALL = ("-e", ".[api,redis]", "--group", "test")


#: One line per pass, printed again at the end: what ran, what failed, what was skipped and why.
SUMMARY: list[str] = []


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


def pytest(
    extra_env: dict[str, str], label: str, args: list[str], python: str = sys.executable
) -> int:
    print(f"\n===== test pass: {label} =====", flush=True)
    env = {**os.environ, **extra_env}
    started = time.monotonic()
    code = subprocess.call([python, "-m", "pytest", *args], cwd=ROOT, env=env)
    outcome = "passed" if code == 0 else f"FAILED (exit {code})"
    SUMMARY.append(f"{label}: {outcome} after {time.monotonic() - started:.0f} s")
    print(f"===== {SUMMARY[-1]} =====", flush=True)
    return code


def server_pass(
    label: str, url: str, variable: str, driver: str, install: str, args: list[str], here: str
) -> int | None:
    """Run the suite against the database server at ``url``; None when it was skipped."""
    why = None
    if not answers(url):
        why = f"no {label} on {address_of(url)} ({variable})"
    elif importlib.util.find_spec(driver) is None:
        why = f"the {label} driver is not installed ({install})"
    if why is None:
        return pytest({"TRUSTHUB_TEST_DATABASE_URL": url}, f"{label}, {here}", ["-q", *args])
    return cannot_run(label, why)


def cannot_run(label: str, why: str) -> int | None:
    """A pass that cannot run: a failure (1) with TRUSTHUB_REQUIRE_SERVICES=1, else skipped
    (None); said loudly either way."""
    if require_services():
        SUMMARY.append(f"{label}: FAILED, TRUSTHUB_REQUIRE_SERVICES=1 but {why}")
        banner(f"FAILED: TRUSTHUB_REQUIRE_SERVICES=1 but {why}")
        return 1
    SUMMARY.append(f"{label}: SKIPPED, {why}")
    banner(f"SKIPPED: the {label} pass ({why})")
    return None


def find_python(version: str) -> str | None:
    """The newest pyenv Python ``version`` (major.minor), else ``python<version>`` on PATH."""
    versions = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    found = sorted(
        versions.glob(f"{version}.*/bin/python{version}"),
        key=lambda path: [int(part) for part in path.parts[-3].split(".") if part.isdigit()],
    )
    if found:
        return str(found[-1])
    return shutil.which(f"python{version}")


def matrix_venv(combination: Combination, python: str) -> str:
    """The venv's interpreter, after making the venv or bringing it up to date."""
    venv = ROOT / combination.venv
    digest = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes()
        + repr((combination.django, MATRIX_INSTALL, python)).encode()
    ).hexdigest()[:12]
    stamp = venv / f".installed-{digest}"
    interpreter = venv / "bin" / "python"
    if stamp.exists():
        return str(interpreter)
    print(f"\n===== making {combination.venv} ({combination.label}) =====", flush=True)
    subprocess.run([python, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(interpreter), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True, cwd=ROOT)
    subprocess.run([*pip, *MATRIX_INSTALL, combination.django], check=True, cwd=ROOT)
    stamp.touch()
    return str(interpreter)


def matrix_pass(combination: Combination, args: list[str]) -> int | None:
    """The SQLite pass on ``combination``; None when it was skipped."""
    python = find_python(combination.python)
    if python is None:
        why = (
            f"no Python {combination.python} under pyenv or on PATH "
            f"(pyenv install {combination.python})"
        )
        return cannot_run(combination.label, why)
    try:
        interpreter = matrix_venv(combination, python)
    except subprocess.CalledProcessError as error:
        SUMMARY.append(f"{combination.label}: FAILED, could not make {combination.venv}")
        banner(f"FAILED: could not make {combination.venv}: {error}")
        return 1
    return pytest(
        {}, combination.label, ["-q", *combination.pytest_args, *args], python=interpreter
    )


def main() -> int:
    args = sys.argv[1:]
    install_node_packages()
    here = f"Django {importlib.metadata.version('django')}, Python {sys.version.split()[0]}"
    codes = [
        pytest({}, f"SQLite, {here}", ["--cov", "--cov-report=term", "--cov-fail-under=90", *args])
    ]
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
        code = server_pass(label, url, variable, driver, install, args, here)
        if code is not None:
            codes.append(code)
    if os.environ.get("TRUSTHUB_TEST_MATRIX", "1") != "0":
        for combination in MATRIX:
            code = matrix_pass(combination, args)
            if code is not None:
                codes.append(code)
    print("\n===== test passes =====", *SUMMARY, sep="\n", flush=True)
    # pytest exits 5 when it collected nothing: that is a failure here too.
    return next((code for code in codes if code != 0), 0)


if __name__ == "__main__":
    sys.exit(main())
