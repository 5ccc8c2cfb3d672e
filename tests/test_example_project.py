"""The example project: safe settings by default, and `make run`'s demo on ports of one's choice."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from django.utils.module_loading import import_string
from django.views.debug import SafeExceptionReporterFilter, technical_500_response

from project.errors import CredentialsHidingFilter
from tests.services import ROOT, free_port
from tests.worker import WorkerProcess

# Variables of the suite's own environment that must not reach the example project's processes.
_OURS = re.compile(r"^(COV_|COVERAGE_|DJANGO_|CELERY_|TRUSTHUB_|TWILIO_|DATABASE_URL$)")
BROKER_URL = "redis://:hunter2-broker@redis.internal:6379/0"
DATABASE_URL = "postgres://app:hunter2-db@db.internal:5432/app"


def clean_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not _OURS.match(key)}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def example_settings(
    var_dir: Path, names: tuple[str, ...] = ("DEBUG", "SECRET_KEY"), **extra: str
) -> dict[str, object]:
    """The example project's settings ``names``, as a process of its own reads them."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, project.settings as s; "
            f"print(json.dumps({{name: getattr(s, name) for name in {list(names)!r}}}))",
        ],
        cwd=ROOT,
        env=clean_env(TRUSTHUB_VAR_DIR=str(var_dir), **extra),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def test_example_settings_are_safe_by_default(tmp_path):
    first = example_settings(tmp_path / "one")
    assert first["DEBUG"] is False
    # No constant key: one made for this machine, kept, readable by its owner only.
    assert len(first["SECRET_KEY"]) >= 50
    assert example_settings(tmp_path / "one") == first
    assert stat.S_IMODE((tmp_path / "one" / "secret_key").stat().st_mode) == 0o600
    assert example_settings(tmp_path / "two")["SECRET_KEY"] != first["SECRET_KEY"]
    assert example_settings(tmp_path / "one", DJANGO_SECRET_KEY="from-the-environment") == {
        "DEBUG": False,
        "SECRET_KEY": "from-the-environment",
    }
    assert example_settings(tmp_path / "one", DJANGO_DEBUG="1")["DEBUG"] is True


def debug_page(rf, settings, reporter_filter=None) -> str:
    # (The URLs are constants: the page shows this function's source lines.)
    settings.DEBUG = True
    settings.CELERY_BROKER_URL = BROKER_URL
    # What a development server passes on: the process environment, in request.META.
    request = rf.get("/admin/", DATABASE_URL=DATABASE_URL)
    if reporter_filter is not None:
        request.exception_reporter_filter = reporter_filter
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        return technical_500_response(request, *sys.exc_info()).content.decode()


def test_a_debug_500_hides_passwords_inside_urls(rf, settings, tmp_path):
    chosen = example_settings(tmp_path, ("DEFAULT_EXCEPTION_REPORTER_FILTER",))
    assert import_string(chosen["DEFAULT_EXCEPTION_REPORTER_FILTER"]) is CredentialsHidingFilter
    page = debug_page(rf, settings, CredentialsHidingFilter())
    assert "hunter2" not in page
    # The rest of each URL stays, to debug with.
    assert "db.internal:5432/app" in page
    assert "redis.internal:6379/0" in page


def test_django_alone_would_show_them(rf, settings):
    # What the example project's filter is for: Django's own shows both passwords.
    page = debug_page(rf, settings, SafeExceptionReporterFilter())
    assert "hunter2-db" in page
    assert "hunter2-broker" in page


def test_sandbox_starts_whatever_the_projects_checks_say(tmp_path):
    # A project mid-configuration: a BASE_URL the checks refuse (E004), no credentials.
    (tmp_path / "midway.py").write_text(
        "SECRET_KEY = 'x'\n"
        "INSTALLED_APPS = ['django.contrib.contenttypes', 'django.contrib.auth', 'trusthub_eval']\n"
        "TRUSTHUB_EVAL = {'BASE_URL': 'trusthub.twilio.com'}\n"
    )
    env = clean_env(PYTHONPATH=str(tmp_path), DJANGO_SETTINGS_MODULE="midway")
    check = subprocess.run(
        [sys.executable, "-m", "django", "check"], env=env, capture_output=True, text=True
    )
    assert "trusthub_eval.E004" in check.stderr
    process = subprocess.Popen(
        [sys.executable, "-m", "django", "trusthub_sandbox", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    sandbox = WorkerProcess(process)
    try:
        sandbox.wait_until(lambda: "Customer profiles:" in sandbox.output, 30, "the sandbox")
        output = sandbox.output
    finally:
        process.terminate()
        process.wait(timeout=10)
    url = re.search(r"listening on (http://127\.0\.0\.1:\d+)", output).group(1)
    world = json.loads((ROOT / "trusthub_eval/sandbox/default_world.json").read_text())
    # The settings it prints point a project at it, with its world's own credentials ...
    assert f'"BASE_URL": "{url}"' in output
    assert f'"ACCOUNT_SID": "{world["account_sid"]}"' in output
    assert f'"AUTH_TOKEN": "{world["auth_token"]}"' in output
    # ... and it lists the profiles those credentials can see.
    for profile in world["customer_profiles"]:
        assert profile["sid"] in output


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.worker
def test_the_demo_runs_on_the_ports_it_is_given_and_prints_urls_that_answer(tmp_path):
    web_port, sandbox_port = free_port(), free_port()
    env = clean_env(
        TRUSTHUB_VAR_DIR=str(tmp_path),
        TRUSTHUB_DEMO_PORT=str(web_port),
        TRUSTHUB_SANDBOX_PORT=str(sandbox_port),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "project.demo"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    demo = WorkerProcess(process)
    try:
        demo.wait_until(lambda: "Ctrl-C stops everything." in demo.output, 90, "the demo")
        output = demo.output
        urls = re.findall(r"http://127\.0\.0\.1:\d+/[^\s)]*", output)
        assert {int(url.split(":")[2].split("/")[0]) for url in urls} == {web_port, sandbox_port}
        for url in urls:
            status = requests.get(url, timeout=10).status_code
            assert status != 404 and status < 500, (url, status)
        # The second shell's command, as printed: the sandbox's port in front.
        line = next(line for line in output.splitlines() if "trusthub_evaluate" in line)
        args = shlex.split(line)
        assert args[0] == f"TRUSTHUB_SANDBOX_PORT={sandbox_port}"
        assert args[1] == ".venv/bin/python"
        second = subprocess.run(
            [sys.executable, *args[2:]],
            cwd=ROOT,
            env=clean_env(
                TRUSTHUB_VAR_DIR=str(tmp_path), TRUSTHUB_SANDBOX_PORT=args[0].split("=")[1]
            ),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert re.search(r"^EL[0-9a-f]{32}: noncompliant$", second.stdout, re.M), (
            second.stdout + second.stderr + demo.tail
        )
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0, demo.tail
    deadline = time.monotonic() + 10
    while (port_open(web_port) or port_open(sandbox_port)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not port_open(web_port) and not port_open(sandbox_port)


@pytest.mark.dbserver
def test_the_example_projects_database_calls_are_bounded():
    """Its connection OPTIONS (timeouts, keepalives) for the server the suite runs on are
    accepted, and on PostgreSQL no statement runs past 30 s."""
    from django.db import connection

    probe = (
        "import django; django.setup(); from django.db import connection; "
        "cursor = connection.cursor(); "
        "cursor.execute('SHOW statement_timeout' if connection.vendor == 'postgresql' "
        "else 'SELECT 1'); print(cursor.fetchone()[0])"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DATABASE_URL": os.environ["TRUSTHUB_TEST_DATABASE_URL"],
    }
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ("30s" if connection.vendor == "postgresql" else "1")
