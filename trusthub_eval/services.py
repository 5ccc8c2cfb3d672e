"""Requesting evaluations (from the admin, the API, the command line, a schedule), and fetching
the profiles and policies a request names; running them is :mod:`trusthub_eval.queue`'s,
syncing TrustHub's records :mod:`trusthub_eval.sync`'s."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from django.db import IntegrityError, transaction
from django.db.models import QuerySet

from trusthub_eval import dispatch
from trusthub_eval.client import TrustHubClient, using_client
from trusthub_eval.clock import DatabaseNow
from trusthub_eval.conf import app_settings
from trusthub_eval.exceptions import NoPolicy, UnknownPolicy
from trusthub_eval.exceptions import NotFound as TrustHubNotFound
from trusthub_eval.models import CustomerProfile, Evaluation, Policy
from trusthub_eval.payloads import check_customer_profile, check_policy
from trusthub_eval.queue import rows
from trusthub_eval.sids import SidKind, check_sid

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

logger = logging.getLogger(__name__)

__all__ = [
    "BulkRequest",
    "NoPolicy",
    "UnknownPolicy",
    "fetch_customer_profile",
    "fetch_policy",
    "request_evaluation",
    "request_evaluations",
    "resolve_policy",
]


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
    with using_client(client) as trusthub:
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
        ids = rows.queue_pairs(pairs, trigger=trigger, requested_by_id=_user_id(requested_by))
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


def fetch_customer_profile(sid: str, *, client: TrustHubClient | None = None) -> CustomerProfile:
    """The local profile with ``sid``, fetched from TrustHub (with its policy) if unknown."""
    check_sid(sid, SidKind.CUSTOMER_PROFILE)
    try:
        return CustomerProfile.objects.select_related("policy").get(sid=sid)
    except CustomerProfile.DoesNotExist:
        pass
    with using_client(client) as trusthub:
        record = check_customer_profile(trusthub.fetch_customer_profile(sid), sid=sid)
        profile = CustomerProfile.objects.upsert_from_payload(record)
        if profile.policy is not None and profile.policy.synced_at is None:
            policy_sid = profile.policy.sid
            record = check_policy(trusthub.fetch_policy(policy_sid), sid=policy_sid)
            Policy.objects.upsert_from_payload(record)
    return CustomerProfile.objects.select_related("policy").get(pk=profile.pk)
