"""The claim and the queueing through the ORM, on every database but PostgreSQL (where
:mod:`.postgresql` does each in one statement): a few statements each, the same outcome."""

from __future__ import annotations

import datetime
from collections.abc import Mapping

from django.db.models import F, Q
from django.db.models.functions import Coalesce

from trusthub_eval.clock import DatabaseNow, ago
from trusthub_eval.models import CustomerProfile, Evaluation


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
    return (
        Evaluation.objects.select_related("customer_profile", "policy")
        .defer("raw", "customer_profile__raw", "policy__raw", "policy__requirements")
        .get(pk=evaluation_id)
    )


def queue_pairs(
    pairs: Mapping[int, int],
    *,
    now: datetime.datetime,
    trigger: str,
    requested_by_id: int | None,
) -> list[int]:
    """See :func:`trusthub_eval.queue.rows.queue_pairs`."""
    profile_ids = list(pairs)
    CustomerProfile.objects.filter(pk__in=profile_ids).lock_for_queueing()
    # With the profiles locked (MySQL, MariaDB) or the database's one writer (SQLite), no
    # other request can queue one of these pairs before this transaction ends; the in-flight
    # constraint still stands guard, and a violation is raised, not hidden.
    busy = set(
        Evaluation.objects.active()
        .filter(customer_profile_id__in=profile_ids)
        .values_list("customer_profile_id", "policy_id")
    )
    fresh = {p: policy for p, policy in pairs.items() if (p, policy) not in busy}
    Evaluation.objects.bulk_create(
        [
            Evaluation(
                customer_profile_id=profile_id,
                policy_id=policy_id,
                trigger=trigger,
                requested_by_id=requested_by_id,
                requested_at=now,
                next_attempt_at=DatabaseNow(),
            )
            for profile_id, policy_id in fresh.items()
        ]
    )
    # Not every backend returns the new ids from a bulk insert (MySQL does not): each new row
    # is the one in-flight evaluation of its pair.
    ids = sorted(
        pk
        for pk, profile_id, policy_id in Evaluation.objects.active()
        .filter(customer_profile_id__in=list(fresh))
        .values_list("pk", "customer_profile_id", "policy_id")
        if fresh[profile_id] == policy_id
    )
    CustomerProfile.objects.filter(pk__in=list(fresh)).refresh_latest()
    return ids
