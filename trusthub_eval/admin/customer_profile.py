"""The customer profiles' admin; a profile's page also shows the trust products built on it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from django.contrib import admin
from django.db.models import OuterRef, Subquery
from django.http import HttpRequest
from django.urls import reverse
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from trusthub_eval.admin.base import change_url, errors_json, read_errors
from trusthub_eval.admin.record import RecordAdmin, timeline_points
from trusthub_eval.display import RejectionError
from trusthub_eval.models import CustomerProfile, Evaluation, RequirementResult, TrustProduct

__all__ = ["CustomerProfileAdmin", "timeline_points"]

# A profile's page lists this many of its trust products and links to the rest.
PRODUCTS_LIMIT = 50


@dataclasses.dataclass(frozen=True)
class BusinessRow:
    """The profile, or a trust product built on it, as a row of the profile's page."""

    record: CustomerProfile | TrustProduct
    #: Its page; empty for the profile whose page it is.
    url: str
    status: str
    compliance: SafeString
    errors: list[RejectionError]
    #: What the row shows for the failing requirements of a record never evaluated.
    empty: str
    #: The requirements that failed in its newest completed evaluation, by name; None where the
    #: user may not see evaluations.
    failing: list[str] | None = None
    history_url: str = ""


@admin.register(CustomerProfile)
class CustomerProfileAdmin(RecordAdmin):
    search_help_text = _("A customer profile SID (BU…), or part of a name or an email address.")

    def object_context(self, request: HttpRequest, obj: CustomerProfile) -> dict[str, Any]:
        context = self.record_context(request, obj)
        return {**context, **self.business_context(request, obj, context["rejection_errors"])}

    def business_context(
        self, request: HttpRequest, profile: CustomerProfile, errors: list[RejectionError]
    ) -> dict[str, Any]:
        """The profile and each trust product built on it, side by side: TrustHub's status and
        errors, the latest verdict and the requirements that failed, each linking to its own
        page and history. In a number of queries that does not grow with the products."""
        if not self.may_view(request, TrustProduct):
            return {}
        newest = Evaluation.objects.filter(state=Evaluation.State.COMPLETED).order_by(
            "-completed_at", "-id"
        )
        products = list(
            profile.trust_products.select_related("policy", "latest_evaluation")
            .defer("raw", "policy__raw", "policy__requirements", "latest_evaluation__raw")
            .annotate(
                errors_text=errors_json(),
                newest_completed=Subquery(
                    newest.filter(trust_product=OuterRef("pk")).values("id")[:1]
                ),
            )
            .order_by("friendly_name", "sid")[: PRODUCTS_LIMIT + 1]
        )
        more = len(products) > PRODUCTS_LIMIT
        products = products[:PRODUCTS_LIMIT]
        rows = [
            self._row(profile, "", errors),
            *(self._row(p, change_url(p), read_errors(p.errors_text)) for p in products),
        ]
        products_url = reverse(f"admin:{self.opts.app_label}_trustproduct_changelist")
        context = {
            "business": rows,
            "business_more": more,
            "products_url": f"{products_url}?customer_profile__id__exact={profile.pk}",
        }
        if not self.has_evaluation_view_permission(request):
            return context
        # Row by row: the newest completed evaluation of the profile, then of each product.
        newest_ids = [
            newest.filter(customer_profile=profile).values_list("id", flat=True).first(),
            *(p.newest_completed for p in products),
        ]
        failing = failing_requirements(i for i in newest_ids if i is not None)
        evaluations_url = reverse(f"admin:{self.opts.app_label}_evaluation_changelist")
        return {
            **context,
            "business": [
                dataclasses.replace(
                    row,
                    failing=failing.get(newest_id, []) if newest_id is not None else [],
                    history_url=self.history_url(row.record),
                )
                for row, newest_id in zip(rows, newest_ids, strict=True)
            ],
            "products_history_url": (
                f"{evaluations_url}?trust_product__customer_profile__id__exact={profile.pk}"
            ),
        }

    def _row(
        self, record: CustomerProfile | TrustProduct, url: str, errors: list[RejectionError]
    ) -> BusinessRow:
        # The list columns' own words and badges.
        return BusinessRow(
            record=record,
            url=url,
            status=self.trusthub_status(record),
            compliance=self.compliance(record),
            errors=errors,
            empty=self.get_empty_value_display(),
        )


def failing_requirements(evaluation_ids: Iterable[int]) -> dict[int, list[str]]:
    """The names of the requirements that failed in each of the evaluations; one query."""
    failing: dict[int, list[str]] = {}
    results = (
        RequirementResult.objects.failing()
        .filter(evaluation_id__in=list(evaluation_ids))
        .order_by("evaluation_id", "position")
        .values_list("evaluation_id", "requirement_friendly_name", "requirement_name")
    )
    for evaluation_id, label, name in results:
        names = failing.setdefault(evaluation_id, [])
        if (label or name) not in names:
            names.append(label or name)
    return failing
