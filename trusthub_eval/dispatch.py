"""Sends the app's Celery tasks by their registered names, so no module imports ``tasks``.

A message is only a wake-up call: the row is the record. A send that fails (the broker is down)
is logged in one line and reported to the caller; the row stays queued and a worker's sweep
sends it again once the broker is back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from celery import current_app
from kombu.exceptions import KombuError, OperationalError

from trusthub_eval.conf import app_settings

logger = logging.getLogger(__name__)

RUN_EVALUATION = "trusthub_eval.run_evaluation"
DISPATCH_EVALUATIONS = "trusthub_eval.dispatch_evaluations"
RESUME_QUEUED = "trusthub_eval.resume_queued"

# Above this many evaluations, the web process sends a few dispatch messages instead of one
# message each, so a bulk request returns quickly; a worker fans them out.
DIRECT_SEND_LIMIT = 20
DISPATCH_CHUNK = 500

#: What a failed publish raises: kombu's errors, and the socket errors some transports let out.
BROKER_ERRORS = (OperationalError, KombuError, OSError)


def run_queue() -> str:
    """The queue the evaluations' messages go to: TASK_QUEUE, or Celery's default queue."""
    return app_settings.TASK_QUEUE or str(current_app.conf.task_default_queue)


def sweep_queue() -> str:
    """The sweep's own queue, which every worker consumes beside its others, so that the sweep
    never waits behind the backlog of evaluations it may have to rescue."""
    return f"{run_queue()}.trusthub_eval.sweep"


def send(
    name: str,
    args: Sequence[Any] = (),
    *,
    countdown: float | None = None,
    queue: str | None = None,
) -> None:
    """Send task ``name`` to the app's queue (or ``queue``); in eager mode (tests, demos) run it
    here."""
    app = current_app
    queue = queue or app_settings.TASK_QUEUE
    options: dict[str, Any] = {"queue": queue} if queue else {}
    if countdown is not None:
        options["countdown"] = countdown
    if app.conf.task_always_eager:
        # send_task ignores task_always_eager; the registered task honours it.
        app.tasks[name].apply_async(tuple(args), **options)
        return
    app.send_task(name, tuple(args), **options)


def send_runs(
    evaluation_ids: Sequence[int], *, fan_out: bool = True, queue: str | None = None
) -> bool:
    """Wake a worker for each evaluation; False (logged) if the broker could not be reached.

    With ``fan_out``, many evaluations go as a few dispatch messages that a worker expands
    (the dispatch task itself sends with ``fan_out=False``). ``queue``: another queue than
    the app's (the sweep's, for rows that must not wait behind a backlog).
    """
    try:
        if queue is not None or not fan_out or len(evaluation_ids) <= DIRECT_SEND_LIMIT:
            for evaluation_id in evaluation_ids:
                send(RUN_EVALUATION, (evaluation_id,), queue=queue)
        else:
            for start in range(0, len(evaluation_ids), DISPATCH_CHUNK):
                send(DISPATCH_EVALUATIONS, (list(evaluation_ids[start : start + DISPATCH_CHUNK]),))
    except ImportError:
        # Not a broker that is down: one that can never be reached until something is installed.
        logger.error(
            "%s The %d evaluation(s) stay queued.", transport_problem(), len(evaluation_ids)
        )
        return False
    # Any failure to publish, not only the transports' own errors (kombu's pools raise
    # RuntimeError, for one): the rows are committed and wait for the sweep either way.
    except Exception as error:
        logger.warning(
            "Could not reach the Celery broker for %d evaluation(s) (%s: %s); they stay queued "
            "and a worker's sweep sends them once the broker is back.",
            len(evaluation_ids),
            type(error).__name__,
            error,
            # A broker that is down needs no traceback; anything else does.
            exc_info=not isinstance(error, BROKER_ERRORS),
        )
        return False
    return True


def transport_problem() -> str | None:
    """Why Celery's transport for the broker cannot be loaded (a module it needs is not
    installed), in words that say what to install; None when it loads."""
    try:
        with current_app.connection_for_write() as connection:
            connection.transport  # noqa: B018 (loading it is the check)
    except ImportError as error:
        return (
            f"Celery's transport for the broker (CELERY_BROKER_URL) needs a module that is not "
            f"installed: {error}. Install it; for a Redis broker, "
            "pip install 'trusthub-eval[redis]'."
        )
    return None


def send_sweep() -> bool:
    """Ask a worker to send again the evaluations whose message was lost.

    It goes to :func:`sweep_queue`. It has no expiry: Celery would judge it by the receiving
    worker's clock against the sender's, and a skewed worker would drop every sweep another
    sent. Sweeps that piled up while every slot was busy cost two queries each and send
    nothing twice (the rows they send are marked).
    """
    try:
        send(RESUME_QUEUED, queue=sweep_queue())
    except BROKER_ERRORS as error:
        logger.warning("Could not send the sweep (%s: %s).", type(error).__name__, error)
        return False
    return True


def waiting(queue: str | None = None) -> int | None:
    """How many messages the broker holds in ``queue`` (default :func:`run_queue`), waiting for
    a worker; None when it cannot say (the broker is down, the transport cannot count)."""
    app = current_app
    if app.conf.task_always_eager:
        return 0
    try:
        with app.connection_for_read() as connection:
            channel_errors = (*connection.connection_errors, *connection.channel_errors)
            try:
                channel: Any = connection.default_channel
                declared = channel.queue_declare(queue=queue or run_queue(), passive=True)
            except channel_errors:  # no such queue yet: nothing was ever sent to it
                return None
    # kombu's pools raise RuntimeError too (see send_runs).
    except (*BROKER_ERRORS, RuntimeError):
        return None
    return int(declared.message_count)
