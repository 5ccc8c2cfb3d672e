"""Admin: read-only mirrors of TrustHub records and the evaluation history."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.http import HttpRequest

from trusthub_eval.models import CustomerProfile, Evaluation, Policy, RequirementResult

# django-stubs makes these generic for the type checker only.
if TYPE_CHECKING:
    ModelAdmin = admin.ModelAdmin[Any]
    EvaluationInlineBase = admin.TabularInline[Evaluation, CustomerProfile]
    RequirementInlineBase = admin.TabularInline[RequirementResult, Evaluation]
else:
    ModelAdmin = admin.ModelAdmin
    EvaluationInlineBase = RequirementInlineBase = admin.TabularInline


class ReadOnlyAdmin(ModelAdmin):
    """Nobody edits a TrustHub record by hand: these pages only show what TrustHub said."""

    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Policy)
class PolicyAdmin(ReadOnlyAdmin):
    list_display = ["friendly_name", "sid", "synced_at"]
    search_fields = ["=sid", "friendly_name"]


class EvaluationInline(EvaluationInlineBase):
    model = Evaluation
    fields = readonly_fields = (
        "requested_at",
        "policy",
        "state",
        "status",
        "trigger",
        "sid",
        "error_code",
    )
    show_change_link = True
    extra = 0
    max_num = 0
    can_delete = False
    ordering = ["-requested_at", "-id"]

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).select_related("policy")


@admin.register(CustomerProfile)
class CustomerProfileAdmin(ReadOnlyAdmin):
    list_display = [
        "friendly_name",
        "sid",
        "status",
        "compliance_status",
        "compliance_checked_at",
        "policy",
    ]
    list_filter = ["status", "compliance_status"]
    list_select_related = ["policy"]
    search_fields = ["=sid", "friendly_name", "email"]
    inlines = [EvaluationInline]


class RequirementResultInline(RequirementInlineBase):
    model = RequirementResult
    fields = readonly_fields = (
        "requirement_friendly_name",
        "requirement_name",
        "passed",
        "failure_reason",
        "error_code",
        "invalid",
    )
    extra = 0
    max_num = 0
    can_delete = False


@admin.register(Evaluation)
class EvaluationAdmin(ReadOnlyAdmin):
    list_display = [
        "__str__",
        "customer_profile",
        "policy",
        "status",
        "state",
        "trigger",
        "requested_by",
        "requested_at",
    ]
    list_filter = ["status", "state", "trigger"]
    list_select_related = ["customer_profile", "policy", "requested_by"]
    raw_id_fields = ["customer_profile", "policy", "requested_by"]
    search_fields = ["=sid", "=customer_profile__sid"]
    date_hierarchy = "requested_at"
    inlines = [RequirementResultInline]
