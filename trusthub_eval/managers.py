"""QuerySets that hold the app's persistence logic: upserts, claims, recorded outcomes."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from django.db import connection, models, transaction
from django.db.models import Count, F, OuterRef, Q, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.dateparse import parse_datetime

if TYPE_CHECKING:
    from trusthub_eval.models import CustomerProfile, Evaluation, Policy, RequirementResult


def parse_twilio_datetime(value: object) -> datetime.datetime | None:
    """TrustHub's ISO 8601 timestamps (``2020-04-28T18:14:01Z``), or None."""
    if not isinstance(value, str) or not value:
        return None
    parsed = parse_datetime(value)
    if parsed is not None and timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed, datetime.UTC)
    return parsed


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool) or value in (None, ""):
        return None
    try:
        return int(value)  # type: ignore[call-overload, no-any-return]
    except (TypeError, ValueError):
        return None


class PolicyQuerySet(models.QuerySet["Policy"]):
    def upsert_from_payload(self, payload: Mapping[str, Any]) -> Policy:
        """Create or update the policy TrustHub describes in ``payload``."""
        policy, _ = self.update_or_create(
            sid=payload["sid"],
            defaults={
                "friendly_name": _text(payload.get("friendly_name")),
                "requirements": payload.get("requirements"),
                "raw": dict(payload),
                "synced_at": timezone.now(),
            },
        )
        return policy

    def for_sid(self, sid: str) -> Policy:
        """The policy with ``sid``, creating a placeholder until it is synced."""
        policy, _ = self.get_or_create(sid=sid)
        return policy


class CustomerProfileQuerySet(models.QuerySet["CustomerProfile"]):
    def upsert_from_payload(self, payload: Mapping[str, Any]) -> CustomerProfile:
        """Create or update the customer profile TrustHub describes in ``payload``."""
        from trusthub_eval.models import Policy

        policy_sid = payload.get("policy_sid")
        with transaction.atomic():
            policy = Policy.objects.for_sid(policy_sid) if policy_sid else None
            profile, _ = self.update_or_create(
                sid=payload["sid"],
                defaults={
                    "account_sid": _text(payload.get("account_sid")),
                    "friendly_name": _text(payload.get("friendly_name")),
                    "email": _text(payload.get("email")),
                    "status": _text(payload.get("status")),
                    "policy": policy,
                    "valid_until": parse_twilio_datetime(payload.get("valid_until")),
                    "date_created": parse_twilio_datetime(payload.get("date_created")),
                    "date_updated": parse_twilio_datetime(payload.get("date_updated")),
                    "raw": dict(payload),
                    "synced_at": timezone.now(),
                },
            )
        return profile

    def lock_for_queueing(self) -> None:
        """Take these profiles' row locks, in key order, before queueing evaluations of them.

        Needed on MySQL and MariaDB only. There, inserting an evaluation takes a shared lock on
        its profile (the foreign key check) and pointing the profile at the new evaluation then
        needs an exclusive one: two concurrent requests for one profile deadlock. Waiting for
        the first request's lock instead, the second meets its evaluation in the in-flight
        constraint. PostgreSQL's foreign key lock does not conflict with that update, and SQLite
        writes one transaction at a time. Call inside the transaction that queues.
        """
        if connection.vendor == "mysql":
            list(self.order_by("pk").select_for_update().values_list("pk", flat=True))

    def with_latest_evaluation(self) -> CustomerProfileQuerySet:
        """Profiles with their latest evaluation and policy joined in, for lists."""
        return self.select_related("policy", "latest_evaluation")

    def refresh_latest(self) -> int:
        """Point each profile at its most recently requested evaluation; one UPDATE."""
        from trusthub_eval.models import Evaluation

        newest = Evaluation.objects.filter(customer_profile=OuterRef("pk")).order_by(
            "-requested_at", "-id"
        )
        return self.update(latest_evaluation=Subquery(newest.values("id")[:1]))

    def refresh_compliance(self) -> int:
        """Set each profile's compliance from its newest completed evaluation; one UPDATE."""
        from trusthub_eval.models import Evaluation

        newest = Evaluation.objects.filter(
            customer_profile=OuterRef("pk"), state=Evaluation.State.COMPLETED
        ).order_by("-completed_at", "-id")
        return self.update(
            compliance_status=Coalesce(Subquery(newest.values("status")[:1]), Value("")),
            compliance_checked_at=Subquery(newest.values("completed_at")[:1]),
            failing_requirements=Coalesce(
                # django-stubs cannot see the annotation through the custom queryset method.
                Subquery(newest.with_failing_count().values("failing_count")[:1]),  # type: ignore[misc]
                Value(0),
            ),
        )


class EvaluationQuerySet(models.QuerySet["Evaluation"]):
    def active(self) -> EvaluationQuerySet:
        """Evaluations queued or running."""
        return self.filter(state__in=self.model.ACTIVE_STATES)

    def queue_many(
        self, pairs: Mapping[int, int], *, trigger: str, requested_by_id: int | None
    ) -> list[int]:
        """Queue an evaluation per (profile id -> policy id) not already in flight.

        Returns the new evaluations' ids and points each profile at its new one. Call inside a
        transaction. The unique constraint on in-flight evaluations decides which pairs are busy,
        so a concurrent request can never make it fail or queue a duplicate. On PostgreSQL this
        is one statement, whatever the number of profiles; elsewhere a few.
        """
        if not pairs:
            return []
        now = timezone.now()
        if connection.vendor == "postgresql":
            return self._queue_many_postgresql(pairs, now, trigger, requested_by_id)
        from trusthub_eval.models import CustomerProfile

        CustomerProfile.objects.filter(pk__in=list(pairs)).lock_for_queueing()
        # INSERT IGNORE (MySQL, MariaDB) or INSERT OR IGNORE (SQLite): a pair already in flight,
        # even one queued by a concurrent request a moment ago, is skipped by the constraint.
        self.bulk_create(
            [
                self.model(
                    customer_profile_id=profile_id,
                    policy_id=policy_id,
                    trigger=trigger,
                    requested_by_id=requested_by_id,
                    requested_at=now,
                )
                for profile_id, policy_id in pairs.items()
            ],
            ignore_conflicts=True,
        )
        # An ignoring insert reports no ids: ours are the rows stamped with this request's
        # time (to the microsecond), trigger and user.
        ours = self.filter(requested_at=now, trigger=trigger, requested_by_id=requested_by_id)
        ids = list(ours.order_by("id").values_list("id", flat=True))
        CustomerProfile.objects.filter(pk__in=ours.values("customer_profile_id")).refresh_latest()
        return ids

    def _queue_many_postgresql(
        self,
        pairs: Mapping[int, int],
        now: datetime.datetime,
        trigger: str,
        requested_by_id: int | None,
    ) -> list[int]:
        from trusthub_eval.models import CustomerProfile

        evaluation = self.model._meta
        profile = CustomerProfile._meta
        column = {f.name: f.column for f in evaluation.concrete_fields}
        sql = f"""
            WITH new AS (
                INSERT INTO {evaluation.db_table} (
                    {column["customer_profile"]}, {column["policy"]}, {column["state"]},
                    {column["trigger"]}, {column["requested_by"]}, {column["requested_at"]},
                    {column["attempts"]}, {column["error_message"]}
                )
                SELECT pair.profile_id, pair.policy_id, %s, %s, %s, %s, 0, ''
                FROM unnest(%s::bigint[], %s::bigint[]) AS pair(profile_id, policy_id)
                ORDER BY pair.profile_id
                ON CONFLICT (
                    {column["customer_profile"]}, {column["policy"]}, {column["in_flight"]}
                ) DO NOTHING
                RETURNING id, {column["customer_profile"]} AS profile_id
            ), latest AS (
                UPDATE {profile.db_table} AS profile
                SET {profile.get_field("latest_evaluation").column} = new.id
                FROM new WHERE profile.{profile.pk.column} = new.profile_id
            )
            SELECT id FROM new ORDER BY id
        """  # noqa: S608 (identifiers come from our own model metadata, values are parameters)
        params = [
            self.model.State.QUEUED,
            trigger,
            requested_by_id,
            now,
            list(pairs.keys()),
            list(pairs.values()),
        ]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return [row[0] for row in cursor.fetchall()]

    def with_failing_count(self) -> EvaluationQuerySet:
        """Annotate ``failing_count``: how many requirements failed, by a subquery per row."""
        from trusthub_eval.models import RequirementResult

        failing = (
            RequirementResult.objects.filter(evaluation=OuterRef("pk"), passed=False)
            .order_by()
            .values("evaluation")
            .annotate(n=Count("pk"))
            .values("n")
        )
        return self.annotate(failing_count=Coalesce(Subquery(failing), Value(0)))

    def claim(self, evaluation_id: int, *, running_timeout: float) -> Evaluation | None:
        """Atomically mark a queued evaluation as running and return it; None if not ours.

        A row left running longer than ``running_timeout`` seconds (its worker died) may be
        claimed again. ``started_at`` doubles as the claim's fencing token: whoever stores the
        outcome must still hold the same value.
        """
        now = timezone.now()
        stale = now - datetime.timedelta(seconds=running_timeout)
        claimed = (
            self.filter(pk=evaluation_id)
            .filter(
                Q(state=self.model.State.QUEUED)
                | Q(state=self.model.State.RUNNING, started_at__lt=stale)
            )
            .update(state=self.model.State.RUNNING, started_at=now, attempts=F("attempts") + 1)
        )
        if not claimed:
            return None
        return self.select_related("customer_profile", "policy").get(pk=evaluation_id)

    def _held(self, evaluation: Evaluation) -> EvaluationQuerySet:
        return self.filter(
            pk=evaluation.pk, state=self.model.State.RUNNING, started_at=evaluation.started_at
        )

    def mark_posting(self, evaluation: Evaluation) -> bool:
        """Note that a POST is about to be sent; False if the claim was lost meanwhile."""
        evaluation.posted_at = timezone.now()
        return bool(self._held(evaluation).update(posted_at=evaluation.posted_at))

    def release_for_retry(
        self,
        evaluation: Evaluation,
        *,
        error_code: int | None,
        error_message: str,
        posted: bool,
        count_attempt: bool = True,
    ) -> bool:
        """Put a running evaluation back in the queue after a transient error.

        ``posted`` says whether TrustHub may have processed the POST (an ambiguous error): if
        not, the reconciliation mark is cleared. ``count_attempt=False`` gives the attempt back
        (nothing reached TrustHub, e.g. while waiting for a concurrency slot).
        """
        fields: dict[str, Any] = {
            "state": self.model.State.QUEUED,
            "error_code": error_code,
            "error_message": error_message,
        }
        if not posted:
            fields["posted_at"] = None
        if not count_attempt:
            fields["attempts"] = F("attempts") - 1
            evaluation.attempts -= 1
        return bool(self._held(evaluation).update(**fields))

    def record_failure(
        self, evaluation: Evaluation, *, error_code: int | None, error_message: str
    ) -> bool:
        """Mark a running evaluation failed for good; False if the claim was lost meanwhile."""
        now = timezone.now()
        updated = self._held(evaluation).update(
            state=self.model.State.FAILED,
            completed_at=now,
            error_code=error_code,
            error_message=error_message,
        )
        if updated:
            evaluation.state = self.model.State.FAILED
            evaluation.completed_at = now
            evaluation.error_code = error_code
            evaluation.error_message = error_message
        return bool(updated)

    def record_result(self, evaluation: Evaluation, payload: Mapping[str, Any]) -> bool:
        """Store TrustHub's answer on a running evaluation, with one row per requirement.

        Returns False (and stores nothing) if the claim was lost meanwhile.
        """
        from trusthub_eval.models import CustomerProfile, RequirementResult

        now = timezone.now()
        fields = {
            "sid": payload.get("sid"),
            "status": payload.get("status"),
            "date_created": parse_twilio_datetime(payload.get("date_created")),
            "raw": dict(payload),
            "state": self.model.State.COMPLETED,
            "completed_at": now,
            "posted_at": None,
            "error_code": None,
            "error_message": "",
        }
        with transaction.atomic():
            if not self._held(evaluation).update(**fields):
                return False
            for name, value in fields.items():
                setattr(evaluation, name, value)
            RequirementResult.objects.bulk_create(
                RequirementResult.objects.build_from_payload(evaluation, payload)
            )
            CustomerProfile.objects.filter(pk=evaluation.customer_profile_id).refresh_compliance()
        return True

    def import_from_payload(
        self, profile: CustomerProfile, payload: Mapping[str, Any]
    ) -> tuple[Evaluation, bool]:
        """Store an evaluation TrustHub already has (made elsewhere); no-op if known."""
        from trusthub_eval.models import Policy, RequirementResult

        with transaction.atomic():
            policy = Policy.objects.for_sid(payload["policy_sid"])
            when = parse_twilio_datetime(payload.get("date_created")) or timezone.now()
            evaluation, created = self.get_or_create(
                sid=payload["sid"],
                defaults={
                    "customer_profile": profile,
                    "policy": policy,
                    "status": payload.get("status"),
                    "state": self.model.State.COMPLETED,
                    "trigger": self.model.Trigger.SYNC,
                    "requested_at": when,
                    "completed_at": when,
                    "date_created": when,
                    "raw": dict(payload),
                },
            )
            if created:
                RequirementResult.objects.bulk_create(
                    RequirementResult.objects.build_from_payload(evaluation, payload)
                )
        return evaluation, created


class RequirementResultQuerySet(models.QuerySet["RequirementResult"]):
    def failing(self) -> RequirementResultQuerySet:
        return self.filter(passed=False)

    def build_from_payload(
        self, evaluation: Evaluation, payload: Mapping[str, Any]
    ) -> list[RequirementResult]:
        """Unsaved rows for each item of the evaluation's ``results`` (which may be null)."""
        items: Iterable[Any] = payload.get("results") or []
        rows = []
        for position, item in enumerate(items):
            if not isinstance(item, Mapping):
                continue
            rows.append(
                self.model(
                    evaluation=evaluation,
                    position=position,
                    requirement_name=_text(item.get("requirement_name")),
                    requirement_friendly_name=_text(item.get("requirement_friendly_name")),
                    friendly_name=_text(item.get("friendly_name")),
                    object_type=_text(item.get("object_type")),
                    passed=bool(item.get("passed")),
                    failure_reason=_text(item.get("failure_reason")),
                    error_code=_int_or_none(item.get("error_code")),
                    valid=item.get("valid") or [],
                    invalid=item.get("invalid") or [],
                )
            )
        return rows
