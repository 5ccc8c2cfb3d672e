"""Requesting evaluations of Customer Profiles and Trust Products (from the admin, the API, the
command line, a schedule), and fetching the records and policies a request names; running them
is :mod:`trusthub_eval.queue`'s, syncing TrustHub's records :mod:`trusthub_eval.sync`'s."""

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
from trusthub_eval.kinds import RecordKind
from trusthub_eval.models import RECORD_MODELS, CustomerProfile, Evaluation, Policy, TrustProduct
from trusthub_eval.payloads import check_policy, check_record
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
    "fetch_record",
    "request_evaluation",
    "request_evaluations",
    "resolve_policy",
]


@dataclasses.dataclass(frozen=True)
class BulkRequest:
    """What :func:`request_evaluations` did."""

    queued: int
    in_flight: int  # already queued or running for the same record + policy
    skipped: int  # no policy to evaluate against
    evaluation_ids: list[int]
    #: Whether the wake-up messages reached the broker; None until the transaction commits.
    sent: bool | None = None


# --- requesting --------------------------------------------------------------------------------


def resolve_policy(
    record: CustomerProfile | TrustProduct,
    policy: Policy | str | None = None,
    *,
    client: TrustHubClient | None = None,
) -> Policy:
    """The policy to evaluate ``record`` against: the given one, its own, or the default.

    ``policy`` may be a SID (RN…), as the API, the command line and ``DEFAULT_POLICY_SID`` name
    it: see :func:`fetch_policy`. Raises :class:`NoPolicy` when nothing names one, and
    :class:`UnknownPolicy` for a SID TrustHub does not know.
    """
    if isinstance(policy, Policy):
        return policy
    if policy is not None:
        return fetch_policy(policy, client=client)
    if record.policy_id is not None:
        assert record.policy is not None
        return record.policy
    default_sid = app_settings.DEFAULT_POLICY_SID
    # The default is a Customer Profile policy: a Trust Product's is its own.
    if default_sid and record.kind == RecordKind.CUSTOMER_PROFILE:
        return fetch_policy(default_sid, client=client)
    raise NoPolicy(record.sid)


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
    record: CustomerProfile | TrustProduct,
    policy: Policy | str | None = None,
    *,
    requested_by: AbstractBaseUser | AnonymousUser | None = None,
    trigger: str,
) -> tuple[Evaluation, bool]:
    """Write a queued evaluation and enqueue it when the transaction commits.

    ``record`` is a Customer Profile or a Trust Product. Returns ``(evaluation, created)``.
    While one is queued or running for the same record and policy, that one is returned with
    ``created=False`` instead of a second. ``policy`` is resolved by :func:`resolve_policy`. A
    new evaluation's ``sent`` says whether its message reached the broker (None while an outer
    transaction has not committed); when it did not, the row waits for a worker's sweep.
    Raises the record's ``DoesNotExist`` (or ``Policy.DoesNotExist``) when the record (or
    policy) was deleted meanwhile.
    """
    policy = resolve_policy(record, policy)
    records = type(record).objects.filter(pk=record.pk)
    field = record.kind.field
    user_id = _user_id(requested_by)
    # The in-flight unique constraint decides races between concurrent requests; the loop covers
    # the rare case where the active row finished between our insert and our read.
    conflict: IntegrityError | None = None
    for _attempt in range(3):
        try:
            with transaction.atomic():
                records.lock_for_queueing()
                evaluation = Evaluation.objects.create(
                    **{field: record},
                    policy=policy,
                    trigger=trigger,
                    requested_by_id=user_id,
                    # Due now by the database's clock: the sweep's "overdue" is measured on it.
                    next_attempt_at=DatabaseNow(),
                )
                evaluation.refresh_from_db(fields=["next_attempt_at"])
                records.update(latest_evaluation=evaluation)
                _send_on_commit([evaluation.pk], _reporter(evaluation))
            return evaluation, True
        except IntegrityError as error:
            existing = (
                Evaluation.objects.active()
                .filter(**{field: record}, policy=policy)
                .select_related(field, "policy")
                .first()
            )
            if existing is not None:
                return existing, False
            # Not the in-flight constraint: a foreign key whose row was deleted meanwhile?
            if not records.exists():
                raise type(record).DoesNotExist(
                    f"{record.kind.label} {record.sid} was deleted."
                ) from None
            if not Policy.objects.filter(pk=policy.pk).exists():
                raise Policy.DoesNotExist(f"Policy {policy.sid} was deleted.") from None
            conflict = error
    assert conflict is not None
    raise conflict


def request_evaluations(
    records: QuerySet[CustomerProfile]
    | QuerySet[TrustProduct]
    | Iterable[CustomerProfile | TrustProduct],
    policy: Policy | str | None = None,
    *,
    requested_by: AbstractBaseUser | AnonymousUser | None = None,
    trigger: str,
) -> BulkRequest:
    """Queue evaluations of many records in a number of queries that does not grow with them.

    ``records`` is a queryset of Customer Profiles or of Trust Products, or an iterable of
    either or both, each evaluated against ``policy`` or else its own (or, for a profile,
    ``DEFAULT_POLICY_SID``), resolved as :func:`resolve_policy` does. Records with an
    evaluation already in flight for that policy count as ``in_flight``; records with no policy
    at all count as ``skipped``.
    """
    pairs, skipped = _record_policy_pairs(records, policy)
    if not any(pairs.values()):
        return BulkRequest(queued=0, in_flight=0, skipped=skipped, evaluation_ids=[])
    outcome: list[bool] = []
    ids: list[int] = []
    with transaction.atomic():
        for kind, kind_pairs in pairs.items():
            ids += rows.queue_pairs(
                kind_pairs, kind=kind, trigger=trigger, requested_by_id=_user_id(requested_by)
            )
        if ids:
            _send_on_commit(ids, outcome.append)
    return BulkRequest(
        queued=len(ids),
        in_flight=sum(map(len, pairs.values())) - len(ids),
        skipped=skipped,
        evaluation_ids=ids,
        sent=outcome[0] if outcome else None,
    )


def _record_policy_pairs(
    records: QuerySet[CustomerProfile]
    | QuerySet[TrustProduct]
    | Iterable[CustomerProfile | TrustProduct],
    policy: Policy | str | None,
) -> tuple[dict[RecordKind, dict[int, int]], int]:
    """(for each kind: record id -> policy id to evaluate against, how many records have no
    policy)."""
    if isinstance(records, QuerySet):
        found = [
            (records.model.kind, pk, policy_id)
            for pk, policy_id in records.order_by().values_list("pk", "policy_id")
        ]
    else:
        found = [(r.kind, r.pk, r.policy_id) for r in records]
    if isinstance(policy, str):
        policy = fetch_policy(policy)
    default_id: int | None = None
    # The default (a profile's) is looked up, maybe in TrustHub, only when a profile needs it.
    if (
        policy is None
        and app_settings.DEFAULT_POLICY_SID
        and any(k == RecordKind.CUSTOMER_PROFILE and not p for k, _, p in found)
    ):
        default_id = fetch_policy(app_settings.DEFAULT_POLICY_SID).pk
    pairs: dict[RecordKind, dict[int, int]] = {kind: {} for kind in RECORD_MODELS}
    for kind, record_id, own_policy_id in found:
        default = default_id if kind == RecordKind.CUSTOMER_PROFILE else None
        chosen = policy.pk if policy is not None else (own_policy_id or default)
        if chosen is not None:
            pairs[kind][record_id] = chosen
    unique = {(kind, record_id) for kind, record_id, _ in found}
    return pairs, len(unique) - sum(map(len, pairs.values()))


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
    profile = fetch_record(sid, RecordKind.CUSTOMER_PROFILE, client=client)
    assert isinstance(profile, CustomerProfile)
    return profile


def fetch_record(
    sid: str, kind: RecordKind | None = None, *, client: TrustHubClient | None = None
) -> CustomerProfile | TrustProduct:
    """The local record with ``sid``, fetched from TrustHub (with its policy) if unknown.

    Both kinds have BU… SIDs, so with ``kind`` None the record's kind is what the mirror or
    TrustHub says: the local record of either kind, else TrustHub's Customer Profile, else its
    Trust Product (a 404 from one kind's collection is not an answer about the other). Raises
    :class:`~trusthub_eval.exceptions.NotFound` when neither kind has it.
    """
    kinds = list(RecordKind) if kind is None else [kind]
    check_sid(sid, SidKind.CUSTOMER_PROFILE, label=kinds[0].sid_label if kind else None)
    for each in kinds:
        found = RECORD_MODELS[each].objects.select_related("policy").filter(sid=sid).first()
        if found is not None:
            return found
    with using_client(client) as trusthub:
        for n, each in enumerate(kinds):
            try:
                payload = trusthub.fetch_record(each, sid)
            except TrustHubNotFound:
                if n == len(kinds) - 1:
                    raise
                continue
            record = RECORD_MODELS[each].objects.upsert_from_payload(
                check_record(payload, record_kind=each, sid=sid)
            )
            if record.policy is not None and record.policy.synced_at is None:
                policy_sid = record.policy.sid
                Policy.objects.upsert_from_payload(
                    check_policy(trusthub.fetch_policy(policy_sid), sid=policy_sid)
                )
            break
    return RECORD_MODELS[each].objects.select_related("policy").get(pk=record.pk)
