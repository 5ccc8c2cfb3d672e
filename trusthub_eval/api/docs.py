"""The API's own OpenAPI schema and Swagger UI, whatever the host's drf-spectacular settings."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.conf import settings
from django.templatetags.static import static
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.request import Request
from rest_framework.response import Response

import trusthub_eval
from trusthub_eval.api import views
from trusthub_eval.api.pagination import KeysetPagination

TITLE = "TrustHub evaluations API"
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
    # The app's endpoints under its own name and version: a host that never configured
    # drf-spectacular would otherwise serve an empty title and version 0.0.0, and one that did
    # would name our schema after its own API.
    "TITLE": TITLE,
    "DESCRIPTION": "Compliance evaluations of Twilio TrustHub Customer Profiles.",
    "VERSION": trusthub_eval.__version__,
    "PREPROCESSING_HOOKS": [f"{__name__}.only_this_api"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        f"{__name__}.describe_empty_values",
    ],
}


class SchemaView(SpectacularAPIView):
    custom_settings = SCHEMA_SETTINGS


# Swagger UI's files in drf-spectacular-sidecar, by the setting that would say where they are
# and the name the page's template gives each.
SIDECAR_FILES = {
    "SWAGGER_UI_DIST": {
        "swagger_ui_css": "swagger-ui.css",
        "swagger_ui_bundle": "swagger-ui-bundle.js",
        "swagger_ui_standalone": "swagger-ui-standalone-preset.js",
    },
    "SWAGGER_UI_FAVICON_HREF": {"favicon_href": "favicon-32x32.png"},
}


class SwaggerView(SpectacularSwaggerView):
    # Swagger UI's files come from drf-spectacular-sidecar when the host has it among its apps
    # (the `api` extra installs it) and names no place of its own for them: drf-spectacular's
    # default, a CDN, leaves the page blank on a host without internet access. The page's
    # data is changed rather than drf-spectacular's settings, which are global to the process
    # and would change every other schema page the host serves while this one is answered.
    title = TITLE

    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        response: Response = super().get(request, *args, **kwargs)  # type: ignore[no-untyped-call]
        if apps.is_installed("drf_spectacular_sidecar"):
            chosen = getattr(settings, "SPECTACULAR_SETTINGS", {})
            for setting, files in SIDECAR_FILES.items():
                if setting not in chosen:
                    response.data.update(
                        (name, static(f"drf_spectacular_sidecar/swagger-ui-dist/{file}"))
                        for name, file in files.items()
                    )
        return response
