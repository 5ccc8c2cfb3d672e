"""The suite's URLs: the admin and the API, where a host mounts them."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("trusthub_eval.api.urls")),
]
