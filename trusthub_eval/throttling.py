"""The throttle on requesting evaluations (API and admin), a no-op when the host sets no rate."""

from __future__ import annotations

from typing import Any, cast

from django.http import HttpRequest
from rest_framework.permissions import SAFE_METHODS
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle
from rest_framework.views import APIView

TRIGGER_SCOPE = "trusthub_eval_trigger"


class TriggerRateThrottle(SimpleRateThrottle):
    """Limits POSTs that queue evaluations, per user, at ``DEFAULT_THROTTLE_RATES[scope]``.

    Each evaluation costs a TrustHub call against the account's concurrency cap, so a runaway
    client should not fill the queue. Unlike DRF's ``ScopedRateThrottle`` it does not raise
    ImproperlyConfigured when the host sets no rate for the scope: then nothing is throttled.
    """

    scope = TRIGGER_SCOPE

    def get_rate(self) -> str | None:
        # Read on each request, not from the class attribute DRF fills at import, so that
        # override_settings(REST_FRAMEWORK=...) applies.
        rates: dict[str, Any] = api_settings.DEFAULT_THROTTLE_RATES or {}
        rate = rates.get(self.scope)
        return str(rate) if rate else None

    def get_cache_key(self, request: Request, view: APIView) -> str | None:
        if request.method in SAFE_METHODS:
            return None
        user = request.user
        ident = user.pk if user is not None and user.is_authenticated else self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}


def trigger_wait(request: HttpRequest) -> float | None:
    """Count one request of evaluations by ``request.user`` outside the API (the admin).

    The same throttle, rate and per-user count as the API's triggers, so that neither door is a
    way around the other. None when allowed; else the seconds to wait.
    """
    throttle = TriggerRateThrottle()
    # It reads only the method, the user and REMOTE_ADDR, which a Django request has too.
    drf_request = cast(Request, request)
    if throttle.allow_request(drf_request, cast(APIView, None)):
        return None
    return throttle.wait() or 1.0
