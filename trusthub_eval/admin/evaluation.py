"""The evaluations' admin: the list, each evaluation's results and its diff with the last one."""

from __future__ import annotations

import re
from typing import Any

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from trusthub_eval.admin.base import (
    EVALUATION_PAYLOADS,
    ReadOnlyAdmin,
    change_url,
    stored_json,
)
from trusthub_eval.admin.filters import (
    BuiltOnFilter,
    ChosenRecordFilter,
    PolicyFilter,
    RecordKindFilter,
)
from trusthub_eval.admin.views import QueueMixin
from trusthub_eval.diff import compare_with_previous
from trusthub_eval.display import (
    error_code_link,
    evaluation_badge,
    evaluation_duration,
    format_duration,
)
from trusthub_eval.kinds import RecordKind
from trusthub_eval.models import RECORD_MODELS, Evaluation
from trusthub_eval.requirements import invalid_fields
from trusthub_eval.sids import SidKind, is_sid

# A search reads at most this many keys of the records it matches (of each kind).
SEARCH_KEYS = 1000


@admin.register(Evaluation)
class EvaluationAdmin(QueueMixin, ReadOnlyAdmin):
    # Six columns, to fit beside the navigation and the filters at 1,400 px: the badge tells
    # the state, the kind and the policy go under the record, the trigger under who asked.
    list_display = ["__str__", "record", "compliance", "requested", "requested_at", "duration"]
    list_filter = [
        RecordKindFilter,
        "status",
        "state",
        "trigger",
        ("policy", PolicyFilter),
        # Shown while chosen, by the links of the records' pages.
        ("customer_profile", ChosenRecordFilter),
        ("trust_product", ChosenRecordFilter),
        ("trust_product__customer_profile", BuiltOnFilter),
    ]
    list_select_related = ["customer_profile", "trust_product", "policy", "requested_by"]
    list_defer = EVALUATION_PAYLOADS
    # Each sortable column needs an index that serves ORDER BY … LIMIT on a million rows.
    sortable_by = ["requested_at"]
    raw_id_fields = ["customer_profile", "trust_product", "policy", "requested_by"]
    search_fields = ["=sid"]
    search_help_text = _(
        "An evaluation (EL…), customer profile or trust product (BU…) or policy (RN…) SID, an "
        "evaluation number, or part of a customer profile's or trust product's name."
    )
    date_hierarchy = "requested_at"
    readonly_fields = ["compliance", "duration", "waited", "error"]
    change_form_template = "trusthub_eval/admin/evaluation/change_form.html"
    change_list_template = "trusthub_eval/admin/evaluation/change_list.html"

    def get_fieldsets(self, request: HttpRequest, obj: Evaluation | None = None) -> Any:
        # What was evaluated: the one record an evaluation has (both fields on a blank form).
        records = [obj.kind.field] if obj is not None else [kind.field for kind in RecordKind]
        main = [
            *records,
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

    @admin.display(description=_("what was evaluated"))
    def record(self, evaluation: Evaluation) -> SafeString:
        record = evaluation.record
        return format_html(
            '<a href="{}">{}</a><div class="trusthub-quiet">{} · {}</div>',
            change_url(record),
            record,
            evaluation.kind.label,
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
            # A Customer Profile's or a Trust Product's.
            return queryset.filter(_of_records(sid=term)), False
        if is_sid(term, SidKind.POLICY):
            return queryset.filter(policy__sid=term), False
        number = term.removeprefix("#")
        # ASCII digits only: "²" is a digit to isdigit() but not to int(), "٣" is one to both.
        if re.fullmatch(r"[0-9]{1,18}", number):  # beyond that, no bigint
            return queryset.filter(pk=int(number)), False
        return queryset.filter(_of_records(friendly_name__icontains=term)), False

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


def _of_records(**lookup: object) -> Q:
    """Evaluations of the profiles and trust products that match ``lookup``.

    Each kind's matching keys are read first, up to :data:`SEARCH_KEYS`: then each side of
    the OR is an index of the evaluations (a subquery on either side would make the database
    filter the newest evaluations one by one, through the whole table when few match). More
    keys than that are a subquery: with that many records, the newest evaluations fill a page
    soon.
    """
    condition = Q()
    for kind, model in RECORD_MODELS.items():
        matching = model._default_manager.filter(**lookup).values_list("pk", flat=True)
        keys = list(matching[: SEARCH_KEYS + 1])
        condition |= Q(**{f"{kind.field}__in": matching if len(keys) > SEARCH_KEYS else keys})
    return condition
