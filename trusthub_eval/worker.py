"""What the app does inside every Celery worker: sweep for evaluations whose message was lost.

A message can be lost (the broker restarted, a worker was killed under Redis' one-hour
visibility timeout, the broker was down at request time, a retry could not be published). The
row is the record, so every worker sends the sweep task when it is ready and then every
``SWEEP_INTERVAL`` seconds; no beat schedule is needed for it.
"""

from __future__ import annotations

import logging
from typing import Any

from trusthub_eval import dispatch
from trusthub_eval.conf import app_settings

logger = logging.getLogger(__name__)


def start_sweeping(sender: Any = None, **kwargs: Any) -> None:
    """``worker_ready`` receiver: sweep now, then every SWEEP_INTERVAL seconds from the
    worker's own timer (the consumer's, which Celery's heartbeats use too)."""
    interval = app_settings.SWEEP_INTERVAL
    if not interval:
        return
    timer = getattr(sender, "timer", None)
    if timer is None:  # pragma: no cover (every Celery consumer has one)
        logger.warning("No worker timer: the TrustHub sweep will not run in this worker.")
        return
    dispatch.send_sweep()
    timer.call_repeatedly(interval, dispatch.send_sweep)
    logger.info("TrustHub sweep every %.0fs", interval)
