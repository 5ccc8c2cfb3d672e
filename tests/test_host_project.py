"""The README's "Install into your own project", followed line by line in a fresh project.

A project made by `django-admin startproject` gets the README's own snippets, extracted from
README.md (so the two cannot drift apart), and runs the README's own commands: the wheel built
from this checkout, `migrate`, the sandbox, `trusthub_sync`, a real `celery -A hostproj worker`,
`runserver` and `trusthub_evaluate --wait`. Then the admin, the API (schema and Swagger UI
included) and `check` / `check --deploy` are tried as a new user would.

What the test chooses itself, as any host would: the broker (kombu's filesystem transport in
the temporary directory, so no service is needed and nothing is left behind), the database (the
startproject default, SQLite; on the suite's PostgreSQL pass a PostgreSQL database of its own),
free ports, and a non-interactive `createsuperuser`.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from django.db import connection

from tests.services import ROOT, free_port
from tests.worker import WorkerProcess

pytestmark = pytest.mark.worker

README = ROOT / "README.md"
PROJECT = "hostproj"
PASSWORD = "host-project-password"
STARK = "BUb2815d2646adf619f2ae59ecc47191ad"  # noncompliant in the packaged world
ACME = "BU1261667d9ed76fea4c9b909e6d17dad6"  # compliant in the packaged world
# Variables of the test's own environment that must not reach the host project's processes.
_OURS = re.compile(r"^(COV_|COVERAGE_|DJANGO_|CELERY_|TRUSTHUB_|TWILIO_|DATABASE_URL$|PYTHONPATH$)")


@dataclass
class Block:
    language: str
    text: str

    @property
    def target(self) -> str | None:
        """The file a Python block goes into, from its first line (``# yourproject/urls.py``)."""
        first = self.text.splitlines()[0]
        match = re.fullmatch(r"# (\S+\.py)", first.strip())
        return match.group(1) if match else None


def install_section() -> list[Block]:
    """The fenced blocks of the README's install section, in order."""
    text = README.read_text()
    start = text.index("## Install into your own project")
    end = text.index("\n## ", start + 1)
    return [
        Block(language, body)
        for language, body in re.findall(r"```(\w+)\n(.*?)```", text[start:end], re.DOTALL)
    ]


class Host:
    """The host project's directory, environment and processes."""

    def __init__(self, root: Path, site: Path) -> None:
        self.root = root
        self.site = site
        self.env = {key: value for key, value in os.environ.items() if not _OURS.match(key)}
        # The installed wheel comes first: it, not this checkout, is what runs.
        self.env.update(PYTHONPATH=str(site), PYTHONUNBUFFERED="1")
        self.background: list[WorkerProcess] = []
        self.sandbox_url = ""
        self.web_url = ""

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        result = subprocess.run(
            args,
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        output = result.stdout + result.stderr
        if check and result.returncode != 0:
            pytest.fail(f"{shlex.join(args)} exited {result.returncode}:\n{output}")
        return output

    def manage(self, *args: str, check: bool = True) -> str:
        return self.run(sys.executable, "manage.py", *args, check=check)

    def start(self, *args: str) -> WorkerProcess:
        process = subprocess.Popen(
            args,
            cwd=self.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.background.append(WorkerProcess(process))
        return self.background[-1]

    def stop(self) -> None:
        for running in reversed(self.background):
            running.process.terminate()
        for running in self.background:
            try:
                running.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                running.process.kill()
                running.process.wait()

    def append(self, relative: str, text: str) -> None:
        path = self.root / relative.replace("yourproject", PROJECT)
        existing = path.read_text() if path.exists() else ""
        # The README's placeholder is the project's name, in paths and code alike.
        path.write_text(f"{existing}\n{text.replace('yourproject', PROJECT)}")

    # The README's commands ---------------------------------------------------------------

    def command(self, line: str) -> None:
        """Run one line of a README shell block: the same command, in this project."""
        args = shlex.split(line.replace("yourproject", PROJECT), comments=True)
        own_shell = "in a shell of its own" in line
        if args[:2] == ["pip", "install"]:
            return  # the wheel is installed already (see the test)
        if args[0] == "celery":
            worker = self.start(sys.executable, "-m", *args)
            worker.wait_until(worker.ready.is_set, what="the host's worker to be ready")
            return
        assert args[:2] == ["python", "manage.py"], f"unexpected README command: {line}"
        name = args[2]
        if name == "createsuperuser":
            self.env.update(DJANGO_SUPERUSER_PASSWORD=PASSWORD)
            self.manage(*args[2:], "--noinput", "--username", "admin", "--email", "a@b.test")
        elif name == "trusthub_sandbox":
            assert own_shell
            sandbox = self.start(sys.executable, *args[1:], "--port", "0")
            sandbox.wait_until(lambda: "Customer profiles:" in sandbox.output, what="sandbox")
            self.sandbox_output = sandbox.output
            self.sandbox_url = re.search(r"listening on (\S+)", sandbox.output).group(1)
        elif name == "runserver":
            assert own_shell
            port = free_port()
            server = self.start(sys.executable, *args[1:], f"127.0.0.1:{port}", "--noreload")
            self.web_url = f"http://127.0.0.1:{port}"
            server.wait_until(lambda: _answers(self.web_url), what="runserver")
        else:
            assert not own_shell, line
            self.last_output = self.manage(*args[2:])


def _answers(url: str) -> bool:
    try:
        requests.get(url, timeout=2)
    except requests.ConnectionError:
        return False
    return True


def _database_settings(tmp_path: Path) -> Iterator[str]:
    """The host's DATABASES: startproject's SQLite, or on the PostgreSQL pass a database of its
    own on the suite's server (dropped afterwards)."""
    vendor = connection.vendor
    if vendor == "sqlite":
        yield ""
        return
    if vendor != "postgresql":
        pytest.skip(f"the host project test knows SQLite and PostgreSQL, not {vendor}")
    import psycopg

    params = connection.settings_dict
    name = f"test_hostproj_{uuid.uuid4().hex[:12]}"
    dsn = {
        "host": params["HOST"] or "127.0.0.1",
        "port": params["PORT"] or 5432,
        "user": params["USER"],
        "password": params["PASSWORD"],
        "dbname": "postgres",
    }
    with psycopg.connect(**dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        database = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            **{key: params[key] for key in ("HOST", "PORT", "USER", "PASSWORD")},
        }
        yield f"DATABASES = {{'default': {database!r}}}\n"
    finally:
        with psycopg.connect(**dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def host(tmp_path: Path, wheel: Path) -> Iterator[Host]:
    site = tmp_path / "site"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"),
            *("--target", str(site), str(wheel)),
        ],
        check=True,
    )
    root = tmp_path / "project"
    root.mkdir()
    project = Host(root, site)
    project.run(sys.executable, "-m", "django", "startproject", PROJECT, str(root))
    databases = _database_settings(tmp_path)
    project.database_settings = next(databases)
    try:
        yield project
    finally:
        project.stop()
        next(databases, None)


def test_the_readme_install_section_works_verbatim_in_a_new_project(host: Host, wheel: Path):
    blocks = install_section()
    # The README says `pip install "trusthub-eval[api,redis]"`: the extras bring what
    # INSTALLED_APPS names and the Redis broker its settings name, and the installed app is the
    # wheel's, not this checkout.
    assert any(
        'pip install "trusthub-eval[api,redis]"' in b.text for b in blocks if b.language == "sh"
    )
    metadata = next(
        zipfile.ZipFile(wheel).read(name).decode()
        for name in zipfile.ZipFile(wheel).namelist()
        if name.endswith("METADATA")
    )
    for requirement in ("django-filter", "drf-spectacular"):
        assert re.search(rf"^Requires-Dist: {requirement}\S*; extra == .api.$", metadata, re.M)
    assert re.search(r"^Requires-Dist: celery\[redis\]\S*; extra == .redis.$", metadata, re.M)
    where = host.run(sys.executable, "-c", "import trusthub_eval; print(trusthub_eval.__file__)")
    assert where.strip().startswith(str(host.site))

    broker = host.root / "broker"
    for folder in ("queue", "processed", "control"):
        (broker / folder).mkdir(parents=True)
    host_choices = (
        # The test's own broker and database (see the module docstring).
        'CELERY_BROKER_URL = "filesystem://"\n'
        "CELERY_BROKER_TRANSPORT_OPTIONS = {"
        f"'data_folder_in': {str(broker / 'queue')!r}, "
        f"'data_folder_out': {str(broker / 'queue')!r}, "
        f"'processed_folder': {str(broker / 'processed')!r}, "
        f"'control_folder': {str(broker / 'control')!r}, "
        "'store_processed': False, 'polling_interval': 0.2}\n" + host.database_settings
    )

    sandbox_settings = None
    for block in blocks:
        if block.language == "python":
            assert block.target, f"a Python block of the install section names no file:\n{block}"
            text = block.text
            if "TRUSTHUB_EVAL" in text:
                sandbox_settings = text
                # Before it: a project that wants the sandbox and has no credentials yet.
                # migrate ran already; check is clean, and so is makemigrations --check.
                assert "no issues" in host.manage("check")
                assert "No changes detected" in host.manage("makemigrations", "--check")
                text = text.replace("http://127.0.0.1:8765", host.sandbox_url)
            host.append(block.target, text)
            if block.target.endswith("settings.py") and "INSTALLED_APPS" in text:
                host.append(block.target, host_choices)
        elif block.language == "sh":
            for line in block.text.splitlines():
                if line.strip():
                    host.command(line)

    # The README's sandbox settings are what the sandbox itself prints (its packaged world's).
    assert sandbox_settings is not None
    printed = host.sandbox_output
    start = printed.index("TRUSTHUB_EVAL = {")
    printed_settings = settings_dict(printed[start : printed.index("\n}", start) + 2])
    readme_settings = settings_dict(sandbox_settings)
    assert readme_settings == {**printed_settings, "BASE_URL": "http://127.0.0.1:8765"}
    world = json.loads((host.site / "trusthub_eval/sandbox/default_world.json").read_text())
    assert readme_settings["ACCOUNT_SID"] == world["account_sid"]
    assert readme_settings["AUTH_TOKEN"] == world["auth_token"]
    # trusthub_evaluate --wait, the README's last command, printed TrustHub's verdict.
    assert f"({STARK})" in host.last_output
    assert re.search(r"^EL[0-9a-f]{32}: noncompliant$", host.last_output, re.M), host.last_output

    vendor = host.manage(
        "shell", "-c", "from django.db import connection; print(connection.vendor)"
    )
    assert vendor.split()[-1] == connection.vendor

    # check and check --deploy: nothing from this app or its schema.
    assert "no issues" in host.manage("check")
    # Django's own findings about a development project are the new project's, not the app's:
    # on Django 6.1 they include an error (mail.E001, the console e-mail backend that
    # startproject's settings name), so the command's status says nothing about the app.
    deploy = host.manage("check", "--deploy", check=False)
    assert "System check identified" in deploy, deploy
    assert "trusthub_eval." not in deploy and "drf_spectacular." not in deploy, deploy
    assert "No changes detected" in host.manage("makemigrations", "--check")

    # The API, with the token the README says how to make.
    token = host.manage("drf_create_token", "admin").split()[2]
    api = requests.Session()
    api.headers["Authorization"] = f"Token {token}"
    base = f"{host.web_url}/api/trusthub"
    schema = api.get(f"{base}/schema/", headers={"Accept": "application/vnd.oai.openapi+json"})
    assert schema.status_code == 200, schema.text[:2000]
    assert "/api/trusthub/customer-profiles/{sid}/evaluations/" in schema.json()["paths"]
    docs = api.get(f"{base}/docs/")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    profiles = api.get(f"{base}/customer-profiles/")
    assert profiles.status_code == 200
    assert {p["sid"] for p in profiles.json()["results"]} == {STARK, ACME}
    trigger = api.post(f"{base}/customer-profiles/{ACME}/evaluations/", json={})
    assert trigger.status_code == 202, trigger.text
    evaluation = api.get(trigger.headers["Location"]).json()
    deadline = time.monotonic() + 30
    while evaluation["state"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.2)
        evaluation = api.get(trigger.headers["Location"]).json()
    assert (evaluation["state"], evaluation["status"]) == ("completed", "compliant")

    # The admin, logged in as the README's createsuperuser user.
    admin = requests.Session()
    login = f"{host.web_url}/admin/login/"
    admin.get(login)
    answer = admin.post(
        login,
        data={
            "username": "admin",
            "password": PASSWORD,
            "csrfmiddlewaretoken": admin.cookies["csrftoken"],
            "next": "/admin/trusthub_eval/customerprofile/",
        },
        headers={"Referer": login},
    )
    assert answer.status_code == 200 and "Stark Widgets LLC" in answer.text


def settings_dict(snippet: str) -> dict[str, str]:
    """The dict a ``TRUSTHUB_EVAL = {...}`` snippet assigns."""
    tree = ast.parse(snippet[snippet.index("TRUSTHUB_EVAL") :])
    value = tree.body[0].value  # type: ignore[attr-defined]
    return ast.literal_eval(value)


def test_the_install_section_names_only_records_of_the_packaged_world():
    section = README.read_text().split("## Install into your own project", 1)[1].split("\n## ")[0]
    world = json.loads((ROOT / "trusthub_eval/sandbox/default_world.json").read_text())
    packaged = {
        record["sid"] for kind in ("customer_profiles", "trust_products") for record in world[kind]
    }
    named = set(re.findall(r"BU[0-9a-f]{32}", section))
    assert named and named <= packaged
