"""Query-string filters for the profile and evaluation lists (django-filter)."""

from __future__ import annotations

import datetime
from typing import Any

import django_filters
from django.core.exceptions import ValidationError
from django.db.models import Exists, OuterRef, QuerySet
from django.utils.translation import gettext_lazy as _
from django_filters.fields import IsoDateTimeField
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import extend_schema_field
from rest_framework.request import Request

from trusthub_eval.models import CustomerProfile, Evaluation, RequirementResult
from trusthub_eval.sids import SidKind, sid_validator


def sid_schema(kind: SidKind) -> dict[str, Any]:
    """The OpenAPI schema of a SID of ``kind``, in the pattern syntax OpenAPI uses (ECMA)."""
    return {
        "type": "string",
        "pattern": f"^{kind.value}[0-9a-fA-F]{{32}}$",
        "example": f"{kind.value}{'0123456789abcdef' * 2}",
    }


def _sid_filter_schema(kind: SidKind, filter_: django_filters.Filter) -> None:
    """Describe ``filter_`` by a SID's schema and its label: drf-spectacular takes no label from
    a filter whose schema is given."""
    extend_schema_field({**sid_schema(kind), "description": filter_.label})(filter_)


class CustomerProfileSidFilter(django_filters.CharFilter):  # type: ignore[misc]
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("field_name", "customer_profile__sid")
        super().__init__(validators=[sid_validator(SidKind.CUSTOMER_PROFILE)], **kwargs)
        _sid_filter_schema(SidKind.CUSTOMER_PROFILE, self)


class PolicySidFilter(django_filters.CharFilter):  # type: ignore[misc]
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("field_name", "policy__sid")
        super().__init__(validators=[sid_validator(SidKind.POLICY)], **kwargs)
        _sid_filter_schema(SidKind.POLICY, self)


class UTCIsoDateTimeField(IsoDateTimeField):  # type: ignore[misc]
    """An ISO 8601 time, converted to UTC while it is still input.

    PostgreSQL refuses offsets beyond ±15:59 (``+23:28`` is valid ISO 8601), and a time near
    year 1 or 9999 may not exist in UTC at all; either would fail in the query, as a 500.
    """

    def to_python(self, value: Any) -> datetime.datetime | None:
        parsed: datetime.datetime | None = super().to_python(value)
        if parsed is None:
            return None
        try:
            return parsed.astimezone(datetime.UTC)
        except OverflowError:
            raise ValidationError(self.error_messages["invalid"], code="invalid") from None


class UTCIsoDateTimeFilter(django_filters.IsoDateTimeFilter):  # type: ignore[misc]
    field_class = UTCIsoDateTimeField


class FilterBackend(DjangoFilterBackend):  # type: ignore[misc]
    """django-filter's backend, which spares the app's own FilterSets a query without filters.

    Building and validating the filter form costs a sizeable share of a page's CPU. The
    app's own FilterSets (:data:`APP_FILTERSETS`) require no filter and give none a default:
    without any parameter but the pagination's they return the queryset unchanged, so they
    are not asked. Any other FilterSet, a host's own or a subclass of ours, always runs, since
    it may require a filter or give one a default.
    """

    def filter_queryset(self, request: Request, queryset: QuerySet[Any], view: Any) -> Any:
        filterset_class = self.get_filterset_class(view, queryset)
        if filterset_class is None:
            return queryset
        if filterset_class in APP_FILTERSETS:
            paginator = getattr(view, "paginator", None)
            own = {
                getattr(paginator, "cursor_query_param", None),
                getattr(paginator, "page_size_query_param", None),
            }
            if all(name in own for name in request.query_params):
                return queryset
        return super().filter_queryset(request, queryset, view)


class CustomerProfileFilter(django_filters.FilterSet):  # type: ignore[misc]
    policy = PolicySidFilter(label=_("Profiles of this policy (RN…)."))
    status = django_filters.ChoiceFilter(
        choices=CustomerProfile.Status.choices, label=_("TrustHub's status of the profile.")
    )
    compliance_status = django_filters.ChoiceFilter(
        choices=Evaluation.Status.choices,
        label=_("The verdict of the profile's most recent completed evaluation."),
    )

    class Meta:
        model = CustomerProfile
        fields = ["policy", "status", "compliance_status"]


class EvaluationFilter(django_filters.FilterSet):  # type: ignore[misc]
    customer_profile = CustomerProfileSidFilter(label=_("Evaluations of this profile (BU…)."))
    policy = PolicySidFilter(label=_("Evaluations against this policy (RN…)."))
    status = django_filters.ChoiceFilter(
        choices=Evaluation.Status.choices, label=_("TrustHub's verdict.")
    )
    state = django_filters.ChoiceFilter(
        choices=Evaluation.State.choices, label=_("Where the evaluation is in its life.")
    )
    trigger = django_filters.ChoiceFilter(
        choices=Evaluation.Trigger.choices, label=_("What asked for the evaluation.")
    )
    # Half-open [after, before): consecutive windows neither overlap nor leave gaps.
    requested_after = UTCIsoDateTimeFilter(
        field_name="requested_at",
        lookup_expr="gte",
        label=_("Requested at or after this ISO 8601 time."),
    )
    requested_before = UTCIsoDateTimeFilter(
        field_name="requested_at",
        lookup_expr="lt",
        label=_("Requested before this ISO 8601 time."),
    )
    failing_requirement = django_filters.CharFilter(
        method="filter_failing_requirement",
        max_length=255,
        label=_("Evaluations in which this requirement (its requirement_name) did not pass."),
    )

    class Meta:
        model = Evaluation
        fields = [
            "customer_profile",
            "policy",
            "status",
            "state",
            "trigger",
            "requested_after",
            "requested_before",
            "failing_requirement",
        ]

    def filter_failing_requirement(
        self, queryset: QuerySet[Evaluation], name: str, value: str
    ) -> QuerySet[Evaluation]:
        # EXISTS rather than a join: one row per evaluation however many results match, and
        # it probes the (requirement_name, passed, evaluation) index once per candidate row.
        failing = RequirementResult.objects.filter(
            evaluation=OuterRef("pk"), requirement_name=value, passed=False
        )
        return queryset.filter(Exists(failing))


# The FilterSets FilterBackend need not run on a query without filters (see there).
APP_FILTERSETS = frozenset({CustomerProfileFilter, EvaluationFilter})
