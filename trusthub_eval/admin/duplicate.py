"""The admin of duplicate evaluations: what TrustHub made beside the one a row holds."""

from __future__ import annotations

from django.contrib import admin
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from trusthub_eval.admin.base import ReadOnlyAdmin, stored_json
from trusthub_eval.models import DuplicateEvaluation


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
