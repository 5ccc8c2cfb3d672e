"""The evaluation row's transitions: queue, claim, move the mark, release, fail, complete, and
the adoption of an evaluation TrustHub made for a row whose answer was lost.

Each transition of a claimed row is one conditional write fenced by its claim (the row is still
``running`` with the ``started_at`` the claim set); each returns whether it still held the
claim. Every time written here is the database's (:mod:`trusthub_eval.clock`). On PostgreSQL
the claim, the queueing and the completion are single statements (:mod:`.postgresql`);
elsewhere the ORM does the same in a few (:mod:`.portable`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import enum
from collections.abc import Mapping
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from trusthub_eval.clock import DatabaseNow, later
from trusthub_eval.exceptions import SidTaken
from trusthub_eval.kinds import RecordKind
from trusthub_eval.models import (
    RECORD_MODELS,
    CustomerProfile,
    DuplicateEvaluation,
    Evaluation,
    Policy,
    RequirementResult,
    TrustProduct,
)
from trusthub_eval.payloads import parse_twilio_datetime
from trusthub_eval.queue import portable, postgresql


@dataclasses.dataclass(frozen=True)
class Recorded:
    """What storing an evaluation's answer did to its record's compliance."""

    #: The record's compliance before (as locked in the same transaction).
    previous: str
    #: Whether the evaluation became the record's compliance (it is the newest completed).
    applied: bool


class LateAnswer(enum.Enum):
    """What became of an answer that came for a lost claim."""

    HELD = "held"  # a row of ours holds it already
    ADOPTED = "adopted"  # the row had none and took it
    DUPLICATE = "duplicate"  # the row holds another: kept as a DuplicateEvaluation


def _using() -> str:
    return Evaluation.objects.db


def queue_pairs(
    pairs: Mapping[int, int],
    *,
    kind: RecordKind = RecordKind.CUSTOMER_PROFILE,
    trigger: str,
    requested_by_id: int | None,
) -> list[int]:
    """Queue an evaluation per (record id -> policy id) not already in flight, for records of
    ``kind``.

    Returns the new evaluations' ids and points each record at its new one. Call inside a
    transaction. A concurrent request can never make it fail or queue a duplicate: on
    PostgreSQL the unique constraint on in-flight evaluations skips the busy pairs, in one
    statement whatever the number of records; elsewhere the pairs in flight are read under
    the records' locks first, and a few statements insert the rest (no ``INSERT IGNORE``,
    which would also make any other error a warning).
    """
    if not pairs:
        return []
    now = timezone.now()
    if postgresql.supported(_using()):
        return postgresql.queue_pairs(
            pairs, kind=kind, now=now, trigger=trigger, requested_by_id=requested_by_id
        )
    return portable.queue_pairs(
        pairs, kind=kind, now=now, trigger=trigger, requested_by_id=requested_by_id
    )


def claim(
    evaluation_id: int, *, running_timeout: float, token: datetime.datetime | None = None
) -> Evaluation | None:
    """Atomically mark a queued evaluation as running and return it; None if not ours.

    A row left running longer than ``running_timeout`` seconds (its worker died) may be
    claimed again, and so may a row still running under ``token``: the fencing token of an
    attempt that could not put it back in the queue. ``started_at`` is that token: whoever
    stores the outcome must still hold the same value.

    The same statement sets the mark (``posted_at``) unless an earlier attempt's is still
    there, so the mark is committed before any POST without a write of its own. A mark equal
    to ``started_at`` is this claim's; any other predates it (the row awaits reconciliation,
    ``Evaluation.awaits_reconciliation``). An attempt that ends without sending its POST clears
    it again; a worker that dies first leaves it, which costs its successor one listing. The
    evaluation comes with its record and policy, payloads deferred.
    """
    if postgresql.supported(_using()):
        return postgresql.claim(evaluation_id, running_timeout=running_timeout, token=token)
    return portable.claim(evaluation_id, running_timeout=running_timeout, token=token)


def held(evaluation: Evaluation) -> Any:
    """The row, if its claim is still the one ``evaluation`` holds."""
    return Evaluation.objects.filter(
        pk=evaluation.pk, state=Evaluation.State.RUNNING, started_at=evaluation.started_at
    )


def _read(evaluation: Evaluation, name: str) -> Any:
    """A field as the database now holds it (a time it has just set from its own clock)."""
    return Evaluation.objects.filter(pk=evaluation.pk).values_list(name, flat=True).get()


def move_mark(evaluation: Evaluation) -> bool:
    """Move the mark to the database's now, before a POST sent after a listing that showed
    none for the earlier one; False if the claim was lost meanwhile."""
    with transaction.atomic(using=_using()):
        if not held(evaluation).update(posted_at=DatabaseNow()):
            return False
        evaluation.posted_at = _read(evaluation, "posted_at")
    return True


def release(
    evaluation: Evaluation,
    *,
    error_code: int | None,
    error_message: str,
    keep_mark: bool,
    countdown: float,
    count_attempt: bool = True,
) -> bool:
    """Put a running evaluation back in the queue after a transient error; False if the claim
    was lost meanwhile.

    ``keep_mark``: TrustHub may hold an evaluation made for it (a POST not yet reconciled);
    otherwise the mark is cleared. The row is due again in ``countdown`` seconds.
    ``count_attempt=False`` gives the attempt back (nothing reached TrustHub, e.g. while
    waiting for a concurrency slot).
    """
    fields: dict[str, Any] = {
        "state": Evaluation.State.QUEUED,
        "error_code": error_code,
        "error_message": error_message,
        "next_attempt_at": later(countdown),
    }
    if not keep_mark:
        fields["posted_at"] = None
    if not count_attempt:
        fields["attempts"] = F("attempts") - 1
        evaluation.attempts -= 1
    return bool(held(evaluation).update(**fields))


def fail(
    evaluation: Evaluation,
    *,
    error_code: int | None,
    error_message: str,
    keep_mark: bool,
    raw: Any = None,
) -> bool:
    """Mark a running evaluation failed for good; False if the claim was lost meanwhile.

    ``keep_mark``: TrustHub may hold an evaluation made for this one
    (``trusthub_sync --evaluations`` adopts it). ``raw`` is TrustHub's last answer.
    """
    fields: dict[str, Any] = {
        "state": Evaluation.State.FAILED,
        "completed_at": DatabaseNow(),
        "error_code": error_code,
        "error_message": error_message,
        "raw": raw,
    }
    if not keep_mark:
        fields["posted_at"] = None
    with transaction.atomic(using=_using()):
        if not held(evaluation).update(**fields):
            return False
        evaluation.completed_at = _read(evaluation, "completed_at")
    for name, value in fields.items():
        if name != "completed_at":
            setattr(evaluation, name, value)
    return True


def complete(evaluation: Evaluation, payload: Mapping[str, Any]) -> Recorded | None:
    """Store TrustHub's (checked) answer on a running evaluation, one row per requirement,
    and make it its record's compliance if it is the newest; one transaction.

    Returns None (and stores nothing) if the claim was lost meanwhile. An evaluation SID
    already stored by an import (``trusthub_sync --evaluations``) is this same evaluation:
    the import is replaced by this row. One stored by another request raises
    :class:`~trusthub_eval.exceptions.SidTaken`.
    """
    using = _using()
    fields = _answer_fields(payload)
    # No savepoint: the row's UPDATE comes first, so a conflict on its SID leaves nothing to
    # keep and the whole transaction is rolled back. On PostgreSQL it is one statement,
    # atomic by itself, unless a caller's transaction needs a savepoint around it.
    single = postgresql.supported(using) and not transaction.get_connection(using).in_atomic_block
    try:
        with contextlib.nullcontext() if single else transaction.atomic(using=using):
            return _complete(evaluation, payload, fields)
    except IntegrityError as error:
        conflict = error
    with transaction.atomic(using=using):
        adopted = _adopt_import_of(evaluation, payload["sid"])
        if adopted is None:
            raise conflict  # not the SID: some other constraint
        if not adopted:
            return None
        recorded = _complete(evaluation, payload, fields)
        _record_of(evaluation).refresh_latest()
        return recorded


def _answer_fields(payload: Mapping[str, Any]) -> dict[str, Any]:
    """What a checked answer sets on its evaluation (the completion time aside: the
    database's)."""
    return {
        "sid": payload["sid"],
        "status": payload["status"],
        "date_created": parse_twilio_datetime(payload.get("date_created")),
        "raw": dict(payload),
        "state": Evaluation.State.COMPLETED,
        "posted_at": None,
        "next_attempt_at": None,
        "error_code": None,
        "error_message": "",
    }


def _complete(
    evaluation: Evaluation, payload: Mapping[str, Any], fields: dict[str, Any]
) -> Recorded | None:
    rows = RequirementResult.objects.rows_from_payload(payload)
    failing = sum(not row["passed"] for row in rows)
    using = _using()
    if postgresql.supported(using):
        done = postgresql.complete(evaluation, using, fields, rows, failing=failing)
        if done is None:
            return None
        evaluation.completed_at, previous, applied = done
        for name, value in fields.items():
            setattr(evaluation, name, value)
        return Recorded(previous=previous, applied=applied)
    return _complete_rows(held(evaluation), evaluation, fields, rows, failing)


def _complete_rows(
    target: Any,
    evaluation: Evaluation,
    fields: dict[str, Any],
    rows: list[dict[str, Any]],
    failing: int,
) -> Recorded | None:
    """The ORM's way of storing an answer on ``evaluation`` if ``target`` (its row, under
    some condition) matches; call in a transaction."""
    if not target.update(**fields, completed_at=DatabaseNow()):
        return None
    evaluation.completed_at = _read(evaluation, "completed_at")
    for name, value in fields.items():
        setattr(evaluation, name, value)
    RequirementResult.objects.bulk_create(
        RequirementResult(evaluation_id=evaluation.pk, **row) for row in rows
    )
    return record_compliance(evaluation, failing=failing)


def _record_of(evaluation: Evaluation) -> Any:
    """The row of what ``evaluation`` evaluated, as a queryset."""
    return RECORD_MODELS[evaluation.kind].objects.filter(pk=evaluation.record_id)


def record_compliance(evaluation: Evaluation, *, failing: int) -> Recorded:
    """Make a just completed ``evaluation`` its record's compliance, unless the record
    shows a newer one; ``failing`` is its number of failed requirements.

    What ``RecordQuerySet.refresh_compliance`` would compute for that one record, from the
    values at hand: the record's ``compliance_checked_at`` is the completion time of the
    evaluation it shows. Call inside the transaction that completed it: the record's row is
    locked first, so the compliance read before the change is exact and a concurrent
    completion is ordered by its time, whichever commits last. Two queries.
    """
    records = _record_of(evaluation)
    previous = records.select_for_update().values_list("compliance_status", flat=True).get()
    assert evaluation.completed_at is not None
    not_newer = Q(compliance_checked_at__isnull=True) | Q(
        compliance_checked_at__lte=evaluation.completed_at
    )
    changed = records.filter(not_newer).update(
        compliance_status=evaluation.status or "",
        compliance_checked_at=evaluation.completed_at,
        failing_requirements=failing,
    )
    return Recorded(previous=previous, applied=bool(changed))


def keep_late_answer(
    evaluation: Evaluation, payload: Mapping[str, Any]
) -> tuple[LateAnswer, Recorded | None]:
    """Keep a (checked) answer that came for a claim already lost: never drop its SID.

    A row of ours holding the SID already has it. Otherwise the row takes it if it still
    holds none (whoever claims it now then finds it completed), storing it as
    :func:`complete` would; else it is kept as a :class:`DuplicateEvaluation`.
    """
    sid = payload["sid"]
    fields = _answer_fields(payload)
    rows = RequirementResult.objects.rows_from_payload(payload)
    with transaction.atomic(using=_using()):
        known = DuplicateEvaluation.objects.filter(sid=sid)
        if Evaluation.objects.filter(sid=sid).exists() or known.exists():
            return LateAnswer.HELD, None
        unanswered = Evaluation.objects.filter(pk=evaluation.pk, sid__isnull=True).exclude(
            state=Evaluation.State.COMPLETED
        )
        failing = sum(not row["passed"] for row in rows)
        recorded = _complete_rows(unanswered, evaluation, fields, rows, failing)
        if recorded is not None:
            return LateAnswer.ADOPTED, recorded
        DuplicateEvaluation.objects.create(
            sid=sid,
            evaluation_id=evaluation.pk,
            customer_profile_id=evaluation.customer_profile_id,
            trust_product_id=evaluation.trust_product_id,
            policy_id=evaluation.policy_id,
            status=fields["status"],
            date_created=fields["date_created"],
            raw=fields["raw"],
            recorded_at=DatabaseNow(),
        )
        return LateAnswer.DUPLICATE, None


def _adopt_import_of(evaluation: Evaluation, sid: str) -> bool | None:
    """Delete the import holding ``sid`` so ``evaluation`` can take it; call in a transaction.

    True when done; False if our claim is lost; None if no row holds ``sid``. Raises
    SidTaken if a request of ours holds it.
    """
    holder = Evaluation.objects.select_for_update().filter(sid=sid).values("pk", "trigger").first()
    if holder is None:
        return None
    if holder["trigger"] != Evaluation.Trigger.SYNC:
        raise SidTaken(sid, holder["pk"])
    if not held(evaluation).select_for_update().exists():
        return False
    Evaluation.objects.filter(pk=holder["pk"]).delete()
    return True


def import_evaluation(
    record: CustomerProfile | TrustProduct, payload: Mapping[str, Any], *, clock_skew: float
) -> tuple[Evaluation, bool]:
    """Store an evaluation TrustHub already has (checked); ``created`` is False if known.

    If a request of ours for the same policy gave up, or waits, after a POST whose answer was
    lost (its mark is kept), and TrustHub created this evaluation after that POST (give or
    take ``clock_skew`` seconds), it is that request's evaluation: it is recorded on that row
    instead of a second one.
    """
    with transaction.atomic(using=_using()):
        known = Evaluation.objects.filter(sid=payload["sid"]).first()
        if known is not None:
            return known, False
        policy = Policy.objects.for_sid(payload["policy_sid"])
        created_at = parse_twilio_datetime(payload.get("date_created"))
        evaluation = _adopt_into_marked_row(record, policy, payload, created_at, clock_skew)
        if evaluation is None:
            when = created_at or timezone.now()
            evaluation = Evaluation.objects.create(
                sid=payload["sid"],
                **{record.kind.field: record},
                policy=policy,
                status=payload["status"],
                state=Evaluation.State.COMPLETED,
                trigger=Evaluation.Trigger.SYNC,
                requested_at=when,
                completed_at=when,
                date_created=created_at,
                raw=dict(payload),
            )
        RequirementResult.objects.bulk_create(
            RequirementResult.objects.build_from_payload(evaluation, payload)
        )
    return evaluation, True


def _adopt_into_marked_row(
    record: CustomerProfile | TrustProduct,
    policy: Policy,
    payload: Mapping[str, Any],
    created_at: datetime.datetime | None,
    clock_skew: float,
) -> Evaluation | None:
    if created_at is None:
        return None
    marked = Evaluation.objects.filter(
        **{record.kind.field: record},
        policy=policy,
        sid__isnull=True,
        posted_at__lte=created_at + datetime.timedelta(seconds=clock_skew),
        # Not running: a worker reconciling it right now adopts it itself.
        state__in=[Evaluation.State.FAILED, Evaluation.State.QUEUED],
    ).order_by("posted_at", "pk")
    for row in marked[:5]:
        # Guarded by its state and mark, so a worker claiming it meanwhile wins cleanly.
        adopted = Evaluation.objects.filter(
            pk=row.pk, state=row.state, posted_at=row.posted_at, sid__isnull=True
        ).update(
            sid=payload["sid"],
            status=payload["status"],
            state=Evaluation.State.COMPLETED,
            completed_at=DatabaseNow(),
            date_created=created_at,
            raw=dict(payload),
            posted_at=None,
            next_attempt_at=None,
            error_code=None,
            error_message="",
        )
        if adopted:
            row.refresh_from_db()
            return row
    return None
