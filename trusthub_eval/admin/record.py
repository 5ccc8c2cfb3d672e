"""The admin of a record TrustHub evaluates (a Customer Profile, a Trust Product), said once."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.templatetags.static import static
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from trusthub_eval.admin.base import ReadOnlyAdmin, change_url, stored_errors, stored_json
from trusthub_eval.admin.filters import ComplianceFilter, PolicyFilter, TrustHubStatusFilter
from trusthub_eval.admin.views import ReevaluateMixin
from trusthub_eval.display import compliance_badge
from trusthub_eval.models import CustomerProfile, Evaluation, Record, TrustProduct
from trusthub_eval.sids import SidKind, is_sid
from trusthub_eval.timeline import FAILED, TimelinePoint, render_timeline

# A record's page shows this many evaluations and links to the rest; the timeline this many.
HISTORY_LIMIT = 20
TIMELINE_LIMIT = 200


class RecordAdmin(ReevaluateMixin, ReadOnlyAdmin):
    """A record's list and page: latest compliance, history and timeline, TrustHub's rejection
    errors, re-evaluation. A subclass registers a model and adds what its kind has more."""

    list_display = [
        "friendly_name",
        "sid",
        "trusthub_status",
        "compliance",
        "compliance_checked_at",
        "failing",
        "policy_name",
    ]
    list_display_links = ["friendly_name", "sid"]
    list_filter = [TrustHubStatusFilter, ComplianceFilter, ("policy", PolicyFilter)]
    list_select_related = ["policy", "latest_evaluation"]
    list_defer: tuple[str, ...] = (
        "raw",
        "policy__raw",
        "policy__requirements",
        "latest_evaluation__raw",
    )
    search_fields = ["=sid", "friendly_name", "email"]
    actions = ["reevaluate_selected"]
    raw_id_fields = ["policy", "latest_evaluation"]
    #: The page's first fields: what the record is.
    identity_fields = ["friendly_name", "sid", "email", "trusthub_status", "policy"]
    #: Related rows the page shows (and links to) only to those whose pages would open.
    guarded_fields: tuple[str, ...] = ("latest_evaluation",)
    readonly_fields = ["trusthub_status", "compliance", "failing"]
    change_form_template = "trusthub_eval/admin/record/change_form.html"

    @admin.display(description=_("TrustHub status"), ordering="status")
    def trusthub_status(self, record: Record) -> str:
        try:
            return str(Record.Status(record.status).label)
        except ValueError:
            return record.status

    @admin.display(description=_("latest compliance"), ordering="compliance_status")
    def compliance(self, record: Record) -> SafeString:
        badge = compliance_badge(record.compliance_status)
        latest = record.latest_evaluation
        if latest is not None and latest.is_active:
            badge += format_html(
                ' <img src="{}" alt="{}" title="{}" width="13" height="13" '
                'class="trusthub-in-flight">',
                static("admin/img/icon-clock.svg"),
                gettext("re-evaluating"),
                gettext("An evaluation is %(state)s") % {"state": latest.get_state_display()},
            )
        return badge

    @admin.display(description=_("failing"), ordering="failing_requirements")
    def failing(self, record: Record) -> int | str:
        # Never evaluated is not "0 failing": the admin's empty value, on the list and the page
        # (where a None would read "None").
        if not record.compliance_status:
            return self.get_empty_value_display()
        return record.failing_requirements

    @admin.display(description=_("policy"), ordering="policy__friendly_name")
    def policy_name(self, record: CustomerProfile | TrustProduct) -> SafeString | None:
        # A method rather than the field: the admin keeps foreign keys on one line, and policy
        # names are long enough to push the list off the screen. A line may break after a
        # slash too ("SHAKEN/STIR Trust Product").
        if record.policy is None:
            return None
        parts = str(record.policy).split("/")
        return format_html_join(mark_safe("/<wbr>"), "{}", ((part,) for part in parts))

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        # A whole SID goes to its unique index; the admin's "=sid" would compare UPPER(sid),
        # which no index serves, ORed with the name and email searches.
        term = search_term.strip()
        if is_sid(term, SidKind.CUSTOMER_PROFILE):
            return queryset.filter(self.sid_search(term)), False
        return super().get_search_results(request, queryset, search_term)

    def sid_search(self, sid: str) -> Q:
        """The records a whole BU… SID searches for."""
        return Q(sid=sid)

    def get_fieldsets(self, request: HttpRequest, obj: Record | None = None) -> Any:
        fieldsets = [
            (None, {"fields": self.identity_fields}),
            (
                _("Compliance"),
                {
                    "fields": [
                        "compliance",
                        "compliance_checked_at",
                        "failing",
                        "latest_evaluation",
                    ]
                },
            ),
            (
                _("TrustHub"),
                {
                    "fields": [
                        "account_sid",
                        "valid_until",
                        "date_created",
                        "date_updated",
                        "synced_at",
                    ],
                    # Collapsed (a <details>, no JavaScript) to bring the timeline and history up.
                    "classes": ["collapse"],
                },
            ),
        ]
        # Django links a related row whether or not its page would open.
        hidden = {
            name
            for name in self.guarded_fields
            if not self.may_view(request, self.model._meta.get_field(name).related_model)
        }
        return [
            (name, {**options, "fields": [f for f in options["fields"] if f not in hidden]})
            for name, options in fieldsets
        ]

    def has_evaluation_view_permission(self, request: HttpRequest) -> bool:
        """Whether the evaluations' own pages open for this user: the record's page shows
        their history (rows, timeline, links) only then, as the API lists them only then."""
        return self.may_view(request, Evaluation)

    def history_url(self, record: Record) -> str:
        """The list of the record's evaluations."""
        evaluations = reverse(f"admin:{self.opts.app_label}_evaluation_changelist")
        return f"{evaluations}?{record.kind.field}__id__exact={record.pk}"

    def object_context(self, request: HttpRequest, obj: Any) -> dict[str, Any]:
        return self.record_context(request, obj)

    def record_context(
        self, request: HttpRequest, record: CustomerProfile | TrustProduct
    ) -> dict[str, Any]:
        """Rejection errors, history, timeline and the re-evaluate button for the record's
        page."""
        context = {
            "can_request_evaluation": self.has_request_evaluation_permission(request),
            "reevaluate_url": self.reevaluate_url(record),
            "rejection_errors": stored_errors(record),
            "raw_json": stored_json(record),
        }
        if not self.has_evaluation_view_permission(request):
            return context
        evaluations = Evaluation.objects.filter(**{record.kind.field: record})
        history = list(
            evaluations.select_related("policy", "requested_by")
            .defer("raw", "policy__raw", "policy__requirements")
            .with_failing_count()
            .order_by("-requested_at", "-id")[: HISTORY_LIMIT + 1]
        )
        finished = (
            evaluations.filter(state__in=[Evaluation.State.COMPLETED, Evaluation.State.FAILED])
            .select_related("policy")
            .only("requested_at", "state", "status", "sid", "policy__friendly_name", "policy__sid")
            .order_by("-requested_at", "-id")[:TIMELINE_LIMIT]
        )
        return {
            **context,
            "can_view_evaluations": True,
            "history": history[:HISTORY_LIMIT],
            "history_more": len(history) > HISTORY_LIMIT,
            "history_url": self.history_url(record),
            "timeline": render_timeline(timeline_points(finished)),
            "timeline_limit": TIMELINE_LIMIT,
        }


def timeline_points(evaluations: Iterable[Evaluation]) -> list[TimelinePoint]:
    """Finished evaluations as timeline points, each linking to its page."""
    points = []
    for evaluation in evaluations:
        if evaluation.state == Evaluation.State.FAILED:
            outcome = FAILED
        elif evaluation.status in (Evaluation.Status.COMPLIANT, Evaluation.Status.NONCOMPLIANT):
            outcome = str(evaluation.status)
        else:
            continue
        label = f"{evaluation} ({evaluation.policy})"
        points.append(
            TimelinePoint(
                when=evaluation.requested_at,
                outcome=outcome,
                label=label,
                url=change_url(evaluation),
            )
        )
    return points
