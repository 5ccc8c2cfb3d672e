"""The policies' admin: each policy's requirements, readable."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
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

    def object_context(self, request: HttpRequest, obj: Policy) -> dict[str, Any]:
        return {
            "requirement_sections": describe_requirements(obj.requirements),
            "raw_json": stored_json(obj),
        }
