"""The claim and the queueing through the ORM, on every database but PostgreSQL (where
:mod:`.postgresql` does each in one statement): a few statements each, the same outcome."""

from __future__ import annotations

import datetime
from collections.abc import Mapping

from django.db.models import F, Q
from django.db.models.functions import Coalesce

from trusthub_eval.clock import DatabaseNow, ago
from trusthub_eval.kinds import RecordKind
from trusthub_eval.models import RECORD_MODELS, Evaluation


def claim(
    evaluation_id: int, *, running_timeout: float, token: datetime.datetime | None
) -> Evaluation | None:
    """See :func:`trusthub_eval.queue.rows.claim`."""
    state = Evaluation.State
    claimable = Q(state=state.QUEUED) | Q(state=state.RUNNING, started_at__lt=ago(running_timeout))
    if token is not None:
        claimable |= Q(state=state.RUNNING, started_at=token)
    now = DatabaseNow()
    claimed = Evaluation.objects.filter(claimable, pk=evaluation_id).update(
        state=state.RUNNING,
        started_at=now,
        attempts=F("attempts") + 1,
        posted_at=Coalesce("posted_at", now),
    )
    if not claimed:
        return None
    records = [kind.field for kind in RecordKind]
    return (
        Evaluation.objects.select_related(*records, "policy")
        .defer("raw", *(f"{record}__raw" for record in records), "policy__raw")
        .defer("policy__requirements")
        .get(pk=evaluation_id)
    )


def queue_pairs(
    pairs: Mapping[int, int],
    *,
    kind: RecordKind,
    now: datetime.datetime,
    trigger: str,
    requested_by_id: int | None,
) -> list[int]:
    """See :func:`trusthub_eval.queue.rows.queue_pairs`."""
    records = RECORD_MODELS[kind].objects
    column = f"{kind.field}_id"
    record_ids = list(pairs)
    records.filter(pk__in=record_ids).lock_for_queueing()
    # With the records locked (MySQL, MariaDB) or the database's one writer (SQLite), no
    # other request can queue one of these pairs before this transaction ends; the in-flight
    # constraint still stands guard, and a violation is raised, not hidden.
    busy = set(
        Evaluation.objects.active()
        .filter(**{f"{column}__in": record_ids})
        .values_list(column, "policy_id")
    )
    fresh = {r: policy for r, policy in pairs.items() if (r, policy) not in busy}
    Evaluation.objects.bulk_create(
        [
            Evaluation(
                **{column: record_id},
                policy_id=policy_id,
                trigger=trigger,
                requested_by_id=requested_by_id,
                requested_at=now,
                next_attempt_at=DatabaseNow(),
            )
            for record_id, policy_id in fresh.items()
        ]
    )
    # Not every backend returns the new ids from a bulk insert (MySQL does not): each new row
    # is the one in-flight evaluation of its pair.
    ids = sorted(
        pk
        for pk, record_id, policy_id in Evaluation.objects.active()
        .filter(**{f"{column}__in": list(fresh)})
        .values_list("pk", column, "policy_id")
        if fresh[record_id] == policy_id
    )
    records.filter(pk__in=list(fresh)).refresh_latest()
    return ids
