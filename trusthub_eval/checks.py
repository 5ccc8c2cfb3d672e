"""System checks for the app's settings."""

from __future__ import annotations

from typing import Any

from django.core.checks import Error, Warning, register
from django.core.exceptions import ImproperlyConfigured

from trusthub_eval.client import longest_call, validate_base_url
from trusthub_eval.clock import CLAIM_MARGIN
from trusthub_eval.conf import DEFAULTS, app_settings
from trusthub_eval.credentials import credential_problem
from trusthub_eval.sids import SidKind, is_sid

_SID_SETTINGS = {
    "ACCOUNT_SID": SidKind.ACCOUNT,
    "API_KEY_SID": SidKind.API_KEY,
    "DEFAULT_POLICY_SID": SidKind.POLICY,
}


@register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Error | Warning]:
    from django.conf import settings

    errors: list[Error | Warning] = []
    user = getattr(settings, "TRUSTHUB_EVAL", {})
    if not isinstance(user, dict):
        return [
            Error(
                "TRUSTHUB_EVAL must be a dict.",
                hint="Set TRUSTHUB_EVAL = {...} in your settings.",
                id="trusthub_eval.E001",
            )
        ]
    unknown = sorted(set(user) - set(DEFAULTS))
    if unknown:
        errors.append(
            Warning(
                f"Unknown TRUSTHUB_EVAL keys: {', '.join(unknown)}.",
                hint=f"Known keys: {', '.join(sorted(DEFAULTS))}.",
                id="trusthub_eval.W001",
            )
        )
    for name, kind in _SID_SETTINGS.items():
        value = getattr(app_settings, name)
        if value and not is_sid(value, kind):
            errors.append(
                Error(
                    f"TRUSTHUB_EVAL['{name}'] is not a valid {kind.label}.",
                    hint=f"Use '{kind.value}' followed by 32 hexadecimal digits.",
                    id="trusthub_eval.E002",
                )
            )
    for name in ("AUTH_TOKEN", "API_KEY_SECRET"):
        problem = credential_problem(getattr(app_settings, name))
        if problem:
            errors.append(
                Error(
                    f"TRUSTHUB_EVAL['{name}'] (or its TWILIO_* variable) {problem}.",
                    hint="Copy the value again from Twilio's console; it is printable ASCII.",
                    id="trusthub_eval.E007",
                )
            )
    try:
        validate_base_url(app_settings.BASE_URL)
    except ImproperlyConfigured as error:
        # The client's own rule and message (which never repeats the URL: it may hold
        # credentials).
        errors.append(Error(str(error), id="trusthub_eval.E004"))
    limit = user.get("CONCURRENCY_LIMIT")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        errors.append(
            Error(
                "TRUSTHUB_EVAL['CONCURRENCY_LIMIT'] must be a positive integer or None.",
                id="trusthub_eval.E005",
            )
        )
    elif limit and not app_settings.CONCURRENCY_REDIS_URL:
        errors.append(
            Error(
                "CONCURRENCY_LIMIT is set without CONCURRENCY_REDIS_URL.",
                hint=(
                    "The cap is shared by every worker through Redis: set "
                    "TRUSTHUB_EVAL['CONCURRENCY_REDIS_URL'] (e.g. redis://localhost:6379/0)."
                ),
                id="trusthub_eval.E006",
            )
        )
    # A worker posts only if its call is sure to end before its claim can be taken over
    # (trusthub_eval.queue.run_evaluation).
    longest = longest_call(app_settings.CONNECT_TIMEOUT, app_settings.READ_TIMEOUT)
    if longest > app_settings.RUNNING_TIMEOUT - CLAIM_MARGIN:
        errors.append(
            Error(
                f"RUNNING_TIMEOUT ({app_settings.RUNNING_TIMEOUT:g}s) leaves no time for a POST "
                f"to TrustHub, which may take CONNECT_TIMEOUT + 2 x READ_TIMEOUT "
                f"({longest:g}s): no evaluation could ever be sent.",
                hint=(
                    "Raise TRUSTHUB_EVAL['RUNNING_TIMEOUT'] well above that (the default is "
                    "300s), or lower the timeouts."
                ),
                id="trusthub_eval.E008",
            )
        )
    if app_settings.RETRY_BACKOFF_MAX >= 3600:
        errors.append(
            Warning(
                "RETRY_BACKOFF_MAX is an hour or more.",
                hint=(
                    "Keep retry countdowns below the broker's visibility timeout (Redis and SQS "
                    "default to one hour), or delayed messages are delivered twice."
                ),
                id="trusthub_eval.W003",
            )
        )
    return errors


@register(deploy=True)
def check_credentials(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """E003, a deployment check: credentials are needed by the processes that call TrustHub
    (workers, ``trusthub_sync``), not by ``migrate``, the web process or the sandbox, and a
    project that wants the sandbox has none yet. Without them, those calls fail with the
    client's ImproperlyConfiguredCredentials, which says what to set."""
    has_token = bool(app_settings.ACCOUNT_SID and app_settings.AUTH_TOKEN)
    has_key = bool(app_settings.API_KEY_SID and app_settings.API_KEY_SECRET)
    if not app_settings.uses_twilio or has_token or has_key:
        return []
    return [
        Error(
            "No TrustHub credentials while BASE_URL is Twilio's.",
            hint=(
                "Set TRUSTHUB_EVAL['ACCOUNT_SID'] and ['AUTH_TOKEN'] (or ['API_KEY_SID'] and "
                "['API_KEY_SECRET']), or the TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN "
                "(TWILIO_API_KEY / TWILIO_API_SECRET) environment variables; or point BASE_URL "
                "at the sandbox (manage.py trusthub_sandbox prints its settings)."
            ),
            id="trusthub_eval.E003",
        )
    ]
