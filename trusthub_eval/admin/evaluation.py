"""The evaluations' admin: the list, each evaluation's results and its diff with the last one."""

from __future__ import annotations

import re
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from trusthub_eval.admin.base import ReadOnlyAdmin, change_url, stored_json
from trusthub_eval.admin.filters import PolicyFilter
from trusthub_eval.admin.views import QueueMixin
from trusthub_eval.diff import compare_with_previous
from trusthub_eval.display import (
    error_code_link,
    evaluation_badge,
    evaluation_duration,
    format_duration,
)
from trusthub_eval.models import CustomerProfile, Evaluation
from trusthub_eval.requirements import invalid_fields
from trusthub_eval.sids import SidKind, is_sid


@admin.register(Evaluation)
class EvaluationAdmin(QueueMixin, ReadOnlyAdmin):
    # Six columns, to fit beside the navigation and the filters at 1,400 px: the badge tells
    # the state, the policy goes under the profile, the trigger under who asked.
    list_display = ["__str__", "profile", "compliance", "requested", "requested_at", "duration"]
    list_filter = ["status", "state", "trigger", ("policy", PolicyFilter)]
    list_select_related = ["customer_profile", "policy", "requested_by"]
    list_defer = ("raw", "customer_profile__raw", "policy__raw", "policy__requirements")
    # Each sortable column needs an index that serves ORDER BY … LIMIT on a million rows.
    sortable_by = ["requested_at"]
    raw_id_fields = ["customer_profile", "policy", "requested_by"]
    search_fields = ["=sid"]
    search_help_text = _(
        "An evaluation (EL…), customer profile (BU…) or policy (RN…) SID, an evaluation "
        "number, or part of a customer profile's name."
    )
    date_hierarchy = "requested_at"
    readonly_fields = ["compliance", "duration", "waited", "error"]
    change_form_template = "trusthub_eval/admin/evaluation/change_form.html"
    change_list_template = "trusthub_eval/admin/evaluation/change_list.html"

    def get_fieldsets(self, request: HttpRequest, obj: Evaluation | None = None) -> Any:
        main = [
            "customer_profile",
            "policy",
            "compliance",
            "state",
            "trigger",
            "requested_by",
            "requested_at",
        ]
        trusthub = ["sid", "date_created"]
        errors = ["error", "error_message"]
        # An error (final, or the last one before a retry) is among the first things to read.
        if obj is not None and (obj.error_code is not None or obj.error_message):
            main += errors
        else:
            trusthub += errors
        # Timing and TrustHub's ids are collapsed (a <details>, no JavaScript): the results
        # below are what people come for.
        return [
            (None, {"fields": main}),
            (
                _("Timing"),
                {
                    "fields": ["waited", "started_at", "completed_at", "duration", "attempts"],
                    "classes": ["collapse"],
                },
            ),
            (_("TrustHub"), {"fields": trusthub, "classes": ["collapse"]}),
        ]

    @admin.display(description=_("customer profile and policy"))
    def profile(self, evaluation: Evaluation) -> SafeString:
        record = evaluation.record
        return format_html(
            '<a href="{}">{}</a><div class="trusthub-quiet">{}</div>',
            change_url(record),
            record,
            evaluation.policy,
        )

    @admin.display(description=_("requested by"))
    def requested(self, evaluation: Evaluation) -> SafeString | str:
        trigger = evaluation.get_trigger_display()
        if evaluation.requested_by is None:
            return trigger
        who = evaluation.requested_by
        return format_html('{}<div class="trusthub-quiet">{}</div>', who, trigger)

    @admin.display(description=_("compliance"))
    def compliance(self, evaluation: Evaluation) -> SafeString:
        return evaluation_badge(evaluation)

    @admin.display(description=_("duration"))
    def duration(self, evaluation: Evaluation) -> str:
        return evaluation_duration(evaluation)

    @admin.display(description=_("waited"))
    def waited(self, evaluation: Evaluation) -> str:
        return format_duration(evaluation.waited)

    @admin.display(description=_("error code"))
    def error(self, evaluation: Evaluation) -> SafeString | str:
        return error_code_link(evaluation.error_code) or self.get_empty_value_display()

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Evaluation], search_term: str
    ) -> tuple[QuerySet[Evaluation], bool]:
        # One indexed lookup per kind of term: the admin's default ORs every search field
        # together (across a join), which reads all million rows.
        term = search_term.strip()
        if not term:
            return queryset, False
        if is_sid(term, SidKind.EVALUATION):
            return queryset.filter(sid=term), False
        if is_sid(term, SidKind.CUSTOMER_PROFILE):
            return queryset.filter(customer_profile__sid=term), False
        if is_sid(term, SidKind.POLICY):
            return queryset.filter(policy__sid=term), False
        number = term.removeprefix("#")
        # ASCII digits only: "²" is a digit to isdigit() but not to int(), "٣" is one to both.
        if re.fullmatch(r"[0-9]{1,18}", number):  # beyond that, no bigint
            return queryset.filter(pk=int(number)), False
        profiles = CustomerProfile.objects.filter(friendly_name__icontains=term).values("pk")
        return queryset.filter(customer_profile__in=profiles), False

    def object_context(self, request: HttpRequest, obj: Evaluation) -> dict[str, Any]:
        return self.evaluation_context(obj)

    def evaluation_context(self, evaluation: Evaluation) -> dict[str, Any]:
        """Results per requirement, and the comparison with the previous evaluation."""
        results = list(evaluation.requirement_results.order_by("position"))
        comparison = compare_with_previous(evaluation, results)
        previous, diff = comparison.previous, comparison.diff
        diff_groups = None
        if diff is not None:
            diff_groups = [
                (_("Newly failing"), diff.newly_failing, "noncompliant"),
                (_("Fixed"), diff.fixed, "compliant"),
                (_("Unchanged"), diff.unchanged, "unchanged"),
            ]
        return {
            "results": [
                {"result": result, "invalid": invalid_fields(result.invalid)} for result in results
            ],
            "failing_count": sum(1 for result in results if not result.passed),
            "previous": previous,
            "diff": diff,
            "diff_groups": diff_groups,
            "raw_json": stored_json(evaluation),
        }
