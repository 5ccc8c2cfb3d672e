"""Celery tasks: thin wrappers around the services, addressed by primary key."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import shared_task

from trusthub_eval import services
from trusthub_eval.conf import app_settings
from trusthub_eval.models import CustomerProfile, Evaluation

# Above this many evaluations, the web process sends a few dispatch messages instead of one
# message each, so a bulk request returns quickly; a worker fans them out.
_DIRECT_SEND_LIMIT = 20
_DISPATCH_CHUNK = 500


def _send_options() -> dict[str, Any]:
    return {"queue": app_settings.TASK_QUEUE} if app_settings.TASK_QUEUE else {}


def _send_runs(evaluation_ids: Sequence[int]) -> None:
    options = _send_options()
    for evaluation_id in evaluation_ids:
        run_evaluation_task.apply_async((evaluation_id,), **options)


def enqueue(evaluation_ids: Sequence[int]) -> None:
    """Send the run task for each evaluation."""
    if len(evaluation_ids) <= _DIRECT_SEND_LIMIT:
        _send_runs(evaluation_ids)
        return
    options = _send_options()
    for start in range(0, len(evaluation_ids), _DISPATCH_CHUNK):
        chunk = list(evaluation_ids[start : start + _DISPATCH_CHUNK])
        dispatch_evaluations_task.apply_async((chunk,), **options)


@shared_task(
    bind=True,
    name="trusthub_eval.run_evaluation",
    # Acknowledge after the work: a worker lost mid-call gets the message redelivered, and the
    # claim in run_evaluation makes a second delivery harmless.
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def run_evaluation_task(self: Any, evaluation_id: int) -> str:
    try:
        return services.run_evaluation(evaluation_id).value
    except services.RetryLater as retry:
        # The attempt limit lives on the row (MAX_ATTEMPTS), not in Celery's retry counter.
        raise self.retry(countdown=retry.countdown, max_retries=None) from None


@shared_task(name="trusthub_eval.dispatch_evaluations", ignore_result=True)
def dispatch_evaluations_task(evaluation_ids: list[int]) -> None:
    _send_runs(evaluation_ids)


@shared_task(name="trusthub_eval.resume_queued", ignore_result=True)
def resume_queued_task(older_than: float = 60.0) -> int:
    """Schedule this (e.g. every minute) so no queued evaluation waits on a lost message."""
    return services.resume_queued(older_than=older_than)


@shared_task(name="trusthub_eval.evaluate_all", ignore_result=True)
def evaluate_all_task() -> dict[str, int]:
    """Schedule this to re-evaluate every profile against its own policy."""
    result = services.request_evaluations(
        CustomerProfile.objects.all(), trigger=Evaluation.Trigger.SCHEDULE
    )
    return {"queued": result.queued, "in_flight": result.in_flight}
