"""Settings of the fault benchmark's driver and workers: the example project's, tuned for minutes.

``project.settings`` reads DATABASE_URL, CELERY_BROKER_URL, TRUSTHUB_BASE_URL and
TRUSTHUB_SANDBOX_WORLD (the sandbox's credentials) from the environment, which bench/faults.py
sets. On top: short timeouts and backoff, and any TRUSTHUB_EVAL keys given as a JSON object in
BENCH_TRUSTHUB_EVAL (``--setting KEY=VALUE`` of bench/faults.py). A key this version of the app
does not know is harmless: its system check only warns (trusthub_eval.W001).

It also logs, in each worker, every sweep task (``trusthub_eval.resume_queued``) it publishes,
with the task's id, so that bench/faults.py can measure how long a sweep waits in the queue.
"""

import json
import logging
import os
from typing import Any

from celery.signals import after_task_publish

from project.settings import *  # noqa: F403
from project.settings import TRUSTHUB_EVAL as _PROJECT_TRUSTHUB_EVAL

# As in production: no query log growing in long-lived workers, no debug pages.
DEBUG = False

TRUSTHUB_EVAL = {
    **_PROJECT_TRUSTHUB_EVAL,
    "CONNECT_TIMEOUT": 2.0,
    # The proxy's stalls last longer than this, so a stalled answer ends in a read timeout.
    "READ_TIMEOUT": 2.0,
    "RETRY_BACKOFF": 0.5,
    "RETRY_BACKOFF_MAX": 5.0,
    # A running row whose worker died may be claimed again after this (no attempt lasts
    # longer: a few calls of at most 2 + 2 s). The driver's patience, --idle (90 s), must stay
    # above this or SWEEP_AFTER, plus SWEEP_INTERVAL.
    "RUNNING_TIMEOUT": 30.0,
    # For versions whose workers sweep for lost rows themselves (every SWEEP_INTERVAL seconds,
    # queued rows overdue by SWEEP_AFTER); older ones ignore them. Retries here wait 5 s at
    # most, so a queued row 20 s overdue has lost its message.
    "SWEEP_INTERVAL": 15.0,
    "SWEEP_AFTER": 20.0,
    **json.loads(os.environ.get("BENCH_TRUSTHUB_EVAL") or "{}"),
}


def _log_sweep_sent(sender: object = None, headers: Any = None, **kwargs: Any) -> None:
    # So that bench/faults.py can tell how long a sweep waited in the queue: Celery logs when a
    # task is received and when it succeeded, not when it was sent. (Message protocol 2: the
    # task's id is in the headers.)
    if sender == "trusthub_eval.resume_queued":
        task_id = (headers or {}).get("id")
        logging.getLogger("bench").info("Bench: sent trusthub_eval.resume_queued[%s]", task_id)


after_task_publish.connect(_log_sweep_sent, weak=False)
