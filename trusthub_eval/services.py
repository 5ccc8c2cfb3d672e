"""The business flow: request an evaluation, run it against TrustHub, sync TrustHub's records."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import enum
import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, DataError, IntegrityError, connections, transaction
from django.db.models import QuerySet
from django.utils.dateparse import parse_datetime

from trusthub_eval import dispatch, signals
from trusthub_eval.client import TrustHubClient, shared_client
from trusthub_eval.clock import CLAIM_MARGIN, DatabaseNow
from trusthub_eval.conf import app_settings
from trusthub_eval.exceptions import (
    ConcurrencyLimited,
    DeadlinePassed,
    ErrorKind,
    InvalidResponse,
    NoPolicy,
    RetryLater,
    SidTaken,
    TrustHubError,
    UnknownPolicy,
)
from trusthub_eval.exceptions import NotFound as TrustHubNotFound
from trusthub_eval.managers import LateAnswer, Recorded
from trusthub_eval.models import CustomerProfile, Evaluation, Policy
from trusthub_eval.payloads import (
    check_customer_profile,
    check_evaluation,
    check_policy,
    identify_evaluation,
    unstorable_problem,
)
from trusthub_eval.sids import SidKind, check_sid

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

logger = logging.getLogger(__name__)

__all__ = [
    "BulkRequest",
    "NoPolicy",
    "Outcome",
    "RetryLater",
    "Synced",
    "UnknownPolicy",
    "backoff",
    "fetch_customer_profile",
    "fetch_policy",
    "request_evaluation",
    "request_evaluations",
    "resolve_policy",
    "resume_queued",
    "run_evaluation",
    "sync_all",
    "sync_customer_profiles",
    "sync_evaluations",
    "sync_policies",
]


class Outcome(enum.StrEnum):
    """What one call of :func:`run_evaluation` did."""

    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"  # not claimable: another worker has it, or it is finished


@dataclasses.dataclass(frozen=True)
class BulkRequest:
    """What :func:`request_evaluations` did."""

    queued: int
    in_flight: int  # already queued or running for the same profile + policy
    skipped: int  # no policy to evaluate against
    evaluation_ids: list[int]
    #: Whether the wake-up messages reached the broker; None until the transaction commits.
    sent: bool | None = None


# --- requesting --------------------------------------------------------------------------------


def resolve_policy(
    profile: CustomerProfile,
    policy: Policy | str | None = None,
    *,
    client: TrustHubClient | None = None,
) -> Policy:
    """The policy to evaluate ``profile`` against: the given one, its own, or the default.

    ``policy`` may be a SID (RN…), as the API, the command line and ``DEFAULT_POLICY_SID`` name
    it: see :func:`fetch_policy`. Raises :class:`NoPolicy` when nothing names one, and
    :class:`UnknownPolicy` for a SID TrustHub does not know.
    """
    if isinstance(policy, Policy):
        return policy
    if policy is not None:
        return fetch_policy(policy, client=client)
    if profile.policy_id is not None:
        assert profile.policy is not None
        return profile.policy
    default_sid = app_settings.DEFAULT_POLICY_SID
    if default_sid:
        return fetch_policy(default_sid, client=client)
    raise NoPolicy(profile.sid)


def fetch_policy(sid: str, *, client: TrustHubClient | None = None) -> Policy:
    """The local policy with ``sid``, fetched from TrustHub and stored if it is not here yet.

    Every local policy came from TrustHub (a sync, a profile's payload, an earlier fetch), so
    only an unknown SID costs a call. One TrustHub does not know raises :class:`UnknownPolicy`
    and stores nothing: a placeholder would only make its evaluations fail later with a
    misleading 20404 about the profile. Other TrustHub errors (unreachable, credentials)
    propagate as :class:`TrustHubError`.
    """
    check_sid(sid, SidKind.POLICY)
    try:
        return Policy.objects.get(sid=sid)
    except Policy.DoesNotExist:
        pass
    with _client(client) as trusthub:
        try:
            payload = trusthub.fetch_policy(sid)
        except TrustHubNotFound:
            raise UnknownPolicy(sid) from None
    return Policy.objects.upsert_from_payload(check_policy(payload, sid=sid))


def _user_id(user: AbstractBaseUser | AnonymousUser | None) -> int | None:
    """The requesting user's primary key; None for anonymous callers (the CLI, schedules)."""
    if user is None or not user.is_authenticated:
        return None
    return user.pk  # type: ignore[no-any-return]


def request_evaluation(
    profile: CustomerProfile,
    policy: Policy | str | None = None,
    *,
    requested_by: AbstractBaseUser | AnonymousUser | None = None,
    trigger: str,
) -> tuple[Evaluation, bool]:
    """Write a queued evaluation and enqueue it when the transaction commits.

    Returns ``(evaluation, created)``. While one is queued or running for the same profile and
    policy, that one is returned with ``created=False`` instead of a second. ``policy`` is
    resolved by :func:`resolve_policy`. A new evaluation's ``sent`` says whether its message
    reached the broker (None while an outer transaction has not committed); when it did not,
    the row waits for a worker's sweep. Raises ``CustomerProfile.DoesNotExist`` (or
    ``Policy.DoesNotExist``) when the profile (or policy) was deleted meanwhile.
    """
    policy = resolve_policy(profile, policy)
    user_id = _user_id(requested_by)
    # The in-flight unique constraint decides races between concurrent requests; the loop covers
    # the rare case where the active row finished between our insert and our read.
    conflict: IntegrityError | None = None
    for _attempt in range(3):
        try:
            with transaction.atomic():
                CustomerProfile.objects.filter(pk=profile.pk).lock_for_queueing()
                evaluation = Evaluation.objects.create(
                    customer_profile=profile,
                    policy=policy,
                    trigger=trigger,
                    requested_by_id=user_id,
                    # Due now by the database's clock: the sweep's "overdue" is measured on it.
                    next_attempt_at=DatabaseNow(),
                )
                evaluation.refresh_from_db(fields=["next_attempt_at"])
                CustomerProfile.objects.filter(pk=profile.pk).update(latest_evaluation=evaluation)
                _send_on_commit([evaluation.pk], _reporter(evaluation))
            return evaluation, True
        except IntegrityError as error:
            existing = (
                Evaluation.objects.active()
                .filter(customer_profile=profile, policy=policy)
                .select_related("customer_profile", "policy")
                .first()
            )
            if existing is not None:
                return existing, False
            # Not the in-flight constraint: a foreign key whose row was deleted meanwhile?
            if not CustomerProfile.objects.filter(pk=profile.pk).exists():
                raise CustomerProfile.DoesNotExist(
                    f"Customer profile {profile.sid} was deleted."
                ) from None
            if not Policy.objects.filter(pk=policy.pk).exists():
                raise Policy.DoesNotExist(f"Policy {policy.sid} was deleted.") from None
            conflict = error
    assert conflict is not None
    raise conflict


def request_evaluations(
    profiles: QuerySet[CustomerProfile] | Iterable[CustomerProfile],
    policy: Policy | str | None = None,
    *,
    requested_by: AbstractBaseUser | AnonymousUser | None = None,
    trigger: str,
) -> BulkRequest:
    """Queue evaluations of many profiles in a number of queries that does not grow with them.

    ``profiles`` is a queryset (or iterable) of profiles, each evaluated against ``policy`` or
    else its own (or ``DEFAULT_POLICY_SID``), resolved as :func:`resolve_policy` does. Profiles
    with an evaluation already in flight for that policy count as ``in_flight``; profiles with
    no policy at all count as ``skipped``.
    """
    pairs, skipped = _profile_policy_pairs(profiles, policy)
    if not pairs:
        return BulkRequest(queued=0, in_flight=0, skipped=skipped, evaluation_ids=[])
    outcome: list[bool] = []
    with transaction.atomic():
        ids = Evaluation.objects.queue_many(
            pairs, trigger=trigger, requested_by_id=_user_id(requested_by)
        )
        if ids:
            _send_on_commit(ids, outcome.append)
    return BulkRequest(
        queued=len(ids),
        in_flight=len(pairs) - len(ids),
        skipped=skipped,
        evaluation_ids=ids,
        sent=outcome[0] if outcome else None,
    )


def _profile_policy_pairs(
    profiles: QuerySet[CustomerProfile] | Iterable[CustomerProfile], policy: Policy | str | None
) -> tuple[dict[int, int], int]:
    """(profile id -> policy id to evaluate against, how many profiles have no policy)."""
    if isinstance(profiles, QuerySet):
        rows = list(profiles.order_by().values_list("pk", "policy_id"))
    else:
        rows = [(p.pk, p.policy_id) for p in profiles]
    if isinstance(policy, str):
        policy = fetch_policy(policy)
    default_id: int | None = None
    # The default is looked up (maybe in TrustHub) only when a profile needs it.
    if policy is None and app_settings.DEFAULT_POLICY_SID and not all(p for _, p in rows):
        default_id = fetch_policy(app_settings.DEFAULT_POLICY_SID).pk
    pairs: dict[int, int] = {}
    for profile_id, own_policy_id in rows:
        chosen = policy.pk if policy is not None else (own_policy_id or default_id)
        if chosen is not None:
            pairs[profile_id] = chosen
    return pairs, len({profile_id for profile_id, _ in rows}) - len(pairs)


def _reporter(evaluation: Evaluation) -> Callable[[bool], None]:
    def report(sent: bool) -> None:
        evaluation.sent = sent

    return report


def _send_on_commit(evaluation_ids: list[int], report: Callable[[bool], object]) -> None:
    """Wake workers once the rows are committed, and ``report`` whether the broker took it."""

    def send() -> None:
        report(dispatch.send_runs(evaluation_ids))

    # robust: a failure to send must not turn a committed request into an error; the rows stay
    # queued and a worker's sweep sends them again.
    transaction.on_commit(send, robust=True)


def resume_queued(*, older_than: float | None = None) -> int:
    """The sweep: send again the evaluations whose message may be lost; returns how many.

    Queued rows overdue by more than ``older_than`` seconds (default ``SWEEP_AFTER``; a retry's
    countdown counts as not due yet) and running rows past ``RUNNING_TIMEOUT`` (their worker
    died). Every worker sends this every ``SWEEP_INTERVAL`` seconds. Sending twice is harmless:
    only one worker can claim a row.
    """
    # Overdue rows whose message still waits behind a backlog are not sent a second one: the
    # broker's count of waiting messages says how many of the newest may still have theirs.
    waiting = dispatch.waiting()
    due = Evaluation.objects.due_for_sweep(
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


# --- running -----------------------------------------------------------------------------------


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

    The common path is two database writes: the claim, which also sets the posting mark before
    the POST is sent, and one transaction that stores the answer.

    The claim is the database's: another worker may take the row over once its ``started_at``
    is ``RUNNING_TIMEOUT`` old by the database's clock. This worker's own monotonic clock
    starts when it sends the claim, which the database cannot have stamped any earlier, so
    the POST is sent only if it is sure to be over before then (a claim that took long, a
    database that stalled, releases the row instead).
    """
    sent = time.monotonic()
    evaluation = Evaluation.objects.claim(
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
    posting: bool = False

    @property
    def unresolved(self) -> bool:
        """Whether TrustHub may hold an evaluation for the row that we have not seen: the row
        keeps its mark however the attempt ends."""
        return self.reconciling or self.posting


def _run_claimed(attempt: _Attempt, client: TrustHubClient | None) -> Outcome:
    evaluation = attempt.evaluation
    try:
        with _client(client) as trusthub:
            return _attempt(attempt, trusthub)
    except (RetryLater, DatabaseError):
        raise
    except TrustHubError as error:  # building the client: credentials
        return _record_trusthub_error(evaluation, error, posted=attempt.unresolved)
    except ImproperlyConfigured as error:
        return _record_error(
            evaluation, message=str(error), posted=attempt.unresolved, permanent=True
        )
    except Exception as error:  # the guarantee: no exception strands a row
        logger.error(
            "Evaluation #%s: unexpected %s", evaluation.pk, type(error).__name__, exc_info=True
        )
        return _record_error(
            evaluation,
            message=f"Unexpected {type(error).__name__} (the worker's log has the traceback).",
            posted=attempt.unresolved,
        )


def _attempt(attempt: _Attempt, client: TrustHubClient) -> Outcome:
    evaluation = attempt.evaluation
    profile, policy = evaluation.customer_profile, evaluation.policy
    try:
        payload = _reconcile(attempt, client) if attempt.reconciling else None
        if payload is None:
            # Read to its end, the listing shows none for the earlier POST: post again, under
            # a mark moved to now. Without an earlier POST the claim's mark is already there.
            if attempt.reconciling and not Evaluation.objects.mark_posting(evaluation):
                return Outcome.SKIPPED
            attempt.reconciling = False
            attempt.posting = True
            try:
                answer = client.create_evaluation(
                    profile.sid, policy.sid, finish_by=attempt.expires
                )
            except DeadlinePassed:
                attempt.posting = False  # nothing was sent
                raise
            payload = check_evaluation(
                answer,
                customer_profile_sid=profile.sid,
                policy_sid=policy.sid,
            )
        return _store(evaluation, payload)
    except TrustHubError as error:
        # Once a POST may have been processed, only a successful listing clears the mark: an
        # error while reconciling keeps it, and so does an ambiguous answer to the POST.
        posted = attempt.reconciling or (attempt.posting and error.ambiguous)
        return _record_trusthub_error(
            evaluation,
            error,
            posted=posted,
            free=attempt.reconciling and _within_reconcile_timeout(attempt),
        )


def _reconcile(attempt: _Attempt, client: TrustHubClient) -> Mapping[str, Any] | None:
    """After an ambiguous POST: the evaluation TrustHub created for it, or None if none.

    TrustHub has no idempotency key, so we read the profile's whole list and adopt the oldest
    evaluation for the same policy created since the POST that no other request of ours holds
    (an import by ``trusthub_sync`` is the same evaluation and is replaced). None only after
    the list was read to its end, within the claim's time.
    """
    evaluation = attempt.evaluation
    assert evaluation.posted_at is not None
    profile, policy = evaluation.customer_profile, evaluation.policy
    since = evaluation.posted_at - datetime.timedelta(seconds=app_settings.RECONCILE_CLOCK_SKEW)
    candidates = []
    for item in client.list_evaluations(profile.sid, finish_by=attempt.expires):
        sid, policy_sid, created = identify_evaluation(item, customer_profile_sid=profile.sid)
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
                customer_profile_sid=profile.sid,
                policy_sid=policy.sid,
                kind=ErrorKind.RETRYABLE,
            )
    return None


def _store(evaluation: Evaluation, payload: Mapping[str, Any]) -> Outcome:
    profile, policy = evaluation.customer_profile, evaluation.policy
    try:
        recorded = Evaluation.objects.record_result(evaluation, payload)
    except SidTaken as taken:
        # Not an answer about this request: whether TrustHub made one for it is unknown.
        raise InvalidResponse(str(taken), kind=ErrorKind.AMBIGUOUS) from None
    if recorded is None:
        return _keep_late_answer(evaluation, payload)
    logger.info(
        "Evaluation %s of %s against %s: %s",
        evaluation.sid,
        profile.sid,
        policy.sid,
        evaluation.status,
    )
    _send_completed_signals(evaluation, recorded)
    return Outcome.COMPLETED


def _keep_late_answer(evaluation: Evaluation, payload: Mapping[str, Any]) -> Outcome:
    """TrustHub's answer came for a claim this worker had lost: never drop its SID."""
    late, recorded = Evaluation.objects.keep_late_answer(evaluation, payload)
    if late is LateAnswer.ADOPTED:
        assert recorded is not None
        logger.warning(
            "Evaluation #%s: its claim was lost before TrustHub's answer %s was stored; the row "
            "had none, so it holds this one.",
            evaluation.pk,
            payload["sid"],
        )
        _send_completed_signals(evaluation, recorded)
        return Outcome.COMPLETED
    if late is LateAnswer.DUPLICATE:
        logger.error(
            "Evaluation #%s: TrustHub created %s for a claim this worker had lost, and the row "
            "holds another evaluation: kept as a known duplicate.",
            evaluation.pk,
            payload["sid"],
        )
    return Outcome.SKIPPED


def _record_trusthub_error(
    evaluation: Evaluation, error: TrustHubError, *, posted: bool, free: bool = False
) -> Outcome:
    """``free``: a failed reconciliation within RECONCILE_TIMEOUT. It spends no attempt and is
    never final, whatever the error: TrustHub may hold the evaluation all the same, and only a
    listing read to its end can tell (past the timeout the row fails, marked)."""
    return _record_error(
        evaluation,
        message=str(error),
        posted=posted,
        code=error.code,
        permanent=error.permanent and not free,
        retry_after=error.retry_after,
        # Waiting for one of our own concurrency slots, or a claim too old to post on, is not
        # an attempt at TrustHub: nothing was sent.
        count_attempt=not (free or isinstance(error, ConcurrencyLimited | DeadlinePassed)),
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
    posted: bool,
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
        if posted:
            assert evaluation.posted_at is not None
            message += (
                f" TrustHub may hold an evaluation of {evaluation.customer_profile.sid} against "
                f"{evaluation.policy.sid} created after {evaluation.posted_at.isoformat()}; "
                "`manage.py trusthub_sync --evaluations` adopts it into this row."
            )
        if not Evaluation.objects.record_failure(
            evaluation, error_code=code, error_message=message, posted=posted, raw=_raw(body)
        ):
            return _claim_lost(evaluation, message)
        logger.warning("Evaluation #%s failed: %s", evaluation.pk, message)
        return Outcome.FAILED
    countdown = backoff(evaluation.attempts, retry_after)
    if not Evaluation.objects.release_for_retry(
        evaluation,
        error_code=code,
        error_message=message,
        posted=posted,
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
    posted = attempt.unresolved
    description = f"{type(error).__name__}: {error}".strip()
    if isinstance(error, DataError | IntegrityError):
        # TrustHub's answer (or our record of it) does not fit the database: it never will.
        return _record_error(
            evaluation,
            message=f"TrustHub's answer could not be stored ({description}).",
            posted=posted,
            permanent=True,
        )
    logger.warning("Evaluation #%s: database error (%s); retrying", evaluation.pk, description)
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()
    try:
        return _record_error(
            evaluation, message=f"Database error ({type(error).__name__}).", posted=posted
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


def _send_completed_signals(evaluation: Evaluation, recorded: Recorded) -> None:
    profile = evaluation.customer_profile
    changed = recorded.applied and recorded.previous != evaluation.status
    if recorded.applied:
        # What the same transaction wrote to the profile's row.
        profile.compliance_status = evaluation.status or ""
        profile.compliance_checked_at = evaluation.completed_at

    def send() -> None:
        signals.evaluation_completed.send(sender=Evaluation, evaluation=evaluation)
        if changed:
            signals.compliance_changed.send(
                sender=CustomerProfile,
                customer_profile=profile,
                evaluation=evaluation,
                previous=recorded.previous,
                current=evaluation.status,
            )

    transaction.on_commit(send)


# --- syncing -----------------------------------------------------------------------------------


class Synced(NamedTuple):
    """What a sync stored, and one line for each record it skipped as unusable."""

    stored: int
    skipped: tuple[str, ...] = ()


def sync_policies(*, client: TrustHubClient | None = None) -> Synced:
    """Upsert every usable policy TrustHub lists; the rest are skipped and logged."""
    with _client(client) as trusthub:
        return _upsert_all(
            trusthub.list_policies(), check_policy, Policy.objects.upsert_from_payload
        )


def sync_customer_profiles(*, client: TrustHubClient | None = None) -> Synced:
    """Upsert every usable customer profile TrustHub lists; the rest are skipped and logged."""
    with _client(client) as trusthub:
        return _upsert_all(
            trusthub.list_customer_profiles(),
            check_customer_profile,
            CustomerProfile.objects.upsert_from_payload,
        )


def _upsert_all(
    items: Iterable[object],
    check: Callable[[object], Mapping[str, Any]],
    upsert: Callable[[Mapping[str, Any]], object],
) -> Synced:
    stored = 0
    skipped: list[str] = []
    for item in items:
        try:
            record = check(item)
        except InvalidResponse as error:
            logger.warning("Not syncing a record: %s", error.message)
            skipped.append(error.message)
            continue
        upsert(record)
        stored += 1
    return Synced(stored, tuple(skipped))


def sync_evaluations(profile: CustomerProfile, *, client: TrustHubClient | None = None) -> Synced:
    """Import the profile's evaluations made elsewhere (the console, the SDK); the unusable
    ones are skipped and logged.

    Each imported evaluation fires ``evaluation_completed``, and ``compliance_changed`` fires if
    they change the profile's compliance, as for an evaluation run here.
    """
    imported: list[Evaluation] = []
    skipped: list[str] = []
    with _client(client) as trusthub:
        for item in trusthub.list_evaluations(profile.sid):
            try:
                payload = check_evaluation(
                    item,
                    customer_profile_sid=profile.sid,
                    policy_sid=None,
                    kind=ErrorKind.PERMANENT,
                )
            except InvalidResponse as error:
                logger.warning("Not importing an evaluation of %s: %s", profile.sid, error.message)
                skipped.append(error.message)
                continue
            evaluation, created = Evaluation.objects.import_from_payload(
                profile, payload, clock_skew=app_settings.RECONCILE_CLOCK_SKEW
            )
            if created:
                imported.append(evaluation)
    if imported:
        profiles = CustomerProfile.objects.filter(pk=profile.pk)
        previous = profiles.values_list("compliance_status", flat=True).get()
        profiles.refresh_latest()
        profiles.refresh_compliance()
        profile.refresh_from_db(
            fields=["compliance_status", "compliance_checked_at", "failing_requirements"]
        )
        _send_imported_signals(profile, imported, previous)
    return Synced(len(imported), tuple(skipped))


def _send_imported_signals(
    profile: CustomerProfile, imported: list[Evaluation], previous: str
) -> None:
    """The signals an evaluation run here would have fired, for evaluations imported at once:
    each completed, oldest first, and the profile's one change of compliance if any."""
    imported.sort(key=lambda evaluation: (evaluation.completed_at, evaluation.pk))
    shown = next(
        (e for e in imported if e.completed_at == profile.compliance_checked_at), imported[-1]
    )

    def send() -> None:
        for evaluation in imported:
            signals.evaluation_completed.send(sender=Evaluation, evaluation=evaluation)
        if profile.compliance_status != previous:
            signals.compliance_changed.send(
                sender=CustomerProfile,
                customer_profile=profile,
                evaluation=shown,
                previous=previous,
                current=profile.compliance_status,
            )

    transaction.on_commit(send)


def sync_all(
    *, evaluations: bool = False, client: TrustHubClient | None = None
) -> dict[str, Synced]:
    """Sync the policies, then the customer profiles and, with ``evaluations``, every
    profile's evaluations made elsewhere; what each stored and skipped, by name."""
    with _client(client) as trusthub:
        synced = {
            "policies": sync_policies(client=trusthub),
            "customer_profiles": sync_customer_profiles(client=trusthub),
        }
        if evaluations:
            imported, skipped = 0, list[str]()
            for profile in CustomerProfile.objects.iterator():
                try:
                    one = sync_evaluations(profile, client=trusthub)
                except TrustHubNotFound:
                    # Deleted in TrustHub (the Console, the SDK) since it was imported here.
                    message = f"Customer profile {profile.sid} is not in TrustHub any more."
                    logger.warning("Not importing evaluations: %s", message)
                    skipped.append(message)
                    continue
                imported += one.stored
                skipped.extend(one.skipped)
            synced["evaluations"] = Synced(imported, tuple(skipped))
    return synced


def fetch_customer_profile(sid: str, *, client: TrustHubClient | None = None) -> CustomerProfile:
    """The local profile with ``sid``, fetched from TrustHub (with its policy) if unknown."""
    check_sid(sid, SidKind.CUSTOMER_PROFILE)
    try:
        return CustomerProfile.objects.select_related("policy").get(sid=sid)
    except CustomerProfile.DoesNotExist:
        pass
    with _client(client) as trusthub:
        record = check_customer_profile(trusthub.fetch_customer_profile(sid), sid=sid)
        profile = CustomerProfile.objects.upsert_from_payload(record)
        if profile.policy is not None and profile.policy.synced_at is None:
            policy_sid = profile.policy.sid
            record = check_policy(trusthub.fetch_policy(policy_sid), sid=policy_sid)
            Policy.objects.upsert_from_payload(record)
    return CustomerProfile.objects.select_related("policy").get(pk=profile.pk)


@contextlib.contextmanager
def _client(client: TrustHubClient | None) -> Iterator[TrustHubClient]:
    """Use the caller's client, or this thread's kept one (its connection stays open)."""
    yield client if client is not None else shared_client()
