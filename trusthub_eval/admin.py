"""Admin: read-only mirrors of TrustHub records, evaluation history, and re-evaluation."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.exceptions import NotRegistered
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.utils import quote, unquote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet, TextField
from django.db.models.functions import Cast, Length, Substr
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.template.response import TemplateResponse
from django.templatetags.static import static
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from trusthub_eval import services
from trusthub_eval.conf import app_settings
from trusthub_eval.diff import compare_results, previous_evaluation
from trusthub_eval.display import (
    compliance_badge,
    error_code_link,
    evaluation_badge,
    evaluation_duration,
    format_duration,
    grouped,
    pretty_json,
    requirement_verdict,
)
from trusthub_eval.models import CustomerProfile, DuplicateEvaluation, Evaluation, Policy
from trusthub_eval.paginator import EstimatedCountPaginator, count_rows
from trusthub_eval.permissions import can_request_evaluations
from trusthub_eval.requirements import describe_requirements, invalid_fields
from trusthub_eval.sids import SidKind, is_sid
from trusthub_eval.throttling import trigger_wait
from trusthub_eval.timeline import FAILED, TimelinePoint, render_timeline

# django-stubs makes these generic for the type checker only.
if TYPE_CHECKING:
    ModelAdmin = admin.ModelAdmin[Any]
else:
    ModelAdmin = admin.ModelAdmin

# The profile page shows this many evaluations and links to the rest; the timeline this many.
HISTORY_LIMIT = 20
TIMELINE_LIMIT = 200
# The re-evaluation confirmation page names this many of the selected profiles.
CONFIRMATION_PREVIEW = 10
# A page shows at most this many characters of a stored payload, and reads no more.
PAYLOAD_SHOWN = 100_000


# --- what the pages show, as plain functions ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StoredJSON:
    """A JSON column as a page shows it: ``text``, out of ``length`` characters stored."""

    text: str = ""
    length: int = 0

    @property
    def cut(self) -> bool:
        return self.length > len(self.text)


def stored_json(obj: CustomerProfile | DuplicateEvaluation | Evaluation | Policy) -> StoredJSON:
    """The row's ``raw`` payload as text: pretty-printed when whole and readable, else as stored.

    Read from the database as text rather than through the model field, which decodes it:
    whatever TrustHub sent may be too big for a page, or nested deeper than Python's JSON
    decoder recurses (a RecursionError, and the page a 500).
    """
    text = Cast("raw", TextField())
    row = (
        type(obj)
        ._default_manager.filter(pk=obj.pk)
        .values_list(Substr(text, 1, PAYLOAD_SHOWN), Length(text))
        .first()
    )
    if row is None or row[0] is None:
        return StoredJSON()
    shown, length = row
    if length <= len(shown):
        # Pretty when whole and decodable; otherwise as stored (the template escapes it).
        with contextlib.suppress(ValueError, RecursionError):
            shown = pretty_json(json.loads(shown))
    return StoredJSON(shown, length)


# --- shared admin plumbing ---------------------------------------------------------------------


def max_rows_per_form() -> int | None:
    """The most rows an admin form may select, leaving room for its other fields (the CSRF
    token, the action, "select all", the policy); None when Django sets no limit."""
    limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
    return None if limit is None else max(limit - _FORM_FIELDS, 1)


# Fields of the changelist's action form and of the confirmation page besides the rows.
_FORM_FIELDS = 20


class LeanChangeList(ChangeList):
    """A changelist whose pages never hold more rows than its action form can send back."""

    def get_results(self, request: HttpRequest) -> None:
        # Each selected row is one POST field, and Django refuses a form with more fields than
        # DATA_UPLOAD_MAX_NUMBER_FIELDS with a bare 400 before any view runs. So a page (or
        # "Show all") never lists more rows than that; "Select all" covers larger selections
        # with a single field.
        limit = max_rows_per_form()
        if limit is not None:
            self.list_per_page = min(self.list_per_page, limit)
            self.list_max_show_all = min(self.list_max_show_all, limit)
        super().get_results(request)
        # Django reads the count before the page; reading a page corrects an estimated one.
        self.result_count = self.paginator.count

    def get_queryset(
        self, request: HttpRequest, exclude_parameters: list[str | None] | None = None
    ) -> QuerySet[Any]:
        # PostgreSQL refuses a NUL character in text, which would fail the query as a 500; a
        # bad filter gets the admin's own answer instead (a redirect to its "?e=1" page).
        if any(
            "\x00" in key or any("\x00" in value for value in values)
            for key, values in request.GET.lists()
        ):
            raise IncorrectLookupParameters(gettext("A filter value contains a NUL character."))
        return super().get_queryset(request, exclude_parameters)


class ReadOnlyAdmin(ModelAdmin):
    """Nobody edits a TrustHub record by hand: these pages only show what TrustHub said."""

    # Payloads no page shows from the rows it loads, left unread: a page reads its own
    # through stored_json(), and shows related rows by name.
    list_defer: tuple[str, ...] = ("raw",)

    # Big tables: no second COUNT for "N total", an estimated count for the paginator, and no
    # facet counts (each is an aggregate over every matching row).
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    show_facets = admin.ShowFacets.NEVER
    change_list_template = "trusthub_eval/admin/change_list.html"

    class Media:
        css = {"all": ["trusthub_eval/admin.css"]}

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return LeanChangeList

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        # The change page shows the same related rows as the list.
        queryset = super().get_queryset(request)
        if isinstance(self.list_select_related, list | tuple):
            queryset = queryset.select_related(*self.list_select_related)
        return queryset.defer(*self.list_defer)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _change_url(obj: CustomerProfile | Evaluation | Policy) -> str:
    opts = obj._meta
    return reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[quote(obj.pk)])


# --- policies ----------------------------------------------------------------------------------


@admin.register(Policy)
class PolicyAdmin(ReadOnlyAdmin):
    list_display = ["friendly_name", "sid", "requirement_count", "synced_at"]
    list_display_links = ["friendly_name", "sid"]
    search_fields = ["=sid", "friendly_name"]
    fields = ["friendly_name", "sid", "synced_at"]
    change_form_template = "trusthub_eval/admin/policy/change_form.html"

    @admin.display(description=_("requirements"))
    def requirement_count(self, policy: Policy) -> int:
        return sum(len(section.items) for section in describe_requirements(policy.requirements))

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Policy | None = None,
    ) -> HttpResponse:
        if obj is not None:
            context["requirement_sections"] = describe_requirements(obj.requirements)
            context["raw_json"] = stored_json(obj)
        return super().render_change_form(request, context, add, change, form_url, obj)


# --- customer profiles -------------------------------------------------------------------------


class TrustHubStatusFilter(admin.SimpleListFilter):
    """TrustHub's statuses, listed from the code: no SELECT DISTINCT over the table."""

    title = _("TrustHub status")
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(value, str(label)) for value, label in CustomerProfile.Status.choices]

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


class ReevaluateForm(forms.Form):
    policy = forms.ModelChoiceField(
        queryset=Policy.objects.all(),
        required=False,
        empty_label=_("Each profile's own policy"),
        label=_("Evaluate against"),
    )


@admin.register(CustomerProfile)
class CustomerProfileAdmin(ReadOnlyAdmin):
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
    reevaluate_confirmation_template = "trusthub_eval/admin/reevaluate_confirmation.html"

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

    # --- permissions ---

    def has_request_evaluation_permission(self, request: HttpRequest) -> bool:
        # The API's rule too: the permission, and seeing profiles and evaluations.
        return can_request_evaluations(request.user)

    def has_evaluation_view_permission(self, request: HttpRequest) -> bool:
        """Whether the evaluations' own pages open for this user: the profile's page shows
        their history (rows, timeline, links) only then, as the API lists them only then."""
        try:
            evaluations = self.admin_site.get_model_admin(Evaluation)
        except NotRegistered:
            return False
        return bool(evaluations.has_view_permission(request))

    def _throttled(self, request: HttpRequest) -> bool:
        """Whether the API's trigger throttle refuses this request (then say so)."""
        wait = trigger_wait(request)
        if wait is None:
            return False
        self.message_user(
            request,
            gettext("Too many evaluation requests: try again in %(seconds)d seconds.")
            % {"seconds": math.ceil(wait)},
            messages.ERROR,
        )
        return True

    # --- the re-evaluate button ---

    def get_urls(self) -> list[URLPattern]:
        name = f"{self.opts.app_label}_{self.opts.model_name}_reevaluate"
        # Before the default URLs: their "<path:object_id>/" would swallow ours.
        return [
            path(
                "<path:object_id>/reevaluate/",
                self.admin_site.admin_view(self.reevaluate_view),
                name=name,
            ),
            *super().get_urls(),
        ]

    def reevaluate_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST: queue an evaluation of one profile against its policy, then go back to it."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        # Permission first: a 404 for an unknown profile would tell who may not look which
        # profiles exist.
        if not (
            self.has_view_permission(request) and self.has_request_evaluation_permission(request)
        ):
            raise PermissionDenied
        profile = self.get_object(request, unquote(object_id))
        if profile is None:
            raise Http404(gettext("No customer profile with ID “%s”.") % object_id)
        if self._throttled(request):
            return HttpResponseRedirect(_change_url(profile))
        try:
            evaluation, created = services.request_evaluation(
                profile, trigger=Evaluation.Trigger.ADMIN, requested_by=request.user
            )
        except CustomerProfile.DoesNotExist:  # deleted since it was looked up
            raise Http404(gettext("No customer profile with ID “%s”.") % object_id) from None
        except services.NoPolicy:
            self.message_user(
                request,
                gettext("%(profile)s has no policy to be evaluated against.")
                % {"profile": profile},
                messages.ERROR,
            )
        else:
            self._warn_if_unsent(request, evaluation.sent)
            link = format_html('<a href="{}">{}</a>', _change_url(evaluation), evaluation)
            if created:
                self.message_user(
                    request,
                    format_html(
                        # The link reads "Evaluation #12" (the evaluation's own name).
                        gettext("{} of “{}” queued. Reload to see TrustHub's answer."),
                        link,
                        profile,
                    ),
                    messages.SUCCESS,
                )
            else:
                self.message_user(
                    request,
                    format_html(
                        gettext(
                            "An evaluation of “{}” against “{}” is already in flight ({}): {}."
                        ),
                        profile,
                        evaluation.policy,
                        evaluation.get_state_display(),
                        link,
                    ),
                    messages.WARNING,
                )
        return HttpResponseRedirect(_change_url(profile))

    # --- the bulk action ---

    @admin.action(
        description=_("Re-evaluate selected customer profiles"),
        permissions=["request_evaluation"],
    )
    def reevaluate_selected(
        self, request: HttpRequest, queryset: QuerySet[CustomerProfile]
    ) -> HttpResponse | None:
        """Ask for confirmation (and a policy), then queue them all in one service call."""
        confirmed = "confirm" in request.POST
        form = ReevaluateForm(request.POST if confirmed else None)
        if confirmed and form.is_valid():
            if self._throttled(request):
                return None
            # The queryset goes to the service whole: "select all" on 10,000 profiles is a
            # handful of queries, never one per profile.
            result = services.request_evaluations(
                queryset,
                form.cleaned_data["policy"],
                requested_by=request.user,
                trigger=Evaluation.Trigger.ADMIN,
            )
            self._report(request, result)
            return None
        total = count_rows(queryset)
        preview = list(queryset.select_related("policy")[:CONFIRMATION_PREVIEW])
        context = {
            **self.admin_site.each_context(request),
            "title": gettext("Re-evaluate customer profiles"),
            "subtitle": None,
            "opts": self.opts,
            "media": self.media,
            "form": form,
            "total": total,
            "total_display": grouped(total.value),
            "preview": preview,
            "more": max(total.value - len(preview), 0),
            "select_across": request.POST.get("select_across", "0"),
            "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "action": "reevaluate_selected",
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.reevaluate_confirmation_template, context)

    def _warn_if_unsent(self, request: HttpRequest, sent: bool | None) -> None:
        if sent is False:
            self.message_user(
                request,
                gettext(
                    "The task broker could not be reached: the evaluation is saved and will run "
                    "once the broker is back."
                ),
                messages.WARNING,
            )

    def _report(self, request: HttpRequest, result: services.BulkRequest) -> None:
        self._warn_if_unsent(request, result.sent)
        if not result.queued and not result.in_flight:
            self.message_user(
                request,
                gettext(
                    "Nothing was queued: none of the selected customer profiles has a policy. "
                    "Choose a policy to evaluate them against."
                ),
                messages.ERROR,
            )
            return
        parts = [
            ngettext("Queued %(count)d evaluation.", "Queued %(count)d evaluations.", result.queued)
            % {"count": result.queued}
        ]
        if result.in_flight:
            parts.append(
                ngettext(
                    "%(count)d was already in flight.",
                    "%(count)d were already in flight.",
                    result.in_flight,
                )
                % {"count": result.in_flight}
            )
        if result.skipped:
            parts.append(
                ngettext(
                    "%(count)d has no policy and was skipped.",
                    "%(count)d have no policy and were skipped.",
                    result.skipped,
                )
                % {"count": result.skipped}
            )
        level = messages.SUCCESS if result.queued else messages.WARNING
        self.message_user(request, " ".join(parts), level)

    # --- the change page ---

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: CustomerProfile | None = None,
    ) -> HttpResponse:
        if obj is not None:
            context.update(self.profile_context(request, obj))
        return super().render_change_form(request, context, add, change, form_url, obj)

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
            "reevaluate_url": reverse(
                f"admin:{self.opts.app_label}_{self.opts.model_name}_reevaluate",
                args=[quote(profile.pk)],
            ),
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
                url=_change_url(evaluation),
            )
        )
    return points


# --- duplicates --------------------------------------------------------------------------------


@admin.register(DuplicateEvaluation)
class DuplicateEvaluationAdmin(ReadOnlyAdmin):
    """Evaluations TrustHub created for a request whose row already holds another."""

    list_display = ["sid", "evaluation", "customer_profile", "policy", "status", "recorded_at"]
    list_select_related = ["evaluation", "customer_profile", "policy"]
    list_defer = (
        "raw",
        "evaluation__raw",
        "customer_profile__raw",
        "policy__raw",
        "policy__requirements",
    )
    raw_id_fields = ["evaluation", "customer_profile", "policy"]
    search_fields = ["=sid"]
    fields = [
        "sid",
        "evaluation",
        "customer_profile",
        "policy",
        "status",
        "date_created",
        "recorded_at",
        "payload",
    ]
    readonly_fields = ["payload"]

    @admin.display(description=_("TrustHub payload"))
    def payload(self, duplicate: DuplicateEvaluation) -> SafeString | str:
        text = stored_json(duplicate).text
        return format_html('<pre class="trusthub-json">{}</pre>', text) if text else "-"


# --- evaluations -------------------------------------------------------------------------------

# Rows in flight listed on the queue page, oldest first.
HEALTH_OLDEST = 20


@admin.register(Evaluation)
class EvaluationAdmin(ReadOnlyAdmin):
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
    health_template = "trusthub_eval/admin/evaluation/health.html"

    def get_urls(self) -> list[URLPattern]:
        name = f"{self.opts.app_label}_{self.opts.model_name}_health"
        return [
            path("health/", self.admin_site.admin_view(self.health_view), name=name),
            *super().get_urls(),
        ]

    def health_view(self, request: HttpRequest) -> HttpResponse:
        """The queue: what waits and for how long, what is stuck, what failed and why."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        health = Evaluation.objects.health(
            overdue_after=app_settings.SWEEP_AFTER, running_timeout=app_settings.RUNNING_TIMEOUT
        )
        oldest = (
            Evaluation.objects.active()
            .select_related("customer_profile", "policy")
            .defer("raw", "customer_profile__raw", "policy__raw", "policy__requirements")
            .order_by("requested_at")[:HEALTH_OLDEST]
        )
        context = {
            **self.admin_site.each_context(request),
            "title": gettext("Evaluation queue"),
            "subtitle": None,
            "opts": self.opts,
            "health": health,
            "oldest": oldest,
            "sweep_after": app_settings.SWEEP_AFTER,
            "running_timeout": app_settings.RUNNING_TIMEOUT,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.health_template, context)

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
        profile = evaluation.customer_profile
        return format_html(
            '<a href="{}">{}</a><div class="trusthub-quiet">{}</div>',
            _change_url(profile),
            profile,
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

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Evaluation | None = None,
    ) -> HttpResponse:
        if obj is not None:
            context.update(self.evaluation_context(obj))
        return super().render_change_form(request, context, add, change, form_url, obj)

    def evaluation_context(self, evaluation: Evaluation) -> dict[str, Any]:
        """Results per requirement, and the comparison with the previous evaluation."""
        results = list(evaluation.requirement_results.order_by("position"))
        previous = previous_evaluation(evaluation)
        diff = diff_groups = None
        if previous is not None and evaluation.state == Evaluation.State.COMPLETED:
            diff = compare_results(previous.requirement_results.order_by("position"), results)
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


__all__ = [
    "CustomerProfileAdmin",
    "EvaluationAdmin",
    "PolicyAdmin",
    "ReadOnlyAdmin",
    "compare_results",
    "describe_requirements",
    "error_code_link",
    "evaluation_duration",
    "format_duration",
    "requirement_verdict",
    "timeline_points",
]
