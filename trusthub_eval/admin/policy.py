"""The policies' admin: each policy's requirements, readable."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.utils.translation import gettext_lazy as _

from trusthub_eval.admin.base import ReadOnlyAdmin, stored_json
from trusthub_eval.models import Policy
from trusthub_eval.requirements import describe_requirements


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
