"""Who may read and who may trigger: Django model permissions, in one query per request."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from django.db.models import Model
from rest_framework.exceptions import MethodNotAllowed
from rest_framework.permissions import SAFE_METHODS, BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from trusthub_eval.permissions import (
    REQUEST_PERMISSIONS,
    has_perms,
    request_permissions,
    view_permission,
)

__all__ = [
    "REQUEST_PERMISSIONS",
    "ModelPermissions",
    "SchemaPermission",
    "can_view",
    "request_permissions",
    "view_permission",
]


def can_view(user: Any, model: type[Model]) -> bool:
    """Whether ``user`` may read ``model``'s records: wherever the API shows them, nested in
    another record's answer too, by the rule its list and detail views follow."""
    return bool(
        user is not None and user.is_authenticated and has_perms(user, [view_permission(model)])
    )


class ModelPermissions(BasePermission):
    """Reads need the view permission of the view's model; writes, what the view names.

    Like DRF's ``DjangoModelPermissions`` with ``view_*`` required for GET, but it reads the
    model from the view's ``queryset`` attribute instead of calling ``get_queryset()``: the
    nested views resolve a profile there, and an unauthorised caller must get 403 before any
    lookup, not a 404 that tells them which profiles exist. A view lists what its other
    methods need in ``write_permissions``; a method it does not list is refused. The user's
    permissions are read as :func:`trusthub_eval.permissions.has_perms` reads them.
    """

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        if user is None or not user.is_authenticated:
            return False
        if getattr(view, (request.method or "").lower(), None) is None:
            # Not a method this view has: 405 rather than a 403 that suggests a permission.
            raise MethodNotAllowed(request.method or "")
        if request.method in SAFE_METHODS:
            model = view.queryset.model  # type: ignore[attr-defined]
            return has_perms(user, [view_permission(model)])
        write: Mapping[str, Sequence[str]] = getattr(view, "write_permissions", {})
        required = write.get(request.method or "")
        return required is not None and has_perms(user, required)

    def has_object_permission(self, request: Request, view: APIView, obj: Any) -> bool:
        return True


class SchemaPermission(BasePermission):
    """The schema and Swagger UI: for signed-in users who pass the host's default permissions.

    drf-spectacular serves them to anyone by default (its SERVE_PERMISSIONS is AllowAny), which
    tells strangers every endpoint and filter. The host's DEFAULT_PERMISSION_CLASSES are read on
    each request, so a stricter host (IsAdminUser, say) keeps its rule here too.
    """

    def has_permission(self, request: Request, view: APIView) -> bool:
        # DRF's settings object has imported the dotted paths into classes by now.
        defaults = cast("list[type[BasePermission]]", api_settings.DEFAULT_PERMISSION_CLASSES)
        checks: list[type[BasePermission]] = [IsAuthenticated, *defaults]
        return all(check().has_permission(request, view) for check in checks)
