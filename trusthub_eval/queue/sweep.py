"""The sweep: every worker sends it every SWEEP_INTERVAL seconds, to send again the evaluations
whose message may be lost (a broker restarted, a worker died, a retry could not be published)."""

from __future__ import annotations

import logging
from typing import NamedTuple

from django.db.models.functions import Coalesce

from trusthub_eval import dispatch
from trusthub_eval.clock import DatabaseNow, ago
from trusthub_eval.conf import app_settings
from trusthub_eval.models import Evaluation

logger = logging.getLogger("trusthub_eval.queue")


class SweepDue(NamedTuple):
    """What a sweep sends again: queued rows whose message may be lost, and running rows whose
    worker died (their claim is older than RUNNING_TIMEOUT); ids, oldest first."""

    queued: list[int]
    running: list[int]


def resume_queued(*, older_than: float | None = None) -> int:
    """Send again the evaluations whose message may be lost; returns how many.

    Queued rows overdue by more than ``older_than`` seconds (default ``SWEEP_AFTER``; a retry's
    countdown counts as not due yet) and running rows past ``RUNNING_TIMEOUT`` (their worker
    died). Sending twice is harmless: only one worker can claim a row.
    """
    # Overdue rows whose message still waits behind a backlog are not sent a second one: the
    # broker's count of waiting messages says how many of the newest may still have theirs.
    waiting = dispatch.waiting()
    due = due_for_sweep(
        overdue_after=app_settings.SWEEP_AFTER if older_than is None else older_than,
        running_timeout=app_settings.RUNNING_TIMEOUT,
        waiting=waiting or 0,
    )
    if due.queued or due.running:
        logger.info("Sweep: sending %d evaluation(s) again", len(due.queued) + len(due.running))
    if due.queued:
        dispatch.send_runs(due.queued)
    if due.running:
        # A dead worker's rows, few and overdue already: through the sweep's own queue, ahead
        # of any backlog, so that none stays running much past RUNNING_TIMEOUT.
        dispatch.send_runs(due.running, queue=dispatch.sweep_queue())
    return len(due.queued) + len(due.running)


def due_for_sweep(*, overdue_after: float, running_timeout: float, waiting: int = 0) -> SweepDue:
    """Evaluations whose message may be lost, and mark the queued ones as re-sent.

    Queued rows overdue by more than ``overdue_after`` seconds (their retry's countdown
    included), and running rows older than ``running_timeout`` (a worker died), both by the
    database's clock. A row is picked again only after another ``overdue_after`` seconds, so
    concurrent sweeps of several workers send few duplicates (which the claim makes harmless
    anyway). ``waiting`` is how many messages the broker still holds for the evaluations'
    queue: the newest that many overdue rows may still have theirs there (a backlog), so only
    the older ones are sent again.
    """
    state = Evaluation.State
    queued = list(
        Evaluation.objects.filter(state=state.QUEUED)
        .alias(due=Coalesce("next_attempt_at", "requested_at"))
        .filter(due__lt=ago(overdue_after))
        .order_by("due", "pk")
        .values_list("pk", flat=True)
    )
    queued = queued[: max(len(queued) - waiting, 0)]
    if queued:
        Evaluation.objects.filter(pk__in=queued, state=state.QUEUED).update(
            next_attempt_at=DatabaseNow()
        )
    running = list(
        Evaluation.objects.filter(state=state.RUNNING, started_at__lt=ago(running_timeout))
        .order_by("started_at")
        .values_list("pk", flat=True)
    )
    return SweepDue(queued=queued, running=running)
