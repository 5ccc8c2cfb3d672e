"""Query-string filters for the record and evaluation lists (django-filter)."""

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

from trusthub_eval.kinds import RecordKind
from trusthub_eval.models import (
    CustomerProfile,
    Evaluation,
    Record,
    RequirementResult,
    TrustProduct,
)
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


class RecordSidFilter(django_filters.CharFilter):  # type: ignore[misc]
    """A SID of a record of ``kind`` (both kinds' are BU…), named by its kind in messages; by
    default that of the evaluation's record of that kind."""

    def __init__(self, kind: RecordKind, **kwargs: Any) -> None:
        kwargs.setdefault("field_name", f"{kind.field}__sid")
        super().__init__(validators=[kind.sid_validator], **kwargs)
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


class RecordFilter(django_filters.FilterSet):  # type: ignore[misc]
    # The filters of both kinds' lists; each kind's FilterSet names its model. A comment, not
    # a docstring, as on the serializers.
    policy = PolicySidFilter(label=_("Those of this policy (RN…)."))
    status = django_filters.ChoiceFilter(
        choices=Record.Status.choices, label=_("TrustHub's status of the record.")
    )
    compliance_status = django_filters.ChoiceFilter(
        choices=Evaluation.Status.choices,
        label=_("The verdict of the record's most recent completed evaluation."),
    )

    class Meta:
        fields = ["policy", "status", "compliance_status"]


class CustomerProfileFilter(RecordFilter):
    class Meta(RecordFilter.Meta):
        model = CustomerProfile


class TrustProductFilter(RecordFilter):
    customer_profile = RecordSidFilter(
        RecordKind.CUSTOMER_PROFILE, label=_("Those built on this Customer Profile (BU…).")
    )

    class Meta(RecordFilter.Meta):
        model = TrustProduct
        fields = [*RecordFilter.Meta.fields, "customer_profile"]


# Each kind's list's FilterSet (the bulk trigger's filters too).
RECORD_FILTERS: dict[RecordKind, type[RecordFilter]] = {
    RecordKind.CUSTOMER_PROFILE: CustomerProfileFilter,
    RecordKind.TRUST_PRODUCT: TrustProductFilter,
}


class EvaluationFilter(django_filters.FilterSet):  # type: ignore[misc]
    kind = django_filters.ChoiceFilter(
        choices=RecordKind.choices,
        method="filter_kind",
        label=_("Evaluations of Customer Profiles, or of Trust Products."),
    )
    customer_profile = RecordSidFilter(
        RecordKind.CUSTOMER_PROFILE, label=_("Evaluations of this Customer Profile (BU…).")
    )
    trust_product = RecordSidFilter(
        RecordKind.TRUST_PRODUCT, label=_("Evaluations of this Trust Product (BU…).")
    )
    built_on = RecordSidFilter(
        RecordKind.CUSTOMER_PROFILE,
        field_name="trust_product__customer_profile__sid",
        label=_(
            "Evaluations of the Trust Products built on this Customer Profile (BU…), not of "
            "the profile itself."
        ),
    )
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
            "kind",
            "customer_profile",
            "trust_product",
            "built_on",
            "policy",
            "status",
            "state",
            "trigger",
            "requested_after",
            "requested_before",
            "failing_requirement",
        ]

    def filter_kind(
        self, queryset: QuerySet[Evaluation], name: str, value: str
    ) -> QuerySet[Evaluation]:
        return queryset.filter(**{f"{RecordKind(value).field}__isnull": False})

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
APP_FILTERSETS = frozenset({*RECORD_FILTERS.values(), EvaluationFilter})
