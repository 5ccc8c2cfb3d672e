"""Show the evaluation queue's health: what waits, for how long, and what gave up and why."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from trusthub_eval import queue
from trusthub_eval.conf import app_settings
from trusthub_eval.queue import QueueHealth

_MAX_HOURS = 24 * 366 * 10


class Command(BaseCommand):
    help = (
        "Show how many evaluations are queued or running and for how long, which are overdue or "
        "stuck, and how many failed (and why). With --check, exit 1 when rows are overdue or "
        "stuck: the sweep is not running (no worker?)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print one JSON object.")
        parser.add_argument(
            "--check", action="store_true", help="Exit with an error if rows are overdue or stuck."
        )
        parser.add_argument(
            "--hours",
            type=float,
            default=24.0,
            help="Count the failures of evaluations requested in this many hours (default 24).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not (math.isfinite(options["hours"]) and 0 < options["hours"] <= _MAX_HOURS):
            raise CommandError(f"--hours must be a number of hours between 0 and {_MAX_HOURS}.")
        health = queue.health(
            overdue_after=app_settings.SWEEP_AFTER,
            running_timeout=app_settings.RUNNING_TIMEOUT,
            hours=options["hours"],
        )
        if options["json"]:
            self.stdout.write(json.dumps(dataclasses.asdict(health), default=_iso))
        else:
            self._print(health)
        if options["check"] and health.needs_attention:
            raise CommandError(
                f"{health.overdue} evaluation(s) overdue and {health.stuck} stuck: is a Celery "
                "worker running for this project?"
            )

    def _print(self, health: QueueHealth) -> None:
        now = health.checked_at

        def age(since: datetime.datetime | None) -> str:
            if since is None:
                return ""
            return f" (oldest {_duration(now - since)} ago)"

        write = self.stdout.write
        write(f"Queued:  {health.queued}{age(health.oldest_queued_at)}")
        write(f"Running: {health.running}{age(health.oldest_running_since)}")
        style = self.style.ERROR if health.needs_attention else self.style.SUCCESS
        write(
            style(
                f"Overdue: {health.overdue} queued past their time by more than "
                f"{app_settings.SWEEP_AFTER:.0f}s; stuck: {health.stuck} running longer than "
                f"{app_settings.RUNNING_TIMEOUT:.0f}s"
            )
        )
        by_code = ", ".join(
            f"{'no code' if code is None else code}: {count}"
            for code, count in health.failures_by_code
        )
        detail = f" ({by_code})" if by_code else ""
        write(f"Failed in the last {health.hours:g} h: {health.failed_recently}{detail}")
        if health.duplicates_recently:
            write(
                self.style.ERROR(
                    f"Duplicates created in TrustHub in the last {health.hours:g} h: "
                    f"{health.duplicates_recently} (an answer came for a claim its worker had "
                    "lost; each is kept as a duplicate evaluation, see the admin)"
                )
            )
        if health.may_exist_upstream:
            write(
                self.style.WARNING(
                    f"Failed while TrustHub may hold their evaluation: {health.may_exist_upstream}"
                    " (`manage.py trusthub_sync --evaluations` adopts them)"
                )
            )


def _iso(value: object) -> str:
    """Times as ISO 8601, what a machine reading ``--json`` parses."""
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _duration(delta: datetime.timedelta) -> str:
    seconds = max(int(delta.total_seconds()), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"
