"""Celery tasks: thin wrappers around the services, addressed by primary key."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from celery.exceptions import Reject
from django.db import DatabaseError

from trusthub_eval import dispatch, queue, services, sync
from trusthub_eval.exceptions import RetryLater
from trusthub_eval.kinds import RecordKind
from trusthub_eval.models import RECORD_MODELS, Evaluation
from trusthub_eval.worker import task_connections

logger = logging.getLogger(__name__)

# Retries of a delivery that could not even claim its row (the database was down). Past them
# the message is dropped: the row is untouched, still queued, and a worker's sweep sends it.
_UNCLAIMED_RETRIES = 5


@shared_task(
    bind=True,
    name=dispatch.RUN_EVALUATION,
    # Acknowledge after the work: a worker lost mid-call gets the message redelivered, and the
    # claim in run_evaluation makes a second delivery harmless.
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    # The attempt limit lives on the row (MAX_ATTEMPTS). Celery's own (3 by default) would drop
    # the message of a row it had just put back in the queue.
    max_retries=None,
)
def run_evaluation_task(self: Any, evaluation_id: int, token: str | None = None) -> str:
    try:
        with task_connections(self.request):
            return queue.run_evaluation(evaluation_id, token=token).value
    except RetryLater as retry:
        try:
            raise self.retry(
                args=(evaluation_id,),
                kwargs={"token": retry.token} if retry.token else {},
                countdown=retry.countdown,
            ) from None
        except Reject as rejected:  # Celery could not publish the retry: the broker is down
            logger.warning(
                "Evaluation #%s: its retry could not be sent (%s); a worker's sweep sends it "
                "again.",
                evaluation_id,
                rejected.args[0] if rejected.args else rejected,
            )
            return "deferred"
    except DatabaseError as error:
        if self.request.retries >= _UNCLAIMED_RETRIES:
            # Expected and recovered: one line, not Celery's MaxRetriesExceededError traceback.
            logger.warning(
                "Evaluation #%s: the database failed %d times (%s: %s); this message is dropped "
                "and a worker's sweep sends the evaluation again.",
                evaluation_id,
                self.request.retries + 1,
                type(error).__name__,
                str(error).strip(),
            )
            return "deferred"
        raise self.retry(
            countdown=queue.backoff(self.request.retries + 1),
            max_retries=None,
        ) from None


@shared_task(name=dispatch.DISPATCH_EVALUATIONS, ignore_result=True)
def dispatch_evaluations_task(evaluation_ids: list[int]) -> None:
    dispatch.send_runs(evaluation_ids, fan_out=False)


@shared_task(bind=True, name=dispatch.RESUME_QUEUED, ignore_result=True)
def resume_queued_task(self: Any, older_than: float | None = None) -> int:
    """The sweep; every worker sends it every SWEEP_INTERVAL seconds (see trusthub_eval.worker).

    A database that cannot be reached (restarting, failing over) costs one WARNING line, not a
    traceback: the next sweep, a SWEEP_INTERVAL later, goes over the same rows.
    """
    try:
        with task_connections(self.request):
            return queue.resume_queued(older_than=older_than)
    except DatabaseError as error:
        logger.warning(
            "Sweep skipped: the database failed (%s: %s); the next sweep goes on.",
            type(error).__name__,
            str(error).strip(),
        )
        return 0


@shared_task(name="trusthub_eval.evaluate_all", ignore_result=True)
def evaluate_all_task(kind: str | None = None) -> dict[str, int]:
    """Schedule this to re-evaluate every Customer Profile and Trust Product against its own
    policy; ``kind`` ("customer-profile" or "trust-product") limits it to one kind."""
    kinds = [RecordKind(kind)] if kind is not None else list(RecordKind)
    queued = in_flight = 0
    for each in kinds:
        result = services.request_evaluations(
            RECORD_MODELS[each].objects.all(), trigger=Evaluation.Trigger.SCHEDULE
        )
        queued, in_flight = queued + result.queued, in_flight + result.in_flight
    return {"queued": queued, "in_flight": in_flight}


@shared_task(name="trusthub_eval.sync", ignore_result=True)
def sync_task(evaluations: bool = False) -> dict[str, int]:
    """Schedule this to import new policies, Customer Profiles and Trust Products (and, with
    ``evaluations``, evaluations made elsewhere) as ``manage.py trusthub_sync`` does; unusable
    records are skipped and logged."""
    synced = sync.sync_all(evaluations=evaluations)
    counts = {name: one.stored for name, one in synced.items()}
    counts["skipped"] = sum(len(one.skipped) for one in synced.values())
    return counts
