"""The app's settings: one lazy object over the host project's ``TRUSTHUB_EVAL`` dict."""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings

TWILIO_BASE_URL = "https://trusthub.twilio.com"

DEFAULTS: dict[str, Any] = {
    # Credentials: an Account SID + Auth Token, or an API Key SID + secret (requests still go to
    # the account's resources). Unset values fall back to the TWILIO_* variables Twilio's SDK reads.
    "ACCOUNT_SID": None,
    "AUTH_TOKEN": None,
    "API_KEY_SID": None,
    "API_KEY_SECRET": None,
    "BASE_URL": TWILIO_BASE_URL,
    # (connect, read) timeouts in seconds for every call to TrustHub.
    "CONNECT_TIMEOUT": 5.0,
    "READ_TIMEOUT": 30.0,
    "PAGE_SIZE": 100,
    # Attempts per evaluation, counting the first, before it is recorded as failed.
    "MAX_ATTEMPTS": 6,
    # Exponential backoff with full jitter: base * 2**(attempt - 1), capped. Keep the cap well
    # below the broker's visibility timeout (Redis' default is one hour).
    "RETRY_BACKOFF": 2.0,
    "RETRY_BACKOFF_MAX": 300.0,
    # A row left in "running" longer than this (a worker died mid-call) may be claimed again.
    "RUNNING_TIMEOUT": 300.0,
    # Every worker sends a sweep this often (seconds; None: never) that sends again the
    # evaluations whose message was lost: queued and overdue by more than SWEEP_AFTER seconds,
    # or running past RUNNING_TIMEOUT.
    "SWEEP_INTERVAL": 60.0,
    "SWEEP_AFTER": 120.0,
    # How far TrustHub's date_created may precede our own clock when an ambiguous POST is
    # reconciled by listing the profile's evaluations (TrustHub's timestamps are whole seconds).
    "RECONCILE_CLOCK_SKEW": 120.0,
    # For this long after a POST whose answer was lost, an attempt whose listing fails (a GET,
    # safe to repeat) does not count toward MAX_ATTEMPTS: giving up then would leave TrustHub's
    # evaluation unrecorded. Past it, such attempts count again.
    "RECONCILE_TIMEOUT": 3600.0,
    # Policy used when a profile's own policy is unknown and none is given.
    "DEFAULT_POLICY_SID": None,
    # Concurrent TrustHub requests allowed across every process (Twilio answers 429 past the
    # account's limit). None: no cap of our own. Needs a Redis URL to share the count.
    "CONCURRENCY_LIMIT": None,
    "CONCURRENCY_REDIS_URL": None,
    # How long a request waits for a free slot before it is retried later instead.
    "CONCURRENCY_WAIT": 10.0,
    # Celery queue the evaluation tasks are sent to (None: the default queue).
    "TASK_QUEUE": None,
}

_ENV_FALLBACKS = {
    "ACCOUNT_SID": "TWILIO_ACCOUNT_SID",
    "AUTH_TOKEN": "TWILIO_AUTH_TOKEN",
    "API_KEY_SID": "TWILIO_API_KEY",
    "API_KEY_SECRET": "TWILIO_API_SECRET",
}


class AppSettings:
    """Reads ``settings.TRUSTHUB_EVAL`` on every access, so ``override_settings`` just works."""

    def _get(self, name: str) -> Any:
        user = getattr(settings, "TRUSTHUB_EVAL", None) or {}
        value = user.get(name, DEFAULTS[name])
        if value in (None, "") and name in _ENV_FALLBACKS:
            value = os.environ.get(_ENV_FALLBACKS[name]) or None
        return value

    def source_of(self, name: str) -> str | None:
        """Where a credential's value comes from, for messages: the setting or the environment
        variable (never the value); None if neither sets it."""
        user = getattr(settings, "TRUSTHUB_EVAL", None) or {}
        if user.get(name) not in (None, ""):
            return f"TRUSTHUB_EVAL['{name}']"
        variable = _ENV_FALLBACKS.get(name)
        if variable and os.environ.get(variable):
            return f"the environment variable {variable}"
        return None

    @property
    def ACCOUNT_SID(self) -> str | None:
        return self._get("ACCOUNT_SID")  # type: ignore[no-any-return]

    @property
    def AUTH_TOKEN(self) -> str | None:
        return self._get("AUTH_TOKEN")  # type: ignore[no-any-return]

    @property
    def API_KEY_SID(self) -> str | None:
        return self._get("API_KEY_SID")  # type: ignore[no-any-return]

    @property
    def API_KEY_SECRET(self) -> str | None:
        return self._get("API_KEY_SECRET")  # type: ignore[no-any-return]

    @property
    def BASE_URL(self) -> str:
        return str(self._get("BASE_URL") or TWILIO_BASE_URL).rstrip("/")

    @property
    def CONNECT_TIMEOUT(self) -> float:
        return float(self._get("CONNECT_TIMEOUT"))

    @property
    def READ_TIMEOUT(self) -> float:
        return float(self._get("READ_TIMEOUT"))

    @property
    def PAGE_SIZE(self) -> int:
        return int(self._get("PAGE_SIZE"))

    @property
    def MAX_ATTEMPTS(self) -> int:
        return int(self._get("MAX_ATTEMPTS"))

    @property
    def RETRY_BACKOFF(self) -> float:
        return float(self._get("RETRY_BACKOFF"))

    @property
    def RETRY_BACKOFF_MAX(self) -> float:
        return float(self._get("RETRY_BACKOFF_MAX"))

    @property
    def RUNNING_TIMEOUT(self) -> float:
        return float(self._get("RUNNING_TIMEOUT"))

    @property
    def SWEEP_INTERVAL(self) -> float | None:
        value = self._get("SWEEP_INTERVAL")
        return float(value) if value else None

    @property
    def SWEEP_AFTER(self) -> float:
        return float(self._get("SWEEP_AFTER"))

    @property
    def RECONCILE_CLOCK_SKEW(self) -> float:
        return float(self._get("RECONCILE_CLOCK_SKEW"))

    @property
    def RECONCILE_TIMEOUT(self) -> float:
        return float(self._get("RECONCILE_TIMEOUT"))

    @property
    def DEFAULT_POLICY_SID(self) -> str | None:
        return self._get("DEFAULT_POLICY_SID")  # type: ignore[no-any-return]

    @property
    def CONCURRENCY_LIMIT(self) -> int | None:
        value = self._get("CONCURRENCY_LIMIT")
        return None if value is None else int(value)

    @property
    def CONCURRENCY_REDIS_URL(self) -> str | None:
        return self._get("CONCURRENCY_REDIS_URL")  # type: ignore[no-any-return]

    @property
    def CONCURRENCY_WAIT(self) -> float:
        return float(self._get("CONCURRENCY_WAIT"))

    @property
    def TASK_QUEUE(self) -> str | None:
        return self._get("TASK_QUEUE")  # type: ignore[no-any-return]

    @property
    def uses_twilio(self) -> bool:
        """Whether calls go to Twilio itself rather than a sandbox or mock."""
        return self.BASE_URL == TWILIO_BASE_URL


app_settings = AppSettings()
