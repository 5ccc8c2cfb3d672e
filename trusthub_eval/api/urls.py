"""URLs of the API; a host mounts them, e.g. ``path("api/", include("trusthub_eval.api.urls"))``."""

from __future__ import annotations

from typing import Any

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from trusthub_eval.api import views
from trusthub_eval.api.pagination import KeysetPagination
from trusthub_eval.api.permissions import SchemaPermission
from trusthub_eval.api.serializers import NAMESPACE

app_name = NAMESPACE
PAGINATION_PARAMETERS = {
    KeysetPagination.cursor_query_param,
    KeysetPagination.page_size_query_param,
}


def only_this_api(endpoints: list[Any], **kwargs: Any) -> list[Any]:
    """drf-spectacular hook: describe this app's endpoints, not whatever else the host serves."""
    return [endpoint for endpoint in endpoints if endpoint[3].__module__ == views.__name__]


def describe_empty_values(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular hook: the schema facts its generator cannot know from the views.

    Filters ignore an empty value (``?status=``), as django-filter does and as the browsable
    API's filter form sends them: say so with allowEmptyValue. A bulk request needs a body.
    """
    for item in result.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict):
                continue
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "query" and parameter["name"] not in PAGINATION_PARAMETERS:
                    parameter["allowEmptyValue"] = True
            if operation.get("operationId") == "evaluations_bulk_create":
                operation["requestBody"]["required"] = True
    return result


SCHEMA_SETTINGS = {
    "PREPROCESSING_HOOKS": [f"{__name__}.only_this_api"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        f"{__name__}.describe_empty_values",
    ],
}

router = SimpleRouter()
router.register("customer-profiles", views.CustomerProfileViewSet, basename="customerprofile")
router.register("policies", views.PolicyViewSet, basename="policy")
router.register("evaluations", views.EvaluationViewSet, basename="evaluation")

urlpatterns = [
    path(
        "customer-profiles/<str:sid>/evaluations/",
        views.CustomerProfileEvaluationsView.as_view(),
        name="customerprofile-evaluations",
    ),
    path("evaluations/bulk/", views.BulkEvaluationView.as_view(), name="evaluation-bulk"),
    *router.urls,
    # schema=None: these two describe the API rather than being part of it, so any schema of
    # the host's (and drf-spectacular's deploy check) leaves them out, whatever the host's
    # DEFAULT_SCHEMA_CLASS.
    path(
        "schema/",
        SpectacularAPIView.as_view(
            custom_settings=SCHEMA_SETTINGS, schema=None, permission_classes=[SchemaPermission]
        ),
        name="schema",
    ),
    path(
        "docs/",
        SpectacularSwaggerView.as_view(
            url_name=f"{NAMESPACE}:schema", schema=None, permission_classes=[SchemaPermission]
        ),
        name="docs",
    ),
]
