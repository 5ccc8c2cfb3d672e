"""The customer profiles' admin: latest compliance, history and timeline, re-evaluation."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib import admin
from django.contrib.admin.exceptions import NotRegistered
from django.db.models import QuerySet
from django.http import HttpRequest
from django.templatetags.static import static
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from trusthub_eval.admin.base import ReadOnlyAdmin, change_url, stored_json
from trusthub_eval.admin.filters import ComplianceFilter, PolicyFilter, TrustHubStatusFilter
from trusthub_eval.admin.views import ReevaluateMixin
from trusthub_eval.display import compliance_badge
from trusthub_eval.models import CustomerProfile, Evaluation
from trusthub_eval.sids import SidKind, is_sid
from trusthub_eval.timeline import FAILED, TimelinePoint, render_timeline

# The profile page shows this many evaluations and links to the rest; the timeline this many.
HISTORY_LIMIT = 20
TIMELINE_LIMIT = 200


@admin.register(CustomerProfile)
class CustomerProfileAdmin(ReevaluateMixin, ReadOnlyAdmin):
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
    list_defer = ("raw", "policy__raw", "policy__requirements", "latest_evaluation__raw")
    search_fields = ["=sid", "friendly_name", "email"]
    search_help_text = _("A customer profile SID (BU…), or part of a name or an email address.")
    actions = ["reevaluate_selected"]
    raw_id_fields = ["policy", "latest_evaluation"]
    fieldsets = [
        (None, {"fields": ["friendly_name", "sid", "email", "trusthub_status", "policy"]}),
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
    readonly_fields = ["trusthub_status", "compliance", "failing"]
    change_form_template = "trusthub_eval/admin/customerprofile/change_form.html"

    @admin.display(description=_("TrustHub status"), ordering="status")
    def trusthub_status(self, profile: CustomerProfile) -> str:
        try:
            return str(CustomerProfile.Status(profile.status).label)
        except ValueError:
            return profile.status

    @admin.display(description=_("latest compliance"), ordering="compliance_status")
    def compliance(self, profile: CustomerProfile) -> SafeString:
        badge = compliance_badge(profile.compliance_status)
        latest = profile.latest_evaluation
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
    def failing(self, profile: CustomerProfile) -> int | str:
        # Never evaluated is not "0 failing": the admin's empty value, on the list and the page
        # (where a None would read "None").
        if not profile.compliance_status:
            return self.get_empty_value_display()
        return profile.failing_requirements

    @admin.display(description=_("policy"), ordering="policy__friendly_name")
    def policy_name(self, profile: CustomerProfile) -> str | None:
        # A method rather than the field: the admin keeps foreign keys on one line, and policy
        # names are long enough to push the list off the screen.
        return str(profile.policy) if profile.policy is not None else None

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[CustomerProfile], search_term: str
    ) -> tuple[QuerySet[CustomerProfile], bool]:
        # A whole SID goes to its unique index; the admin's "=sid" would compare UPPER(sid),
        # which no index serves, ORed with the name and email searches.
        term = search_term.strip()
        if is_sid(term, SidKind.CUSTOMER_PROFILE):
            return queryset.filter(sid=term), False
        return super().get_search_results(request, queryset, search_term)

    def has_evaluation_view_permission(self, request: HttpRequest) -> bool:
        """Whether the evaluations' own pages open for this user: the profile's page shows
        their history (rows, timeline, links) only then, as the API lists them only then."""
        try:
            evaluations = self.admin_site.get_model_admin(Evaluation)
        except NotRegistered:
            return False
        return bool(evaluations.has_view_permission(request))

    def object_context(self, request: HttpRequest, obj: CustomerProfile) -> dict[str, Any]:
        return self.profile_context(request, obj)

    def get_fieldsets(self, request: HttpRequest, obj: CustomerProfile | None = None) -> Any:
        fieldsets = super().get_fieldsets(request, obj)
        if self.has_evaluation_view_permission(request):
            return fieldsets
        # Django links a related object whether or not its page would open.
        hidden = "latest_evaluation"
        return [
            (name, {**options, "fields": [f for f in options["fields"] if f != hidden]})
            for name, options in fieldsets
        ]

    def profile_context(self, request: HttpRequest, profile: CustomerProfile) -> dict[str, Any]:
        """History, timeline and the re-evaluate button for the profile's page."""
        context = {
            "can_request_evaluation": self.has_request_evaluation_permission(request),
            "reevaluate_url": self.reevaluate_url(profile),
            "raw_json": stored_json(profile),
        }
        if not self.has_evaluation_view_permission(request):
            return context
        history = list(
            Evaluation.objects.filter(customer_profile=profile)
            .select_related("policy", "requested_by")
            .defer("raw", "policy__raw", "policy__requirements")
            .with_failing_count()
            .order_by("-requested_at", "-id")[: HISTORY_LIMIT + 1]
        )
        all_url = reverse(f"admin:{self.opts.app_label}_evaluation_changelist")
        finished = (
            Evaluation.objects.filter(
                customer_profile=profile,
                state__in=[Evaluation.State.COMPLETED, Evaluation.State.FAILED],
            )
            .select_related("policy")
            .only("requested_at", "state", "status", "sid", "policy__friendly_name", "policy__sid")
            .order_by("-requested_at", "-id")[:TIMELINE_LIMIT]
        )
        return {
            **context,
            "can_view_evaluations": True,
            "history": history[:HISTORY_LIMIT],
            "history_more": len(history) > HISTORY_LIMIT,
            "history_url": f"{all_url}?customer_profile__id__exact={profile.pk}",
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
