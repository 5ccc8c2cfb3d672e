"""`make run`: the whole product on one machine, with no services to install.

Migrates SQLite, creates the demo login, starts the TrustHub sandbox, imports its records,
starts a Celery worker (filesystem broker) and the development server, and prints where to look.
Ctrl-C stops everything.

TRUSTHUB_DEMO_PORT     the web server's port (default 8000)
TRUSTHUB_SANDBOX_PORT  the sandbox's port (default 8765; project/settings.py reads it too)
The demo turns DJANGO_DEBUG on unless it is set: it serves on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SANDBOX_PORT = int(os.environ.get("TRUSTHUB_SANDBOX_PORT", "8765"))
WEB_PORT = int(os.environ.get("TRUSTHUB_DEMO_PORT", "8000"))
DEMO_USER = "admin"
DEMO_PASSWORD = "admin"  # noqa: S105 (the demo's documented login, on loopback only)


def manage(*args: str) -> None:
    subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, check=True)


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while not port_in_use(port):
        if process.poll() is not None:
            sys.exit(f"The {what} exited with code {process.returncode}.")
        if time.monotonic() > deadline:
            sys.exit(f"The {what} did not start listening on port {port}.")
        time.sleep(0.2)


def ensure_demo_user() -> None:
    import django

    django.setup()
    from django.contrib.auth import get_user_model

    user, _ = get_user_model().objects.get_or_create(
        username=DEMO_USER, defaults={"is_staff": True, "is_superuser": True}
    )
    user.set_password(DEMO_PASSWORD)
    user.save()


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    # The demo's processes (and project/settings.py's sandbox URL) follow these.
    os.environ.setdefault("DJANGO_DEBUG", "1")
    os.environ["TRUSTHUB_SANDBOX_PORT"] = str(SANDBOX_PORT)
    for port, what, variable in (
        (SANDBOX_PORT, "sandbox", "TRUSTHUB_SANDBOX_PORT"),
        (WEB_PORT, "web server", "TRUSTHUB_DEMO_PORT"),
    ):
        if port_in_use(port):
            sys.exit(
                f"Port {port} (the {what}) is taken: is another `make run` still running? "
                f"Another port: {variable}=<port> make run"
            )
    manage("migrate", "--noinput", "-v", "0")
    ensure_demo_user()
    from django.conf import settings

    children: list[subprocess.Popen[bytes]] = []

    def stop(*_: object) -> None:
        for child in reversed(children):
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        sandbox = subprocess.Popen(
            [
                PYTHON, "manage.py", "trusthub_sandbox",
                "--port", str(SANDBOX_PORT), "--world", str(settings.SANDBOX_WORLD),
            ],
            cwd=ROOT,
        )  # fmt: skip
        children.append(sandbox)
        wait_for_port(SANDBOX_PORT, sandbox, "sandbox")
        manage("trusthub_sync", "--evaluations")
        children.append(
            subprocess.Popen(
                [
                    PYTHON, "-m", "celery", "-A", "project", "worker",
                    "--loglevel", "INFO", "--concurrency", "2",
                ],
                cwd=ROOT,
            )
        )  # fmt: skip
        # --insecure: the admin's and Swagger UI's files are served even with DJANGO_DEBUG=0.
        web = subprocess.Popen(
            [
                PYTHON, "manage.py", "runserver", f"127.0.0.1:{WEB_PORT}",
                "--noreload", "--insecure",
            ],
            cwd=ROOT,
        )  # fmt: skip
        children.append(web)
        wait_for_port(WEB_PORT, web, "web server")
        # A second shell needs the same sandbox port as this one's processes.
        prefix = "" if SANDBOX_PORT == 8765 else f"TRUSTHUB_SANDBOX_PORT={SANDBOX_PORT} "
        print(
            "\n"
            "  trusthub_eval demo is running.\n"
            f"  Admin:   http://127.0.0.1:{WEB_PORT}/admin/\n"
            f"  Login:   {DEMO_USER} / {DEMO_PASSWORD}\n"
            f"  API:     http://127.0.0.1:{WEB_PORT}/api/docs/ "
            f"(schema: http://127.0.0.1:{WEB_PORT}/api/schema/)\n"
            f"  Sandbox: http://127.0.0.1:{SANDBOX_PORT}/v1/CustomerProfiles\n"
            "  Try, in a second shell:\n"
            f"    {prefix}.venv/bin/python manage.py trusthub_evaluate "
            "BU64dc6bf5810565dc16eaf5c3a772768c --wait\n"
            "  Ctrl-C stops everything.\n",
            flush=True,
        )
        while all(child.poll() is None for child in children):
            time.sleep(1)
        sys.exit("A demo process stopped unexpectedly; stopping the others.")
    finally:
        stop()


if __name__ == "__main__":
    main()
