"""URLs of the API; a host mounts them, e.g. ``path("api/", include("trusthub_eval.api.urls"))``."""

from __future__ import annotations

from django.urls import path
from rest_framework.routers import SimpleRouter

from trusthub_eval.api import docs, views
from trusthub_eval.api.permissions import SchemaPermission
from trusthub_eval.api.serializers import NAMESPACE

app_name = NAMESPACE

router = SimpleRouter()
router.register("customer-profiles", views.CustomerProfileViewSet, basename="customerprofile")
router.register("trust-products", views.TrustProductViewSet, basename="trustproduct")
router.register("policies", views.PolicyViewSet, basename="policy")
router.register("evaluations", views.EvaluationViewSet, basename="evaluation")

urlpatterns = [
    path(
        "customer-profiles/<str:sid>/evaluations/",
        views.CustomerProfileEvaluationsView.as_view(),
        name="customerprofile-evaluations",
    ),
    path(
        "trust-products/<str:sid>/evaluations/",
        views.TrustProductEvaluationsView.as_view(),
        name="trustproduct-evaluations",
    ),
    path("evaluations/bulk/", views.BulkEvaluationView.as_view(), name="evaluation-bulk"),
    *router.urls,
    # schema=None: these two describe the API rather than being part of it, so any schema of
    # the host's (and drf-spectacular's deploy check) leaves them out, whatever the host's
    # DEFAULT_SCHEMA_CLASS.
    path(
        "schema/",
        docs.SchemaView.as_view(schema=None, permission_classes=[SchemaPermission]),
        name="schema",
    ),
    path(
        "docs/",
        docs.SwaggerView.as_view(
            url_name=f"{NAMESPACE}:schema", schema=None, permission_classes=[SchemaPermission]
        ),
        name="docs",
    ),
]
