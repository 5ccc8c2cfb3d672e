"""List filters that read no more than they show: no DISTINCT over a table, no payloads."""

from __future__ import annotations

import re
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from trusthub_eval.kinds import RecordKind
from trusthub_eval.models import Evaluation, Policy, Record


class TrustHubStatusFilter(admin.SimpleListFilter):
    """TrustHub's statuses, listed from the code: no SELECT DISTINCT over the table."""

    title = _("TrustHub status")
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(value, str(label)) for value, label in Record.Status.choices]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(status=value) if value else queryset


class ComplianceFilter(admin.SimpleListFilter):
    """The latest verdict, including "never evaluated"."""

    title = _("latest compliance")
    parameter_name = "compliance"
    NEVER = "none"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            *((value, str(label)) for value, label in Evaluation.Status.choices),
            (self.NEVER, gettext("Never evaluated")),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if not value:
            return queryset
        return queryset.filter(compliance_status="" if value == self.NEVER else value)


class PolicyFilter(admin.RelatedFieldListFilter):
    """Every policy (an account has a handful), without reading their requirements and payloads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.empty_value_display = format_html("{}", gettext("No policy"))

    def field_choices(self, field: Any, request: HttpRequest, model_admin: Any) -> Any:
        return [(policy.pk, str(policy)) for policy in Policy.objects.only("sid", "friendly_name")]


class RecordKindFilter(admin.SimpleListFilter):
    """What was evaluated: a Customer Profile or a Trust Product."""

    title = _("what was evaluated")
    parameter_name = "kind"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(value, str(label)) for value, label in RecordKind.choices]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value not in RecordKind.values:
            return queryset
        return queryset.filter(**{f"{RecordKind(value).field}__isnull": False})


class ChosenRecordFilter(admin.RelatedFieldListFilter):
    """A filter on a related record, set by the links of other pages ("History", "its trust
    products"): it shows the chosen record and "All" while one is chosen, and nothing otherwise.
    Every record would make a sidebar too long to read, and a query over a big table."""

    @property
    def include_empty_choice(self) -> bool:
        return False

    def has_output(self) -> bool:
        return self.lookup_val is not None

    def field_choices(self, field: Any, request: HttpRequest, model_admin: Any) -> Any:
        # ASCII digits that fit a bigint; anything else matches no row, and the changelist
        # answers it as a bad filter.
        values = self.lookup_val or ()
        keys = [int(value) for value in values if re.fullmatch(r"[0-9]{1,18}", value)]
        if not keys:
            return []
        chosen = field.related_model._default_manager.filter(pk__in=keys)
        return [(record.pk, str(record)) for record in chosen.only("sid", "friendly_name")]


class BuiltOnFilter(ChosenRecordFilter):
    """Evaluations of the trust products built on the chosen customer profile."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.title = gettext("trust product's customer profile")
