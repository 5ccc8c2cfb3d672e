"""A real `celery worker` process for the suite: own process, real broker, the test database.

The worker talks to the in-thread sandbox over HTTP and to the test database; the test process
publishes through the same broker. Nothing is eager and nothing is mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from tests.services import AMQP_URL, REDIS_URL, ROOT

#: A folder whose sitecustomize.py sets a worker's clock off (TRUSTHUB_TEST_CLOCK_OFFSET).
SKEWED_CLOCK = Path(__file__).resolve().parent / "skewed_clock"

BROKERS = {
    "filesystem": None,
    "redis": pytest.param("redis", marks=pytest.mark.redis),
    "rabbitmq": pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
}


class WorkerProcess:
    """A running worker and what it printed, for assertions and for failure messages."""

    def __init__(self, process: subprocess.Popen[str], queue: str | None = None) -> None:
        self.process = process
        self.queue = queue
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip())
            if " ready." in line:
                self.ready.set()

    @property
    def output(self) -> str:
        """Everything the worker printed."""
        return "\n".join(self.lines)

    @property
    def tail(self) -> str:
        return "\n".join(self.lines[-80:])

    def wait_until(self, predicate: Any, timeout: float = 60.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.process.poll() is not None:
                pytest.fail(f"worker exited ({self.process.returncode}):\n{self.tail}")
            time.sleep(0.2)
        pytest.fail(f"timed out waiting for {what}; worker output:\n{self.tail}")


def _broker(kind: str, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    if kind == "redis":
        return REDIS_URL, {}
    if kind == "rabbitmq":
        return AMQP_URL, {}
    # The layout tests/settings.py gives TRUSTHUB_BROKER_DIR, so the worker finds it.
    queue = tmp_path / "broker" / "queue"
    queue.mkdir(parents=True)
    (tmp_path / "broker" / "control").mkdir()
    return "filesystem://", {
        "data_folder_in": str(queue),
        "data_folder_out": str(queue),
        "control_folder": str(tmp_path / "broker" / "control"),
        "store_processed": False,
        "polling_interval": 0.2,
    }


@contextmanager
def publish_through(broker_url: str, transport_options: dict[str, Any]) -> Iterator[None]:
    """Make this process's Celery app publish to the real broker instead of running eagerly."""
    from celery import current_app

    app = current_app._get_current_object()
    keys = ("task_always_eager", "broker_url", "broker_transport", "broker_transport_options")
    saved = {key: app.conf[key] for key in keys}
    app.conf.update(
        task_always_eager=False,
        broker_url=broker_url,
        broker_transport="project.broker:Transport" if broker_url == "filesystem://" else None,
        broker_transport_options=transport_options,
    )
    app._pool = None
    app.amqp._producer_pool = None
    try:
        yield
    finally:
        from kombu import pools

        if app._pool is not None:
            app._pool.force_close_all()
        # kombu keeps producer pools by broker URL, holding the connection pool just closed: a
        # later publish_through to the same broker would acquire from it.
        pools.reset()
        app.conf.update(saved)
        app._pool = None
        app.amqp._producer_pool = None


@contextmanager
def celery_worker(
    kind: str,
    *,
    sandbox: Any,
    settings: Any,
    tmp_path: Path,
    concurrency: int = 2,
    pool: str = "threads",
    trusthub_eval: dict[str, Any] | None = None,
    environment: dict[str, str] | None = None,
) -> Iterator[WorkerProcess]:
    """Start a worker on broker ``kind`` serving a queue of its own; stop it afterwards.

    ``trusthub_eval`` overrides TRUSTHUB_EVAL keys in the worker (and in this process);
    ``environment`` adds variables to the worker's.
    """
    broker_url, options = _broker(kind, tmp_path)
    queue = f"trusthub-test-{uuid.uuid4().hex[:12]}"
    overrides = trusthub_eval or {}
    settings.TRUSTHUB_EVAL = {**settings.TRUSTHUB_EVAL, **overrides, "TASK_QUEUE": queue}
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "TRUSTHUB_TEST_EAGER": "0",
        "TRUSTHUB_TEST_DB_NAME": str(connection.settings_dict["NAME"]),
        "TRUSTHUB_BASE_URL": sandbox.url,
        "TRUSTHUB_TEST_ACCOUNT_SID": sandbox.account_sid,
        "TRUSTHUB_TEST_AUTH_TOKEN": sandbox.auth_token,
        "TRUSTHUB_TEST_QUEUE": queue,
        "TRUSTHUB_TEST_SETTINGS": json.dumps(overrides),
        "CELERY_BROKER_URL": broker_url,
        "TRUSTHUB_BROKER_DIR": str(tmp_path / "broker"),
        "PYTHONUNBUFFERED": "1",
        **(environment or {}),
    }
    command = [
        sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker",
        "--queues", queue, "--concurrency", str(concurrency), "--pool", pool,
        "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
        "--hostname", f"{queue}@%h",
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    worker = WorkerProcess(process, queue)
    try:
        if not worker.ready.wait(60):
            pytest.fail(f"celery worker did not become ready:\n{worker.tail}")
        with publish_through(broker_url, options):
            yield worker
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if broker_url != "filesystem://":
            from trusthub_eval.dispatch import sweep_queue

            remove_queue(broker_url, queue)
            remove_queue(broker_url, sweep_queue())  # every worker consumes it too


def remove_queue(broker_url: str, queue: str) -> None:
    """Delete a worker's queue and its exchange from a shared broker, leaving nothing behind.

    Celery declares both on first use (an exchange named after the queue); they would outlive
    the run as RabbitMQ queues and exchanges, or as Redis lists and ``_kombu.binding.*`` sets.
    """
    from kombu import Connection, Exchange, Queue

    with Connection(broker_url) as connection:
        channel = connection.default_channel
        if broker_url.startswith(("amqp", "pyamqp")):
            channel.queue_delete(queue)
            channel.exchange_delete(queue)
            return
        # Redis keeps bindings in sets that a fresh channel does not know about: declaring the
        # queue as Celery did tells it which member to remove along with the queue's lists.
        bound = Queue(queue, Exchange(queue, type="direct"), routing_key=queue)(channel)
        bound.declare()
        bound.delete()


def traces(kind: str, queue: str) -> list[str]:
    """What a broker still holds of ``queue``: Redis keys, or a RabbitMQ queue or exchange."""
    if kind == "redis":
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        try:
            return sorted(key.decode() for key in client.scan_iter(match=f"*{queue}*"))
        finally:
            client.close()
    from amqp.exceptions import NotFound
    from kombu import Connection

    found = []
    with Connection(AMQP_URL) as connection:
        for what in ("queue", "exchange"):
            channel = connection.channel()
            try:
                if what == "queue":
                    channel.queue_declare(queue, passive=True)
                else:
                    channel.exchange_declare(queue, "direct", passive=True)
                found.append(f"{what} {queue}")
            except NotFound:
                pass  # the server closes the channel on NOT_FOUND
    return found
