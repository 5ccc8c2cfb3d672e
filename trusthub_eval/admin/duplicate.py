"""The admin of duplicate evaluations: what TrustHub made beside the one a row holds."""

from __future__ import annotations

from django.contrib import admin
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from trusthub_eval.admin.base import ReadOnlyAdmin, stored_json
from trusthub_eval.models import CustomerProfile, DuplicateEvaluation, TrustProduct


@admin.register(DuplicateEvaluation)
class DuplicateEvaluationAdmin(ReadOnlyAdmin):
    """Evaluations TrustHub created for a request whose row already holds another."""

    list_display = ["sid", "evaluation", "record", "policy", "status", "recorded_at"]
    list_select_related = ["evaluation", "customer_profile", "trust_product", "policy"]
    list_defer = (
        "raw",
        "evaluation__raw",
        "customer_profile__raw",
        "trust_product__raw",
        "policy__raw",
        "policy__requirements",
    )
    raw_id_fields = ["evaluation", "customer_profile", "trust_product", "policy"]
    search_fields = ["=sid"]
    fields = [
        "sid",
        "evaluation",
        "customer_profile",
        "trust_product",
        "policy",
        "status",
        "date_created",
        "recorded_at",
        "payload",
    ]
    readonly_fields = ["payload"]

    @admin.display(description=_("evaluated"))
    def record(self, duplicate: DuplicateEvaluation) -> CustomerProfile | TrustProduct | None:
        return duplicate.customer_profile or duplicate.trust_product

    @admin.display(description=_("TrustHub payload"))
    def payload(self, duplicate: DuplicateEvaluation) -> SafeString | str:
        text = stored_json(duplicate).text
        return format_html('<pre class="trusthub-json">{}</pre>', text) if text else "-"
