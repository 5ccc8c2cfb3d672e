"""Query-string filters for the profile and evaluation lists (django-filter)."""

from __future__ import annotations

import datetime
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import django_filters
from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db import models
from django.db.models import Exists, OuterRef, QuerySet
from django.utils.translation import gettext_lazy as _
from django_filters.constants import EMPTY_VALUES
from django_filters.fields import IsoDateTimeField
from django_filters.rest_framework import DjangoFilterBackend
from django_filters.utils import translate_validation
from drf_spectacular.utils import extend_schema_field
from rest_framework.request import Request

from trusthub_eval.api import compiled
from trusthub_eval.models import CustomerProfile, Evaluation, RequirementResult
from trusthub_eval.sids import SidKind, sid_validator

Method = TypeVar("Method", bound=Callable[..., Any])


def sid_schema(kind: SidKind) -> dict[str, Any]:
    """The OpenAPI schema of a SID of ``kind``, in the pattern syntax OpenAPI uses (ECMA)."""
    return {
        "type": "string",
        "pattern": f"^{kind.value}[0-9a-fA-F]{{32}}$",
        "example": f"{kind.value}{'0123456789abcdef' * 2}",
    }


@extend_schema_field(sid_schema(SidKind.CUSTOMER_PROFILE))
class CustomerProfileSidFilter(django_filters.CharFilter):  # type: ignore[misc]
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("field_name", "customer_profile__sid")
        super().__init__(validators=[sid_validator(SidKind.CUSTOMER_PROFILE)], **kwargs)


@extend_schema_field(sid_schema(SidKind.POLICY))
class PolicySidFilter(django_filters.CharFilter):  # type: ignore[misc]
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("field_name", "policy__sid")
        super().__init__(validators=[sid_validator(SidKind.POLICY)], **kwargs)


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

    Building and validating the filter form took 0.9 ms of CPU on every page (issue 9). The
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
        # As DjangoFilterBackend, but the filtered queryset may be a list's template, whose SQL
        # is compiled once per combination of filters (trusthub_eval.api.compiled).
        filterset = filterset_class(**self.get_filterset_kwargs(request, queryset, view))
        if not filterset.is_valid() and self.raise_exception:
            raise translate_validation(filterset.errors)
        return filtered(queryset, filterset)


def filtered(queryset: QuerySet[Any], filterset: django_filters.FilterSet) -> QuerySet[Any]:
    """``filterset.qs`` (``filterset`` over ``queryset``), as a list's template if it can be.

    It is one (trusthub_eval.api.compiled) when ``queryset`` is a template with no filters
    yet, the FilterSet applies its filters as django-filter does, and each filter given a value
    is known to take it as one parameter: a plain lookup (exact or a comparison) on a field, or
    a method declared with :func:`parameter`. Otherwise the ORM runs it, as any filtered
    queryset.
    """
    result: QuerySet[Any] = filterset.qs
    filterset_class: Any = type(filterset)
    if (
        not filterset.is_valid()
        or filterset_class._meta.model is not queryset.model
        or any(
            # A FilterSet that makes its filters or filters in its own way.
            getattr(filterset_class, hook) is not getattr(django_filters.FilterSet, hook)
            for hook in ("__init__", "filter_queryset")
        )
    ):
        return result
    filters = []
    for name, value in filterset.form.cleaned_data.items():
        if value in EMPTY_VALUES:
            continue  # a filter without a value leaves the queryset as it is
        declared = filterset.filters[name]
        field = _parameter_field(filterset_class, name)
        if field is None or (
            isinstance(declared, django_filters.ChoiceFilter) and value == declared.null_value
        ):
            return result
        filters.append((name, field, value))
    return compiled.mark_filtered(queryset, result, filterset_class, filters)


def parameter(path: str) -> Callable[[Method], Method]:
    """Declare a FilterSet method's query to depend on its value only as one parameter.

    ``path`` names the field (from the FilterSet's model, following relations) the value is
    compared with, which prepares it. A filtered list may then run from SQL compiled once (see
    :func:`filtered`). Only for a method whose SQL is the same for every value: one that
    branches on its value, or puts it into the SQL text, must not be declared.
    """

    def declare(method: Method) -> Method:
        method.compiled_parameter = path  # type: ignore[attr-defined]
        return method

    return declare


# The lookups whose SQL takes the value as one parameter, as it is.
_PARAMETER_LOOKUPS = frozenset({"exact", "gt", "gte", "lt", "lte"})
_PLAIN_FILTERS = (django_filters.Filter.filter, django_filters.ChoiceFilter.filter)


@functools.lru_cache(maxsize=256)
def _parameter_field(filterset_class: Any, name: str) -> models.Field[Any, Any] | None:
    """The field that prepares the value of the filter ``name``, where its query depends on
    the value only as a parameter; None where that is not known."""
    declared = filterset_class.base_filters.get(name)
    if declared is None:
        return None
    if declared.method is not None:
        method = declared.method
        if isinstance(method, str):
            method = getattr(filterset_class, method, None)
        path = getattr(method, "compiled_parameter", None)
    elif type(declared).filter in _PLAIN_FILTERS and declared.lookup_expr in _PARAMETER_LOOKUPS:
        path = declared.field_name
    else:
        return None
    if not isinstance(path, str):
        return None
    try:
        return compiled.field_of(filterset_class._meta.model, path)
    except FieldDoesNotExist:
        return None


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

    @parameter("requirement_results__requirement_name")
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
