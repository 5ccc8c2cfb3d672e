"""List pages as plain rows: the columns each list reads and the JSON objects it writes.

DRF's serializers build their fields on every request and then read and convert each value
through them; for a page of 50 evaluations that took a quarter of the request's CPU time
(issue 9). A list page instead selects the columns it shows as tuples and writes each object
here, directly. The serializers stay the contract: the OpenAPI schema is made from them,
detail views and triggers answer through them, and the tests compare each list's output with
theirs, field by field.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

from django.contrib.auth import get_user_model
from django.db.models import Model, QuerySet
from rest_framework import ISO_8601, serializers
from rest_framework.request import Request
from rest_framework.settings import api_settings

from trusthub_eval.api import compiled
from trusthub_eval.api.permissions import can_view
from trusthub_eval.api.serializers import (
    NAMESPACE,
    CustomerProfileSerializer,
    EvaluationSerializer,
    PolicySerializer,
    url_writer,
)
from trusthub_eval.models import CustomerProfile, Evaluation, Policy

Writer = Callable[[Any], Any]
_querysets: dict[type[Rows], QuerySet[Any, Any]] = {}


# DRF's own field, whose settings the writer follows. It keeps nothing of a request (it reads
# its format and time zone from the settings when asked), so one serves every page.
_DATETIME_FIELD = serializers.DateTimeField()


def datetime_writer() -> Writer:
    """DRF's ``DateTimeField.to_representation``, with its settings looked up once per page."""
    field = _DATETIME_FIELD
    output_format = getattr(field, "format", api_settings.DATETIME_FORMAT)
    zone = field.default_timezone()
    if zone is None or not isinstance(output_format, str) or output_format.lower() != ISO_8601:
        # USE_TZ off or another DATETIME_FORMAT: rare enough to leave to DRF itself.
        return field.to_representation

    # Rows come in UTC (Django's database backends give aware times in UTC), and in UTC they
    # stay: then astimezone() would change nothing but the time taken.
    utc = zone is datetime.UTC or getattr(zone, "key", None) in ("UTC", "Etc/UTC")

    def write(value: datetime.datetime | None) -> str | None:
        if not value:
            return None
        if value.tzinfo is None:
            return field.to_representation(value)
        if not (utc and value.tzinfo is datetime.UTC):
            value = value.astimezone(zone)
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text

    return write


class Rows:
    """The rows of one list: the columns a page selects, and the object written for each row."""

    model: ClassVar[type[Model]]
    # The serializer whose output write() is: a view writes rows only while it uses this one.
    serializer_class: ClassVar[type[serializers.BaseSerializer[Any]]]

    def __init__(self, request: Request, format: str | None = None) -> None:
        self.request = request
        self.format = format
        self.when = datetime_writer()

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        """What to select, in the order write() unpacks; the list's ordering fields among them."""
        raise NotImplementedError

    @classmethod
    def queryset(cls) -> QuerySet[Any, Any]:
        """All rows with these columns, as named tuples; ``.all()`` it, as DRF views do.

        Built once per list: resolving the columns' joins took 0.3 ms of CPU on every page.
        Like a view's ``queryset`` attribute it is never evaluated itself, only its copies.
        """
        cached = _querysets.get(cls)
        if cached is None:
            cached = cls.model._default_manager.values_list(*cls.columns(), named=True)
            _querysets[cls] = cached
        return cached

    @classmethod
    def where(cls, **conditions: Any) -> QuerySet[Any, Any]:
        """The rows matching the exact ``conditions``, as a list's pages read them.

        A copy of :meth:`queryset`, filtered, which the pagination may run from SQL compiled
        once for the list (see trusthub_eval.api.compiled) as long as nothing else filters it.
        """
        return compiled.mark(cls.queryset(), **conditions)

    @classmethod
    def reads(cls, rows: Sequence[Any]) -> bool:
        """Whether ``rows`` have this list's columns (as :meth:`where` selects them), which
        write() takes; a view's own queryset of model instances, say, does not."""
        return not rows or getattr(rows[0], "_fields", None) == cls.columns()

    def url(self, basename: str, lookup_url_kwarg: str) -> Writer:
        return url_writer(f"{NAMESPACE}:{basename}", lookup_url_kwarg, self.request, self.format)

    def write(self, rows: Iterable[Any]) -> list[dict[str, Any]]:
        raise NotImplementedError


class EvaluationRows(Rows):
    """What ``EvaluationSerializer`` writes for each evaluation."""

    model = Evaluation
    serializer_class = EvaluationSerializer

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        return (
            "id",
            "sid",
            "customer_profile__sid",
            "policy__sid",
            "status",
            "state",
            "trigger",
            "requested_by",
            # The serializer shows get_username(), which is this field's value.
            f"requested_by__{get_user_model().USERNAME_FIELD}",
            "requested_at",
            "started_at",
            "completed_at",
            "date_created",
            "attempts",
            "error_code",
            "error_message",
        )

    def write(self, rows: Iterable[Any]) -> list[dict[str, Any]]:
        url, when = self.url("evaluation-detail", "pk"), self.when
        return [
            {
                "id": id_,
                "url": url(id_),
                "sid": sid,
                "customer_profile": profile,
                "policy": policy,
                "status": status,
                "state": state,
                "trigger": trigger,
                "requested_by": None if user_id is None else username,
                "requested_at": when(requested_at),
                "started_at": when(started_at),
                "completed_at": when(completed_at),
                "date_created": when(date_created),
                "attempts": attempts,
                "error_code": error_code,
                "error_message": error_message,
            }
            for (
                id_,
                sid,
                profile,
                policy,
                status,
                state,
                trigger,
                user_id,
                username,
                requested_at,
                started_at,
                completed_at,
                date_created,
                attempts,
                error_code,
                error_message,
            ) in rows
        ]


class CustomerProfileRows(Rows):
    """What ``CustomerProfileSerializer`` writes for each profile, its latest evaluation nested."""

    model = CustomerProfile
    serializer_class = CustomerProfileSerializer

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        return (
            "sid",
            "account_sid",
            "friendly_name",
            "email",
            "status",
            "policy__sid",
            "valid_until",
            "date_created",
            "date_updated",
            "synced_at",
            "compliance_status",
            "compliance_checked_at",
            "failing_requirements",
            "latest_evaluation__id",
            "latest_evaluation__status",
            "latest_evaluation__state",
            "latest_evaluation__requested_at",
            "latest_evaluation__completed_at",
        )

    def write(self, rows: Iterable[Any]) -> list[dict[str, Any]]:
        when = self.when
        url = self.url("customerprofile-detail", "sid")
        evaluations_url = self.url("customerprofile-evaluations", "sid")
        evaluation_url = self.url("evaluation-detail", "pk")
        written = [
            {
                "url": url(sid),
                "sid": sid,
                "account_sid": account_sid,
                "friendly_name": friendly_name,
                "email": email,
                "status": status,
                "policy": policy,
                "valid_until": when(valid_until),
                "date_created": when(date_created),
                "date_updated": when(date_updated),
                "synced_at": when(synced_at),
                # The model keeps "" for "never evaluated"; the API says null (VerdictField).
                "compliance_status": compliance_status or None,
                "compliance_checked_at": when(compliance_checked_at),
                "failing_requirements": failing_requirements,
                "latest_evaluation": None
                if latest_id is None
                else {
                    "id": latest_id,
                    "url": evaluation_url(latest_id),
                    "status": latest_status,
                    "state": latest_state,
                    "requested_at": when(latest_requested_at),
                    "completed_at": when(latest_completed_at),
                },
                "evaluations_url": evaluations_url(sid),
            }
            for (
                sid,
                account_sid,
                friendly_name,
                email,
                status,
                policy,
                valid_until,
                date_created,
                date_updated,
                synced_at,
                compliance_status,
                compliance_checked_at,
                failing_requirements,
                latest_id,
                latest_status,
                latest_state,
                latest_requested_at,
                latest_completed_at,
            ) in rows
        ]
        # As CustomerProfileSerializer leaves it out (see shows_evaluations there).
        if not can_view(self.request.user, Evaluation):
            for profile in written:
                del profile["latest_evaluation"]
        return written


class PolicyRows(Rows):
    """What ``PolicySerializer`` writes for each policy."""

    model = Policy
    serializer_class = PolicySerializer

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        return ("sid", "friendly_name", "requirements", "synced_at")

    def write(self, rows: Iterable[Any]) -> list[dict[str, Any]]:
        url, when = self.url("policy-detail", "sid"), self.when
        return [
            {
                "url": url(sid),
                "sid": sid,
                "friendly_name": friendly_name,
                "requirements": requirements,
                "synced_at": when(synced_at),
            }
            for sid, friendly_name, requirements, synced_at in rows
        ]
