"""The trigger throttle, shared with the admin: defined in :mod:`trusthub_eval.throttling`."""

from __future__ import annotations

from trusthub_eval.throttling import TRIGGER_SCOPE, TriggerRateThrottle, trigger_wait

__all__ = ["TRIGGER_SCOPE", "TriggerRateThrottle", "trigger_wait"]
