"""Per-model queries: upserts of TrustHub's records, lookups, and the profile's denormalised
latest evaluation and compliance. The evaluation row's transitions (claim, record, sweep) are
the reliability protocol's, in :mod:`trusthub_eval.queue`. No model is imported here: a query
that needs another model reaches it through its relation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from django.db import connection, models, transaction
from django.db.models import Count, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from trusthub_eval.payloads import parse_twilio_datetime

if TYPE_CHECKING:
    from trusthub_eval.models import (
        Evaluation,
        Policy,
        RequirementResult,
    )


def _related(model: type[models.Model], name: str) -> Any:
    """The model at the other end of ``model``'s relation ``name``."""
    return model._meta.get_field(name).related_model


def _text(value: object) -> str:
    return "" if value is None else str(value)


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


_Record = TypeVar("_Record", bound=models.Model)


class RecordQuerySet(models.QuerySet[_Record]):
    """The queries of both kinds of record (:class:`trusthub_eval.models.Record`)."""

    def upsert_from_payload(self, payload: Mapping[str, Any]) -> _Record:
        """Create or update the record TrustHub describes in ``payload``.

        A date that is no real instant (see :func:`parse_twilio_datetime`) is stored as unknown,
        None: the dates only inform, while skipping the profile would leave it unevaluated. The
        text TrustHub sent stays in ``raw``.
        """
        policy_model = _related(self.model, "policy")
        policy_sid = payload.get("policy_sid")
        with transaction.atomic():
            policy = policy_model.objects.for_sid(policy_sid) if policy_sid else None
            record, _ = self.update_or_create(
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
        return record

    def lock_for_queueing(self) -> None:
        """Take these records' row locks, in key order, before queueing evaluations of them.

        Needed on MySQL and MariaDB only. There, inserting an evaluation takes a shared lock on
        its profile (the foreign key check) and pointing the profile at the new evaluation then
        needs an exclusive one: two concurrent requests for one profile deadlock. Waiting for
        the first request's lock instead, the second meets its evaluation in the in-flight
        constraint. PostgreSQL's foreign key lock does not conflict with that update, and SQLite
        writes one transaction at a time. Call inside the transaction that queues.
        """
        if connection.vendor == "mysql":
            list(self.order_by("pk").select_for_update().values_list("pk", flat=True))

    def with_latest_evaluation(self) -> RecordQuerySet[_Record]:
        """Records with their latest evaluation and policy joined in, for lists."""
        return self.select_related("policy", "latest_evaluation")

    def _evaluations_of(self) -> Any:
        """The evaluations of the outer query's record (for a subquery)."""
        relation: Any = self.model._meta.get_field("evaluations")
        return relation.related_model.objects.filter(**{relation.field.name: OuterRef("pk")})

    def refresh_latest(self) -> int:
        """Point each record at its most recently requested evaluation; one UPDATE."""
        newest = self._evaluations_of().order_by("-requested_at", "-id")
        return self.update(latest_evaluation=Subquery(newest.values("id")[:1]))

    def refresh_compliance(self) -> int:
        """Set each record's compliance from its newest completed evaluation; one UPDATE."""
        evaluations = self._evaluations_of()
        newest = evaluations.filter(state=evaluations.model.State.COMPLETED).order_by(
            "-completed_at", "-id"
        )
        return self.update(
            compliance_status=Coalesce(Subquery(newest.values("status")[:1]), Value("")),
            compliance_checked_at=Subquery(newest.values("completed_at")[:1]),
            failing_requirements=Coalesce(
                Subquery(newest.with_failing_count().values("failing_count")[:1]),
                Value(0),
            ),
        )


# Its name from before Trust Products, kept for hosts that import it.
CustomerProfileQuerySet = RecordQuerySet


class EvaluationQuerySet(models.QuerySet["Evaluation"]):
    def active(self) -> EvaluationQuerySet:
        """Evaluations queued or running."""
        return self.filter(state__in=self.model.ACTIVE_STATES)

    def with_failing_count(self) -> EvaluationQuerySet:
        """Annotate ``failing_count``: how many requirements failed, by a subquery per row."""
        failing = (
            _related(self.model, "requirement_results")
            .objects.filter(evaluation=OuterRef("pk"), passed=False)
            .order_by()
            .values("evaluation")
            .annotate(n=Count("pk"))
            .values("n")
        )
        return self.annotate(failing_count=Coalesce(Subquery(failing), Value(0)))


class RequirementResultQuerySet(models.QuerySet["RequirementResult"]):
    def failing(self) -> RequirementResultQuerySet:
        return self.filter(passed=False)

    def build_from_payload(
        self, evaluation: Evaluation, payload: Mapping[str, Any]
    ) -> list[RequirementResult]:
        """Unsaved rows for each item of a checked evaluation's ``results``.

        ``payload`` has passed :func:`trusthub_eval.payloads.check_evaluation`.
        """
        return [self.model(evaluation=evaluation, **row) for row in self.rows_from_payload(payload)]

    @staticmethod
    def rows_from_payload(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The field values of each requirement row of a checked evaluation, by field name."""
        return [
            {
                "position": position,
                "requirement_name": _text(item.get("requirement_name")),
                "requirement_friendly_name": _text(item.get("requirement_friendly_name")),
                "friendly_name": _text(item.get("friendly_name")),
                "object_type": _text(item.get("object_type")),
                "passed": item["passed"],
                "failure_reason": _text(item.get("failure_reason")),
                "error_code": item.get("error_code"),
                "valid": item.get("valid") or [],
                "invalid": item.get("invalid") or [],
            }
            for position, item in enumerate(payload["results"])
        ]
