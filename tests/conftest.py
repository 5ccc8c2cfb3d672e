"""Shared fixtures, and the loud skipping (or failing) of tests whose service is missing."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import services
from tests.celery_app import app as celery_app  # noqa: F401 (the default app from the start)

pytest_plugins = ["tests.sandbox_fixtures"]

SERVICE_MARKERS = ("dbserver", "redis", "rabbitmq", "prism", "axe", "browser", "spec")
_missing: dict[str, list[str]] = defaultdict(list)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for name in SERVICE_MARKERS:
            if item.get_closest_marker(name) is None:
                continue
            ok, why = services.available(name)
            if ok:
                continue
            # The SQLite pass skips the tests that need a database server quietly: the PostgreSQL
            # and MariaDB passes run them, and tests/run.py says loudly if those cannot run.
            if name == "dbserver":
                item.add_marker(pytest.mark.skip(reason=f"database servers only: {why}"))
                continue
            _missing[name].append(item.nodeid)
            if services.require_services():
                item.add_marker(pytest.mark.usefixtures("_service_required"))
                item.user_properties.append(("missing_service", f"{name}: {why}"))
            else:
                item.add_marker(pytest.mark.skip(reason=f"SERVICE MISSING {name}: {why}"))


@pytest.fixture
def _service_required(request: pytest.FixtureRequest) -> None:
    missing = [value for key, value in request.node.user_properties if key == "missing_service"]
    pytest.fail(f"TRUSTHUB_REQUIRE_SERVICES=1 but a service is missing: {'; '.join(missing)}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _missing:
        return
    verb = "FAILED" if services.require_services() else "SKIPPED"
    terminalreporter.section(f"tests {verb} for want of a service", sep="!", bold=True, red=True)
    for name, nodeids in sorted(_missing.items()):
        terminalreporter.write_line(
            f"{verb} {len(nodeids)} test(s) needing {name}: {services.available(name)[1]}",
            red=True,
            bold=True,
        )


@pytest.fixture(autouse=True)
def trusthub_settings(request: pytest.FixtureRequest, settings: Any) -> None:
    """Point the app at the in-thread sandbox for tests that use it."""
    if "sandbox" not in request.fixturenames:
        return
    sandbox = request.getfixturevalue("sandbox")
    settings.TRUSTHUB_EVAL = {
        **settings.TRUSTHUB_EVAL,
        "BASE_URL": sandbox.url,
        "ACCOUNT_SID": sandbox.account_sid,
        "AUTH_TOKEN": sandbox.auth_token,
    }


@pytest.fixture(autouse=True)
def _empty_cache() -> Iterator[None]:
    """Every test starts and ends with an empty cache: the trigger throttle counts requests
    there, and the cache outlives a test's database transaction (a user id may come round
    again)."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def reader(django_user_model: Any) -> Any:
    """A user who may view the app's profiles, policies and evaluations, and do nothing else."""
    from tests.factories import VIEW_ALL, grant

    return grant(django_user_model.objects.create_user("reader"), *VIEW_ALL)


@pytest.fixture
def api(reader: Any) -> Any:
    """An API client authenticated as ``reader``, with a token as the API's consumers are."""
    from tests.factories import client_for

    return client_for(reader)


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `pip wheel .` builds from this checkout, built once per session."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), "."],
        cwd=services.ROOT,
        check=True,
    )
    (built,) = out.glob("trusthub_eval-*.whl")
    return built
