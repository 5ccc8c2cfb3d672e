"""The admin's own pages: re-evaluating records (a button, a bulk action) and the queue."""

from __future__ import annotations

import math

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import model_format_dict, quote, unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from trusthub_eval import queue, services
from trusthub_eval.admin.base import EVALUATION_PAYLOADS, ModelAdmin, change_url
from trusthub_eval.admin.forms import ReevaluateForm
from trusthub_eval.conf import app_settings
from trusthub_eval.display import grouped
from trusthub_eval.models import CustomerProfile, Evaluation, TrustProduct
from trusthub_eval.paginator import count_rows
from trusthub_eval.permissions import can_request_evaluations
from trusthub_eval.throttling import trigger_wait

# The re-evaluation confirmation page names this many of the selected records.
CONFIRMATION_PREVIEW = 10
# Rows in flight listed on the queue page, oldest first.
HEALTH_OLDEST = 20


class ReevaluateMixin(ModelAdmin):
    """The "Re-evaluate now" button and bulk action of a record's admin (a Customer Profile's,
    a Trust Product's), each a service call."""

    reevaluate_confirmation_template = "trusthub_eval/admin/reevaluate_confirmation.html"

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

    def reevaluate_url(self, record: CustomerProfile | TrustProduct) -> str:
        """Where the record's "Re-evaluate now" button posts."""
        opts = self.opts
        return reverse(
            f"admin:{opts.app_label}_{opts.model_name}_reevaluate", args=[quote(record.pk)]
        )

    def has_request_evaluation_permission(self, request: HttpRequest) -> bool:
        # The API's rule too: the permission, and seeing these records and evaluations.
        return can_request_evaluations(request.user, self.model)

    def reevaluate_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST: queue an evaluation of one record against its policy, then go back to it."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        # Permission first: a 404 for an unknown record would tell who may not look which
        # records exist.
        if not (
            self.has_view_permission(request) and self.has_request_evaluation_permission(request)
        ):
            raise PermissionDenied
        record = self.get_object(request, unquote(object_id))
        if record is None:
            raise Http404(self._not_found(object_id))
        if self._throttled(request):
            return HttpResponseRedirect(change_url(record))
        try:
            evaluation, created = services.request_evaluation(
                record, trigger=Evaluation.Trigger.ADMIN, requested_by=request.user
            )
        except self.model.DoesNotExist:  # deleted since it was looked up
            raise Http404(self._not_found(object_id)) from None
        except services.NoPolicy:
            self.message_user(
                request,
                gettext("%(record)s has no policy to be evaluated against.") % {"record": record},
                messages.ERROR,
            )
        else:
            self._warn_if_unsent(request, evaluation.sent)
            link = format_html('<a href="{}">{}</a>', change_url(evaluation), evaluation)
            if created:
                self.message_user(
                    request,
                    format_html(
                        # The link reads "Evaluation #12" (the evaluation's own name).
                        gettext("{} of “{}” queued. Reload to see TrustHub's answer."),
                        link,
                        record,
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
                        record,
                        evaluation.policy,
                        evaluation.get_state_display(),
                        link,
                    ),
                    messages.WARNING,
                )
        return HttpResponseRedirect(change_url(record))

    # The admin fills in the model's names, as in its own "Delete selected …".
    @admin.action(
        description=_("Re-evaluate selected %(verbose_name_plural)s"),
        permissions=["request_evaluation"],
    )
    def reevaluate_selected(
        self, request: HttpRequest, queryset: QuerySet[CustomerProfile] | QuerySet[TrustProduct]
    ) -> HttpResponse | None:
        """Ask for confirmation (and a policy), then queue them all in one service call."""
        confirmed = "confirm" in request.POST
        form = ReevaluateForm(request.POST if confirmed else None)
        if confirmed and form.is_valid():
            if self._throttled(request):
                return None
            # The queryset goes to the service whole: "select all" on 10,000 records is a
            # handful of queries, never one per record.
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
            "title": gettext("Re-evaluate %(verbose_name_plural)s") % model_format_dict(self.opts),
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

    def _not_found(self, object_id: str) -> str:
        return gettext("No %(name)s with ID “%(key)s”.") % {
            "name": self.opts.verbose_name,
            "key": object_id,
        }

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
                    "Nothing was queued: none of the selected %(verbose_name_plural)s has a "
                    "policy. Choose a policy to evaluate them against."
                )
                % model_format_dict(self.opts),
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


class QueueMixin(ModelAdmin):
    """The evaluations' queue page ("Queue" on their list)."""

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
        health = queue.health(
            overdue_after=app_settings.SWEEP_AFTER, running_timeout=app_settings.RUNNING_TIMEOUT
        )
        oldest = (
            Evaluation.objects.active()
            .select_related("customer_profile", "trust_product", "policy")
            .defer(*EVALUATION_PAYLOADS)
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
