"""What the app does inside every Celery worker: keep its connections healthy, and sweep for
evaluations whose message was lost.

A message can be lost (the broker restarted, a worker was killed under Redis' one-hour
visibility timeout, the broker was down at request time, a retry could not be published). The
row is the record, so every worker sends the sweep task when it is ready and then every
``SWEEP_INTERVAL`` seconds; no beat schedule is needed for it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

from django.db import DatabaseError, close_old_connections, connections

from trusthub_eval import clock, dispatch
from trusthub_eval.conf import app_settings

logger = logging.getLogger(__name__)


def consume_sweep_queue(sender: Any = None, instance: Any = None, **kwargs: Any) -> None:
    """``celeryd_after_setup`` receiver: the worker consumes the sweep's own queue beside the
    ones it was given (``-Q``), so that the sweep never waits behind a backlog of evaluations.
    Celery's documented way to add a queue every worker consumes."""
    if app_settings.SWEEP_INTERVAL and instance is not None:
        instance.app.amqp.queues.select_add(dispatch.sweep_queue())


def start_sweeping(sender: Any = None, **kwargs: Any) -> None:
    """``worker_ready`` receiver: say whether this worker's clock is off, then sweep now and
    every SWEEP_INTERVAL seconds from the worker's own timer (the consumer's, which Celery's
    heartbeats use too), into the sweep's own queue (:func:`consume_sweep_queue`)."""
    check_clock()
    interval = app_settings.SWEEP_INTERVAL
    if not interval:
        return
    timer = getattr(sender, "timer", None)
    if timer is None:  # pragma: no cover (every Celery consumer has one)
        logger.warning("No worker timer: the TrustHub sweep will not run in this worker.")
        return
    dispatch.send_sweep()
    timer.call_repeatedly(interval, dispatch.send_sweep)
    logger.info("TrustHub sweep every %gs", interval)


def check_clock() -> None:
    """Compare this worker's clock with the database's, once, and warn if they disagree."""
    try:
        clock.warn_if_skewed()
    except DatabaseError as error:
        logger.warning(
            "Could not compare this worker's clock with the database's (%s: %s).",
            type(error).__name__,
            error,
        )
    finally:
        # The worker's main process runs no task: it keeps no connection.
        for connection in connections.all(initialized_only=True):
            connection.close()


@contextlib.contextmanager
def task_connections(request: Any) -> Iterator[None]:
    """Around one task, what Django does around a request: close the database connections that
    are past ``CONN_MAX_AGE`` or broken, before and after.

    Celery's Django fixup closes every connection before and after each task unless
    ``CELERY_DB_REUSE_MAX`` is set, so a worker opens a connection (a PostgreSQL backend) per
    evaluation. With it set, connections are kept and this is what still honours
    ``CONN_MAX_AGE`` and ``CONN_HEALTH_CHECKS``, and drops a connection that broke (a database
    restart) instead of failing every later task with it. Skipped when the task runs eagerly,
    inside the caller's transaction.

    In a gevent or eventlet pool every task runs in a greenlet of its own, so Django's
    per-thread connections are per task: they are closed after it, or they would pile up.
    """
    if getattr(request, "is_eager", False):
        yield
        return
    close_old_connections()
    try:
        yield
    finally:
        if _greenlet_per_task():
            for connection in connections.all(initialized_only=True):
                connection.close()
        else:
            close_old_connections()


def _greenlet_per_task() -> bool:
    """Whether threads are greenlets here (a gevent or eventlet pool's monkey-patching)."""
    gevent = sys.modules.get("gevent.monkey")
    if gevent is not None and gevent.is_module_patched("threading"):
        return True
    eventlet = sys.modules.get("eventlet.patcher")
    return bool(eventlet is not None and eventlet.is_monkey_patched("thread"))
