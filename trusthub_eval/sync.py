"""Importing TrustHub's records: policies, Customer Profiles, Trust Products (with the profile
each is built on), and evaluations made elsewhere (the Console, the SDK). Each record is checked
first; an unusable one is skipped and reported, the rest are kept."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from django.db import transaction

from trusthub_eval import signals
from trusthub_eval.client import TrustHubClient, using_client
from trusthub_eval.conf import app_settings
from trusthub_eval.exceptions import ErrorKind, InvalidResponse, TrustHubError
from trusthub_eval.exceptions import NotFound as TrustHubNotFound
from trusthub_eval.kinds import RecordKind
from trusthub_eval.models import RECORD_MODELS, CustomerProfile, Evaluation, Policy, TrustProduct
from trusthub_eval.payloads import check_evaluation, check_policy, check_record
from trusthub_eval.queue import rows
from trusthub_eval.sids import SidKind, is_sid

logger = logging.getLogger(__name__)

__all__ = [
    "Synced",
    "sync_all",
    "sync_customer_profiles",
    "sync_evaluations",
    "sync_policies",
    "sync_trust_products",
]


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
    return _sync_records(RecordKind.CUSTOMER_PROFILE, client=client)


def sync_trust_products(*, client: TrustHubClient | None = None) -> Synced:
    """Upsert every usable Trust Product TrustHub lists, each with the Customer Profile
    assigned to it (its entity assignments) when that profile is here; the rest are skipped
    and logged. Sync the profiles first."""
    with using_client(client) as trusthub:
        synced = _sync_records(RecordKind.TRUST_PRODUCT, client=trusthub)
        skipped = list(synced.skipped)
        for product in TrustProduct.objects.filter(synced_at__isnull=False).iterator():
            try:
                profile_id = _assigned_profile(trusthub, product)
            except TrustHubError as error:
                message = f"The entity assignments of {product.sid} were unusable: {error}"
                logger.warning("Not syncing an assignment: %s", message)
                skipped.append(message)
                continue
            if product.customer_profile_id != profile_id:
                TrustProduct.objects.filter(pk=product.pk).update(customer_profile_id=profile_id)
    return Synced(synced.stored, tuple(skipped))


def _assigned_profile(trusthub: TrustHubClient, product: TrustProduct) -> int | None:
    """The id of the local Customer Profile assigned to ``product`` in TrustHub, if any.

    The assignments name end users, documents and profiles; only a BU… SID of a profile here
    is taken (one not imported is not guessed at), the first if several.
    """
    sids = [
        item.get("object_sid")
        for item in trusthub.list_entity_assignments(product.sid)
        if isinstance(item, Mapping)
    ]
    bundles = [sid for sid in sids if is_sid(sid, SidKind.CUSTOMER_PROFILE)]
    found = dict(CustomerProfile.objects.filter(sid__in=bundles).values_list("sid", "pk"))
    return next((found[sid] for sid in bundles if sid in found), None)


def _sync_records(kind: RecordKind, *, client: TrustHubClient | None) -> Synced:
    with using_client(client) as trusthub:
        return _upsert_all(
            trusthub.list_records(kind),
            lambda item: check_record(item, record_kind=kind),
            RECORD_MODELS[kind].objects.upsert_from_payload,
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


def sync_evaluations(
    record: CustomerProfile | TrustProduct, *, client: TrustHubClient | None = None
) -> Synced:
    """Import the evaluations of a Customer Profile or Trust Product made elsewhere (the
    console, the SDK); the unusable ones are skipped and logged.

    Each imported evaluation fires ``evaluation_completed``, and ``compliance_changed`` fires if
    they change the record's compliance, as for an evaluation run here.
    """
    imported: list[Evaluation] = []
    skipped: list[str] = []
    kind = record.kind
    with using_client(client) as trusthub:
        for item in trusthub.list_evaluations(record.sid, kind=kind):
            try:
                payload = check_evaluation(
                    item,
                    record_sid=record.sid,
                    record_kind=kind,
                    policy_sid=None,
                    kind=ErrorKind.PERMANENT,
                )
            except InvalidResponse as error:
                logger.warning("Not importing an evaluation of %s: %s", record.sid, error.message)
                skipped.append(error.message)
                continue
            evaluation, created = rows.import_evaluation(
                record, payload, clock_skew=app_settings.RECONCILE_CLOCK_SKEW
            )
            if created:
                imported.append(evaluation)
    if imported:
        records = type(record).objects.filter(pk=record.pk)
        previous = records.values_list("compliance_status", flat=True).get()
        records.refresh_latest()
        records.refresh_compliance()
        record.refresh_from_db(
            fields=["compliance_status", "compliance_checked_at", "failing_requirements"]
        )
        _send_imported_signals(record, imported, previous)
    return Synced(len(imported), tuple(skipped))


def _send_imported_signals(
    record: CustomerProfile | TrustProduct, imported: list[Evaluation], previous: str
) -> None:
    """The signals an evaluation run here would have fired, for evaluations imported at once:
    each completed, oldest first, and the record's one change of compliance if any."""
    imported.sort(key=lambda evaluation: (evaluation.completed_at, evaluation.pk))
    shown = next(
        (e for e in imported if e.completed_at == record.compliance_checked_at), imported[-1]
    )

    def send() -> None:
        for evaluation in imported:
            signals.evaluation_completed.send(sender=Evaluation, evaluation=evaluation)
        if record.compliance_status != previous:
            signals.send_compliance_changed(
                record, shown, previous=previous, current=record.compliance_status
            )

    transaction.on_commit(send)


def sync_all(
    *, evaluations: bool = False, client: TrustHubClient | None = None
) -> dict[str, Synced]:
    """Sync the policies, the Customer Profiles, the Trust Products and, with ``evaluations``,
    every profile's and Trust Product's evaluations made elsewhere; what each stored and
    skipped, by name."""
    with using_client(client) as trusthub:
        synced = {
            "policies": sync_policies(client=trusthub),
            "customer_profiles": sync_customer_profiles(client=trusthub),
            "trust_products": sync_trust_products(client=trusthub),
        }
        if evaluations:
            imported, skipped = 0, list[str]()
            for model in RECORD_MODELS.values():
                for record in model.objects.iterator():
                    try:
                        one = sync_evaluations(record, client=trusthub)
                    except TrustHubNotFound:
                        # Deleted in TrustHub (the Console, the SDK) since it was imported here.
                        message = f"{record.kind.label} {record.sid} is not in TrustHub any more."
                        logger.warning("Not importing evaluations: %s", message)
                        skipped.append(message)
                        continue
                    imported += one.stored
                    skipped.extend(one.skipped)
            synced["evaluations"] = Synced(imported, tuple(skipped))
    return synced
