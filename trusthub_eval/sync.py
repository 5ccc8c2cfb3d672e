"""Importing TrustHub's records: policies, customer profiles, and evaluations made elsewhere
(the Console, the SDK). Each record is checked first; an unusable one is skipped and reported,
the rest are kept."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from django.db import transaction

from trusthub_eval import signals
from trusthub_eval.client import TrustHubClient, using_client
from trusthub_eval.conf import app_settings
from trusthub_eval.exceptions import ErrorKind, InvalidResponse
from trusthub_eval.exceptions import NotFound as TrustHubNotFound
from trusthub_eval.models import CustomerProfile, Evaluation, Policy
from trusthub_eval.payloads import check_customer_profile, check_evaluation, check_policy
from trusthub_eval.queue import rows

logger = logging.getLogger(__name__)

__all__ = ["Synced", "sync_all", "sync_customer_profiles", "sync_evaluations", "sync_policies"]


class Synced(NamedTuple):
    """What a sync stored, and one line for each record it skipped as unusable."""

    stored: int
    skipped: tuple[str, ...] = ()


def sync_policies(*, client: TrustHubClient | None = None) -> Synced:
    """Upsert every usable policy TrustHub lists; the rest are skipped and logged."""
    with using_client(client) as trusthub:
        return _upsert_all(
            trusthub.list_policies(), check_policy, Policy.objects.upsert_from_payload
        )


def sync_customer_profiles(*, client: TrustHubClient | None = None) -> Synced:
    """Upsert every usable customer profile TrustHub lists; the rest are skipped and logged."""
    with using_client(client) as trusthub:
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
    with using_client(client) as trusthub:
        for item in trusthub.list_evaluations(profile.sid):
            try:
                payload = check_evaluation(
                    item,
                    record_sid=profile.sid,
                    policy_sid=None,
                    kind=ErrorKind.PERMANENT,
                )
            except InvalidResponse as error:
                logger.warning("Not importing an evaluation of %s: %s", profile.sid, error.message)
                skipped.append(error.message)
                continue
            evaluation, created = rows.import_evaluation(
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
    with using_client(client) as trusthub:
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
