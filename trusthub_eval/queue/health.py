"""What an operator watches of the queue (``trusthub_status``, the admin's Queue page)."""

from __future__ import annotations

import dataclasses
import datetime

from django.db.models import Count, Min, Q
from django.db.models.functions import Coalesce

from trusthub_eval.clock import database_now
from trusthub_eval.models import DuplicateEvaluation, Evaluation


@dataclasses.dataclass(frozen=True)
class QueueHealth:
    """A snapshot of the evaluation queue for operators."""

    checked_at: datetime.datetime
    queued: int
    running: int
    oldest_queued_at: datetime.datetime | None
    oldest_running_since: datetime.datetime | None
    #: Queued past their due time by more than the sweep's grace: the sweep is not running.
    overdue: int
    #: Running past RUNNING_TIMEOUT: a worker died and no sweep reclaimed the row yet.
    stuck: int
    #: The window of the failure counts.
    hours: float
    failed_recently: int
    failures_by_code: list[tuple[int | None, int]]
    #: Of those, failed with their mark kept: TrustHub may hold their evaluation.
    may_exist_upstream: int
    #: Evaluations TrustHub created for a request whose row holds another, recorded in the
    #: window (see DuplicateEvaluation).
    duplicates_recently: int = 0

    @property
    def needs_attention(self) -> bool:
        return bool(self.overdue or self.stuck)


def health(*, overdue_after: float, running_timeout: float, hours: float = 24.0) -> QueueHealth:
    """The queue's size and age, stuck rows, and the failures of evaluations requested in the
    last ``hours``, all by the database's clock. A few queries over the rows in flight and the
    recent failures (the state index), so it stays cheap at any table size."""
    state = Evaluation.State
    now = database_now(Evaluation.objects.db)
    since = now - datetime.timedelta(hours=hours)
    queued, running = Q(state=state.QUEUED), Q(state=state.RUNNING)
    failed = Q(state=state.FAILED, requested_at__gte=since)
    totals = (
        Evaluation.objects.filter(queued | running | failed)
        .alias(due=Coalesce("next_attempt_at", "requested_at"))
        .aggregate(
            queued=Count("pk", filter=queued),
            running=Count("pk", filter=running),
            oldest_queued_at=Min("requested_at", filter=queued),
            oldest_running_since=Min("started_at", filter=running),
            overdue=Count(
                "pk", filter=queued & Q(due__lt=now - datetime.timedelta(seconds=overdue_after))
            ),
            stuck=Count(
                "pk",
                filter=running
                & Q(started_at__lt=now - datetime.timedelta(seconds=running_timeout)),
            ),
            failed_recently=Count("pk", filter=failed),
            may_exist_upstream=Count("pk", filter=failed & Q(posted_at__isnull=False)),
        )
    )
    duplicates = DuplicateEvaluation.objects.filter(recorded_at__gte=since).count()
    by_code = (
        Evaluation.objects.filter(failed)
        .order_by()
        .values("error_code")
        .annotate(n=Count("pk"))
        .order_by("-n", "error_code")[:10]
    )
    return QueueHealth(
        checked_at=now,
        hours=hours,
        failures_by_code=[(row["error_code"], row["n"]) for row in by_code],
        duplicates_recently=duplicates,
        **totals,
    )
