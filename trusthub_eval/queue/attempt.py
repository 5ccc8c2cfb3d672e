"""One attempt at an evaluation: claim the row, find out what TrustHub holds for it (reconcile a
marked POST, or post), and record the outcome; see :mod:`trusthub_eval.queue` for the protocol."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import logging
import random
import time
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, DataError, IntegrityError, connections, transaction
from django.utils.dateparse import parse_datetime

from trusthub_eval import signals
from trusthub_eval.client import TrustHubClient, using_client
from trusthub_eval.clock import CLAIM_MARGIN
from trusthub_eval.conf import app_settings
from trusthub_eval.exceptions import (
    ConcurrencyLimited,
    DeadlinePassed,
    ErrorKind,
    InvalidResponse,
    RetryLater,
    SidTaken,
    TrustHubError,
)
from trusthub_eval.models import Evaluation
from trusthub_eval.payloads import check_evaluation, identify_evaluation, unstorable_problem
from trusthub_eval.queue import rows

logger = logging.getLogger("trusthub_eval.queue")


class Outcome(enum.StrEnum):
    """What one call of :func:`run_evaluation` did."""

    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"  # not claimable: another worker has it, or it is finished


def backoff(attempt: int, retry_after: float | None = None) -> float:
    """Seconds to wait before attempt ``attempt + 1``: exponential with full jitter.

    TrustHub's ``Retry-After`` is a floor, even above our own cap. Every countdown stays below
    an hour, the broker's visibility timeout on Redis and SQS, so that a delayed message is
    never delivered a second time for being late.
    """
    ceiling = min(
        app_settings.RETRY_BACKOFF_MAX, app_settings.RETRY_BACKOFF * (2 ** max(attempt - 1, 0))
    )
    delay = random.uniform(0, ceiling)  # noqa: S311 (jitter, not cryptography)
    if retry_after is not None:
        delay = max(delay, retry_after + random.uniform(0, 1))  # noqa: S311
    return min(delay, _MAX_COUNTDOWN)


_MAX_COUNTDOWN = 3000.0


def run_evaluation(
    evaluation_id: int, *, token: str | None = None, client: TrustHubClient | None = None
) -> Outcome:
    """Claim the evaluation, ask TrustHub, store the checked answer.

    Raises :class:`RetryLater` after a transient failure of any kind (TrustHub, the database,
    an unexpected exception): the row is queued again, or, if the database could not be
    written, the error carries the claim's ``token`` for the next delivery. Permanent errors,
    and transient ones past ``MAX_ATTEMPTS``, are recorded as failed. No exception leaves the
    row running with nothing to move it on.

    The common path is two database writes: the claim, which also sets the mark before
    the POST is sent, and one transaction that stores the answer.

    The claim is the database's: another worker may take the row over once its ``started_at``
    is ``RUNNING_TIMEOUT`` old by the database's clock. This worker's own monotonic clock
    starts when it sends the claim, which the database cannot have stamped any earlier, so
    the POST is sent only if it is sure to be over before then (a claim that took long, a
    database that stalled, releases the row instead).
    """
    sent = time.monotonic()
    evaluation = rows.claim(
        evaluation_id, running_timeout=app_settings.RUNNING_TIMEOUT, token=_parse_token(token)
    )
    if evaluation is None:
        return Outcome.SKIPPED
    attempt = _Attempt(
        evaluation,
        reconciling=evaluation.awaits_reconciliation,
        claimed=sent,
        expires=sent + app_settings.RUNNING_TIMEOUT - CLAIM_MARGIN,
    )
    try:
        return _run_claimed(attempt, client)
    except DatabaseError as error:
        return _after_database_error(attempt, error)


@dataclasses.dataclass
class _Attempt:
    """One claimed attempt, and what it knows of what TrustHub may hold for the row."""

    evaluation: Evaluation
    #: An earlier attempt's POST may have been processed and no listing has cleared it yet.
    reconciling: bool
    #: When the claim was sent, and when another worker may take the row over at the
    #: earliest, on this process's ``time.monotonic()`` clock.
    claimed: float
    expires: float
    #: This attempt has begun sending its POST.
    sending: bool = False

    @property
    def keeps_mark(self) -> bool:
        """Whether TrustHub may hold an evaluation for the row that we have not seen: the row
        keeps its mark however the attempt ends."""
        return self.reconciling or self.sending


def _run_claimed(attempt: _Attempt, client: TrustHubClient | None) -> Outcome:
    evaluation = attempt.evaluation
    try:
        with using_client(client) as trusthub:
            return _attempt(attempt, trusthub)
    except (RetryLater, DatabaseError):
        raise
    except TrustHubError as error:  # building the client: credentials
        return _record_trusthub_error(evaluation, error, keep_mark=attempt.keeps_mark)
    except ImproperlyConfigured as error:
        return _record_error(
            evaluation, message=str(error), keep_mark=attempt.keeps_mark, permanent=True
        )
    except Exception as error:  # the guarantee: no exception strands a row
        logger.error(
            "Evaluation #%s: unexpected %s", evaluation.pk, type(error).__name__, exc_info=True
        )
        return _record_error(
            evaluation,
            message=f"Unexpected {type(error).__name__} (the worker's log has the traceback).",
            keep_mark=attempt.keeps_mark,
        )


def _attempt(attempt: _Attempt, client: TrustHubClient) -> Outcome:
    evaluation = attempt.evaluation
    record, kind, policy = evaluation.record, evaluation.kind, evaluation.policy
    try:
        payload = _reconcile(attempt, client) if attempt.reconciling else None
        if payload is None:
            # Read to its end, the listing shows none for the earlier POST: post again, under
            # a mark moved to now. Without an earlier POST the claim's mark is already there.
            if attempt.reconciling and not rows.move_mark(evaluation):
                return Outcome.SKIPPED
            attempt.reconciling = False
            attempt.sending = True
            try:
                answer = client.create_evaluation(
                    record.sid, policy.sid, kind=kind, finish_by=attempt.expires
                )
            except DeadlinePassed:
                attempt.sending = False  # nothing was sent
                raise
            payload = check_evaluation(
                answer, record_sid=record.sid, record_kind=kind, policy_sid=policy.sid
            )
        return _store(evaluation, payload)
    except TrustHubError as error:
        # Once a POST may have been processed, only a successful listing clears the mark: an
        # error while reconciling keeps it, and so does an ambiguous answer to the POST.
        keep_mark = attempt.reconciling or (attempt.sending and error.ambiguous)
        return _record_trusthub_error(
            evaluation,
            error,
            keep_mark=keep_mark,
            reconciling_in_time=attempt.reconciling and _within_reconcile_timeout(attempt),
        )


def _reconcile(attempt: _Attempt, client: TrustHubClient) -> Mapping[str, Any] | None:
    """After an ambiguous POST: the evaluation TrustHub created for it, or None if none.

    TrustHub has no idempotency key, so we read the record's whole list and adopt the oldest
    evaluation for the same policy created since the POST that no other request of ours holds
    (an import by ``trusthub_sync`` is the same evaluation and is replaced). None only after
    the list was read to its end, within the claim's time.
    """
    evaluation = attempt.evaluation
    assert evaluation.posted_at is not None
    record, kind, policy = evaluation.record, evaluation.kind, evaluation.policy
    since = evaluation.posted_at - datetime.timedelta(seconds=app_settings.RECONCILE_CLOCK_SKEW)
    candidates = []
    for item in client.list_evaluations(record.sid, kind=kind, finish_by=attempt.expires):
        sid, policy_sid, created = identify_evaluation(
            item, record_sid=record.sid, record_kind=kind
        )
        if policy_sid == policy.sid and created >= since:
            candidates.append((created, sid, item))
    if not candidates:
        return None
    held = set(
        Evaluation.objects.filter(sid__in=[sid for _, sid, _ in candidates])
        .exclude(trigger=Evaluation.Trigger.SYNC)
        .values_list("sid", flat=True)
    )
    for _created, sid, item in sorted(candidates, key=lambda candidate: candidate[:2]):
        if sid not in held:
            logger.info("Evaluation #%s adopts %s after an unanswered POST", evaluation.pk, sid)
            # An unusable listing is retried; the mark stays until a usable one is read.
            return check_evaluation(
                item,
                record_sid=record.sid,
                record_kind=kind,
                policy_sid=policy.sid,
                kind=ErrorKind.RETRYABLE,
            )
    return None


def _store(evaluation: Evaluation, payload: Mapping[str, Any]) -> Outcome:
    record, policy = evaluation.record, evaluation.policy
    try:
        recorded = rows.complete(evaluation, payload)
    except SidTaken as taken:
        # Not an answer about this request: whether TrustHub made one for it is unknown.
        raise InvalidResponse(str(taken), kind=ErrorKind.AMBIGUOUS) from None
    if recorded is None:
        return _keep_late_answer(evaluation, payload)
    logger.info(
        "Evaluation %s of %s against %s: %s",
        evaluation.sid,
        record.sid,
        policy.sid,
        evaluation.status,
    )
    _send_completed_signals(evaluation, recorded)
    return Outcome.COMPLETED


def _keep_late_answer(evaluation: Evaluation, payload: Mapping[str, Any]) -> Outcome:
    """TrustHub's answer came for a claim this worker had lost: never drop its SID."""
    late, recorded = rows.keep_late_answer(evaluation, payload)
    if late is rows.LateAnswer.ADOPTED:
        assert recorded is not None
        logger.warning(
            "Evaluation #%s: its claim was lost before TrustHub's answer %s was stored; the row "
            "had none, so it holds this one.",
            evaluation.pk,
            payload["sid"],
        )
        _send_completed_signals(evaluation, recorded)
        return Outcome.COMPLETED
    if late is rows.LateAnswer.DUPLICATE:
        logger.error(
            "Evaluation #%s: TrustHub created %s for a claim this worker had lost, and the row "
            "holds another evaluation: kept as a known duplicate.",
            evaluation.pk,
            payload["sid"],
        )
    return Outcome.SKIPPED


def _record_trusthub_error(
    evaluation: Evaluation,
    error: TrustHubError,
    *,
    keep_mark: bool,
    reconciling_in_time: bool = False,
) -> Outcome:
    """``reconciling_in_time``: a failed reconciliation within RECONCILE_TIMEOUT. It spends no
    attempt and is never final, whatever the error: TrustHub may hold the evaluation all the
    same, and only a listing read to its end can tell (past the timeout the row fails, marked).
    """
    return _record_error(
        evaluation,
        message=str(error),
        keep_mark=keep_mark,
        code=error.code,
        permanent=error.permanent and not reconciling_in_time,
        retry_after=error.retry_after,
        # Waiting for one of our own concurrency slots, or a claim too old to post on, is not
        # an attempt at TrustHub: nothing was sent.
        count_attempt=not (
            reconciling_in_time or isinstance(error, ConcurrencyLimited | DeadlinePassed)
        ),
        body=error.body,
    )


def _within_reconcile_timeout(attempt: _Attempt) -> bool:
    """Whether the POST to reconcile is younger than RECONCILE_TIMEOUT: its age at the claim,
    both times the database's, plus the time since on this worker's monotonic clock."""
    evaluation = attempt.evaluation
    assert evaluation.posted_at is not None
    assert evaluation.started_at is not None
    age = (evaluation.started_at - evaluation.posted_at).total_seconds()
    age += time.monotonic() - attempt.claimed
    return age < app_settings.RECONCILE_TIMEOUT


def _record_error(
    evaluation: Evaluation,
    *,
    message: str,
    keep_mark: bool,
    code: int | None = None,
    permanent: bool = False,
    retry_after: float | None = None,
    count_attempt: bool = True,
    body: str | None = None,
) -> Outcome:
    """Record a failed attempt: failed for good, or queued again (raising RetryLater).

    ``count_attempt=False``: the attempt is given back, and never the reason to give up.
    """
    out_of_attempts = count_attempt and evaluation.attempts >= app_settings.MAX_ATTEMPTS
    if permanent or out_of_attempts:
        if out_of_attempts and not permanent:
            message = f"Gave up after {evaluation.attempts} attempts: {message}"
        if keep_mark:
            assert evaluation.posted_at is not None
            message += (
                f" TrustHub may hold an evaluation of {evaluation.record.sid} against "
                f"{evaluation.policy.sid} created after {evaluation.posted_at.isoformat()}; "
                "`manage.py trusthub_sync --evaluations` adopts it into this row."
            )
        if not rows.fail(
            evaluation, error_code=code, error_message=message, keep_mark=keep_mark, raw=_raw(body)
        ):
            return _claim_lost(evaluation, message)
        logger.warning("Evaluation #%s failed: %s", evaluation.pk, message)
        return Outcome.FAILED
    countdown = backoff(evaluation.attempts, retry_after)
    if not rows.release(
        evaluation,
        error_code=code,
        error_message=message,
        keep_mark=keep_mark,
        countdown=countdown,
        count_attempt=count_attempt,
    ):
        return _claim_lost(evaluation, message)
    logger.info("Evaluation #%s will retry in %.1fs: %s", evaluation.pk, countdown, message)
    raise RetryLater(evaluation.pk, countdown, message)


def _claim_lost(evaluation: Evaluation, message: str) -> Outcome:
    """The row was taken over (our claim expired) before this attempt's outcome was written:
    the attempt that holds it now decides."""
    logger.info(
        "Evaluation #%s: claim lost before this attempt's outcome was stored (%s); the attempt "
        "that holds it now goes on.",
        evaluation.pk,
        message,
    )
    return Outcome.SKIPPED


def _after_database_error(attempt: _Attempt, error: DatabaseError) -> Outcome:
    """The database failed mid-attempt: retry, or fail if the data itself does not fit."""
    evaluation = attempt.evaluation
    keep_mark = attempt.keeps_mark
    description = f"{type(error).__name__}: {error}".strip()
    if isinstance(error, DataError | IntegrityError):
        # TrustHub's answer (or our record of it) does not fit the database: it never will.
        return _record_error(
            evaluation,
            message=f"TrustHub's answer could not be stored ({description}).",
            keep_mark=keep_mark,
            permanent=True,
        )
    logger.warning("Evaluation #%s: database error (%s); retrying", evaluation.pk, description)
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()
    try:
        return _record_error(
            evaluation, message=f"Database error ({type(error).__name__}).", keep_mark=keep_mark
        )
    except DatabaseError:
        # Still unreachable: the next delivery may reclaim the row by the claim's token.
        assert evaluation.started_at is not None
        raise RetryLater(
            evaluation.pk,
            backoff(evaluation.attempts),
            f"Database error ({type(error).__name__}).",
            token=evaluation.started_at.isoformat(),
        ) from None


def _parse_token(token: str | None) -> datetime.datetime | None:
    return parse_datetime(token) if token else None


def _raw(body: str | None) -> Any:
    """TrustHub's answer for the record: its JSON where the database can store it, else text."""
    if body is None:
        return None
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return body
    return body if unstorable_problem(parsed) else parsed


def _send_completed_signals(evaluation: Evaluation, recorded: rows.Recorded) -> None:
    record = evaluation.record
    changed = recorded.applied and recorded.previous != evaluation.status
    if recorded.applied:
        # What the same transaction wrote to the record's row.
        record.compliance_status = evaluation.status or ""
        record.compliance_checked_at = evaluation.completed_at

    def send() -> None:
        signals.evaluation_completed.send(sender=Evaluation, evaluation=evaluation)
        if changed:
            signals.send_compliance_changed(
                record, evaluation, previous=recorded.previous, current=evaluation.status or ""
            )

    transaction.on_commit(send)
