"""The business flow: request an evaluation, run it against TrustHub, sync TrustHub's records."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import enum
import logging
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from trusthub_eval import signals
from trusthub_eval.client import TrustHubClient
from trusthub_eval.conf import app_settings
from trusthub_eval.exceptions import ConcurrencyLimited, TrustHubError
from trusthub_eval.exceptions import NotFound as TrustHubNotFound
from trusthub_eval.managers import parse_twilio_datetime
from trusthub_eval.models import CustomerProfile, Evaluation, Policy
from trusthub_eval.sids import SidKind, check_sid

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

logger = logging.getLogger(__name__)


class NoPolicy(ValueError):
    """Neither the request, the profile nor the settings name a policy to evaluate against."""

    def __init__(self, profile: CustomerProfile) -> None:
        super().__init__(
            f"Customer profile {profile.sid} has no policy; name one (a Policy SID, RN…) "
            "or set TRUSTHUB_EVAL['DEFAULT_POLICY_SID']."
        )


class UnknownPolicy(ValueError):
    """A policy SID that TrustHub does not know (so an evaluation against it could only fail)."""

    def __init__(self, sid: str) -> None:
        self.sid = sid
        super().__init__(
            f"TrustHub has no policy {sid}; check the SID (`manage.py trusthub_sync` imports "
            "the policies TrustHub offers)."
        )


class RetryLater(Exception):
    """A transient failure: the evaluation is queued again and should run after ``countdown``."""

    def __init__(self, evaluation_id: int, countdown: float, error: TrustHubError) -> None:
        self.evaluation_id = evaluation_id
        self.countdown = countdown
        self.error = error
        super().__init__(f"Evaluation {evaluation_id} retries in {countdown:.1f}s: {error}")


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
    raise NoPolicy(profile)


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
    return Policy.objects.upsert_from_payload(payload)


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
    resolved by :func:`resolve_policy`.
    """
    policy = resolve_policy(profile, policy)
    user_id = _user_id(requested_by)
    # The in-flight unique constraint decides races between concurrent requests; the loop covers
    # the rare case where the active row finished between our insert and our read.
    for _attempt in range(3):
        try:
            with transaction.atomic():
                CustomerProfile.objects.filter(pk=profile.pk).lock_for_queueing()
                evaluation = Evaluation.objects.create(
                    customer_profile=profile,
                    policy=policy,
                    trigger=trigger,
                    requested_by_id=user_id,
                )
                CustomerProfile.objects.filter(pk=profile.pk).update(latest_evaluation=evaluation)
                _enqueue_on_commit([evaluation.pk])
            return evaluation, True
        except IntegrityError:
            existing = (
                Evaluation.objects.active()
                .filter(customer_profile=profile, policy=policy)
                .select_related("customer_profile", "policy")
                .first()
            )
            if existing is not None:
                return existing, False
    raise RuntimeError(f"Could not queue an evaluation of {profile.sid}")  # pragma: no cover


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
    with transaction.atomic():
        ids = Evaluation.objects.queue_many(
            pairs, trigger=trigger, requested_by_id=_user_id(requested_by)
        )
        if ids:
            _enqueue_on_commit(ids)
    return BulkRequest(
        queued=len(ids), in_flight=len(pairs) - len(ids), skipped=skipped, evaluation_ids=ids
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


def _enqueue_on_commit(evaluation_ids: list[int]) -> None:
    from trusthub_eval import tasks

    def send() -> None:
        tasks.enqueue(evaluation_ids)

    # robust: a broker that is down must not turn a committed request into an error; the row
    # stays queued and `resume_queued` sends it again.
    transaction.on_commit(send, robust=True)


def resume_queued(*, older_than: float = 60.0) -> int:
    """Send again the evaluations queued for longer than ``older_than`` seconds.

    Covers a broker that was down when they were requested and stale running rows whose worker
    died. Sending twice is harmless: only one worker can claim a row.
    """
    now = timezone.now()
    cutoff = now - datetime.timedelta(seconds=older_than)
    stale_running = now - datetime.timedelta(seconds=app_settings.RUNNING_TIMEOUT)
    ids = list(
        Evaluation.objects.filter(
            Q(state=Evaluation.State.QUEUED, requested_at__lt=cutoff)
            | Q(state=Evaluation.State.RUNNING, started_at__lt=stale_running)
        )
        .order_by("requested_at")
        .values_list("pk", flat=True)
    )
    if ids:
        from trusthub_eval import tasks

        tasks.enqueue(ids)
    return len(ids)


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


def run_evaluation(evaluation_id: int, *, client: TrustHubClient | None = None) -> Outcome:
    """Claim the evaluation, ask TrustHub, store the answer.

    Raises :class:`RetryLater` after a transient error (the row is queued again). Permanent
    errors, and transient ones past ``MAX_ATTEMPTS``, are recorded as failed.
    """
    evaluation = Evaluation.objects.claim(
        evaluation_id, running_timeout=app_settings.RUNNING_TIMEOUT
    )
    if evaluation is None:
        return Outcome.SKIPPED
    with _client(client) as trusthub:
        return _run_claimed(evaluation, trusthub)


def _run_claimed(evaluation: Evaluation, client: TrustHubClient) -> Outcome:
    profile, policy = evaluation.customer_profile, evaluation.policy
    posted = evaluation.posted_at is not None
    try:
        payload = _reconcile(evaluation, client) if posted else None
        if payload is None:
            if not Evaluation.objects.mark_posting(evaluation):
                return Outcome.SKIPPED
            posted = True
            payload = client.create_evaluation(profile.sid, policy.sid)
    except TrustHubError as error:
        # A POST that was answered, or never sent, was not processed: nothing to reconcile.
        posted = posted and error.ambiguous
        return _record_error(evaluation, error, posted=posted)
    previous = _compliance_of(profile.pk)
    if not Evaluation.objects.record_result(evaluation, payload):
        return Outcome.SKIPPED
    logger.info(
        "Evaluation %s of %s against %s: %s",
        evaluation.sid,
        profile.sid,
        policy.sid,
        evaluation.status,
    )
    _send_completed_signals(evaluation, previous)
    return Outcome.COMPLETED


def _reconcile(evaluation: Evaluation, client: TrustHubClient) -> Mapping[str, Any] | None:
    """After an ambiguous POST: the evaluation TrustHub created for it, if any.

    TrustHub has no idempotency key, so we list the profile's evaluations and adopt the first
    one for the same policy created since the POST was sent that we have not stored yet.
    """
    assert evaluation.posted_at is not None
    since = evaluation.posted_at - datetime.timedelta(seconds=app_settings.RECONCILE_CLOCK_SKEW)
    candidates = []
    for item in client.list_evaluations(evaluation.customer_profile.sid):
        created = parse_twilio_datetime(item.get("date_created"))
        if item.get("policy_sid") != evaluation.policy.sid or created is None or created < since:
            continue
        candidates.append((created, item))
    if not candidates:
        return None
    known = set(
        Evaluation.objects.filter(sid__in=[item.get("sid") for _, item in candidates]).values_list(
            "sid", flat=True
        )
    )
    for _created, item in sorted(candidates, key=lambda pair: pair[0]):
        if item.get("sid") not in known:
            logger.info(
                "Evaluation #%s adopted %s after an ambiguous POST", evaluation.pk, item.get("sid")
            )
            return item
    return None


def _record_error(evaluation: Evaluation, error: TrustHubError, *, posted: bool) -> Outcome:
    message = str(error)
    out_of_attempts = evaluation.attempts >= app_settings.MAX_ATTEMPTS
    if error.permanent or out_of_attempts:
        if out_of_attempts and not error.permanent:
            message = f"Gave up after {evaluation.attempts} attempts: {message}"
        logger.warning("Evaluation #%s failed: %s", evaluation.pk, message)
        Evaluation.objects.record_failure(evaluation, error_code=error.code, error_message=message)
        return Outcome.FAILED
    Evaluation.objects.release_for_retry(
        evaluation,
        error_code=error.code,
        error_message=message,
        posted=posted,
        # Waiting for one of our own concurrency slots is not an attempt at TrustHub.
        count_attempt=not isinstance(error, ConcurrencyLimited),
    )
    countdown = backoff(evaluation.attempts, error.retry_after)
    logger.info("Evaluation #%s will retry in %.1fs: %s", evaluation.pk, countdown, message)
    raise RetryLater(evaluation.pk, countdown, error)


def _compliance_of(profile_id: int) -> str:
    return (
        CustomerProfile.objects.filter(pk=profile_id)
        .values_list("compliance_status", flat=True)
        .get()
    )


def _send_completed_signals(evaluation: Evaluation, previous: str) -> None:
    def send() -> None:
        signals.evaluation_completed.send(sender=Evaluation, evaluation=evaluation)
        if (
            previous != evaluation.status
            and _compliance_of(evaluation.customer_profile_id) == evaluation.status
        ):
            signals.compliance_changed.send(
                sender=CustomerProfile,
                customer_profile=evaluation.customer_profile,
                evaluation=evaluation,
                previous=previous,
                current=evaluation.status,
            )

    transaction.on_commit(send)


# --- syncing -----------------------------------------------------------------------------------


def sync_policies(*, client: TrustHubClient | None = None) -> int:
    """Upsert every policy TrustHub lists; returns how many."""
    with _client(client) as trusthub:
        return _upsert_all(trusthub.list_policies(), Policy.objects.upsert_from_payload)


def sync_customer_profiles(*, client: TrustHubClient | None = None) -> int:
    """Upsert every customer profile TrustHub lists; returns how many."""
    with _client(client) as trusthub:
        return _upsert_all(
            trusthub.list_customer_profiles(), CustomerProfile.objects.upsert_from_payload
        )


def _upsert_all(items: Iterable[Mapping[str, Any]], upsert: Callable[..., object]) -> int:
    count = 0
    for item in items:
        upsert(item)
        count += 1
    return count


def sync_evaluations(profile: CustomerProfile, *, client: TrustHubClient | None = None) -> int:
    """Import the profile's evaluations made elsewhere (the console, the SDK); returns how many."""
    with _client(client) as trusthub:
        imported = sum(
            1
            for item in trusthub.list_evaluations(profile.sid)
            if Evaluation.objects.import_from_payload(profile, item)[1]
        )
    if imported:
        profiles = CustomerProfile.objects.filter(pk=profile.pk)
        profiles.refresh_latest()
        profiles.refresh_compliance()
    return imported


def fetch_customer_profile(sid: str, *, client: TrustHubClient | None = None) -> CustomerProfile:
    """The local profile with ``sid``, fetched from TrustHub (with its policy) if unknown."""
    check_sid(sid, SidKind.CUSTOMER_PROFILE)
    try:
        return CustomerProfile.objects.select_related("policy").get(sid=sid)
    except CustomerProfile.DoesNotExist:
        pass
    with _client(client) as trusthub:
        profile = CustomerProfile.objects.upsert_from_payload(trusthub.fetch_customer_profile(sid))
        if profile.policy is not None and profile.policy.synced_at is None:
            Policy.objects.upsert_from_payload(trusthub.fetch_policy(profile.policy.sid))
    return CustomerProfile.objects.select_related("policy").get(pk=profile.pk)


@contextlib.contextmanager
def _client(client: TrustHubClient | None) -> Iterator[TrustHubClient]:
    """Use the caller's client, or make one from settings and close it afterwards."""
    if client is not None:
        yield client
        return
    with TrustHubClient.from_settings() as own:
        yield own
