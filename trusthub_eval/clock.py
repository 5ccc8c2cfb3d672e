"""The database's clock: the one clock that decides who holds an evaluation.

Workers run on many machines whose clocks drift (NTP fails, a VM resumes, a container host
lags). Every time that decides who holds a row (claimed, posted, next attempt, stale, overdue,
completed) is therefore computed by the database inside the statement that uses it, never read
from a worker's clock. A worker measures only durations, on its own monotonic clock.
"""

from __future__ import annotations

import datetime
import logging
import time
from typing import Any

from django.db import connections, models
from django.utils import timezone
from django.utils.dateparse import parse_datetime

logger = logging.getLogger(__name__)

#: A worker whose clock is further than this from the database's says so at start-up.
SKEW_WARNING = 2.0

#: Seconds before RUNNING_TIMEOUT at which a worker counts its claim as gone: its monotonic
#: clock and the database's may tick at slightly different rates.
CLAIM_MARGIN = 1.0

# The current time in UTC, at microsecond precision where the database has it, constant within
# one statement. Django's Now() is not this: on MySQL and MariaDB its CURRENT_TIMESTAMP is in
# the session's time zone while Django stores UTC there, and on SQLite, where times are text
# compared as text, its milliseconds are not written as Django writes a datetime (str(): six
# digits of fraction, none when they are all zero), so a claim's time would never equal itself
# read back and written again.
_NOW_SQL = {
    "postgresql": "STATEMENT_TIMESTAMP()",
    "mysql": "UTC_TIMESTAMP(6)",
    "sqlite": (
        "(CASE WHEN STRFTIME('%%f', 'now') LIKE '%%.000' "
        "THEN STRFTIME('%%Y-%%m-%%d %%H:%%M:%%S', 'now') "
        "ELSE STRFTIME('%%Y-%%m-%%d %%H:%%M:%%f', 'now') || '000' END)"
    ),
}


def now_sql(vendor: str) -> str:
    """The SQL of the database's current time, as a Python %-format (``%`` doubled)."""
    try:
        return _NOW_SQL[vendor]
    except KeyError:
        raise NotImplementedError(f"No database clock for {vendor!r} databases.") from None


class DatabaseNow(models.Func):
    """The database's current time (UTC), the same for every use within one statement."""

    output_field = models.DateTimeField()

    def as_sql(
        self,
        compiler: Any,
        connection: Any,
        function: str | None = None,
        template: str | None = None,
        arg_joiner: str | None = None,
        **extra_context: Any,
    ) -> tuple[str, tuple[Any, ...]]:
        return now_sql(connection.vendor), ()


def ago(seconds: float) -> models.Expression:
    """The database's time ``seconds`` ago."""
    return models.ExpressionWrapper(
        DatabaseNow() - models.Value(datetime.timedelta(seconds=seconds)),
        output_field=models.DateTimeField(),
    )


def later(seconds: float) -> models.Expression:
    """The database's time in ``seconds``."""
    return models.ExpressionWrapper(
        DatabaseNow() + models.Value(datetime.timedelta(seconds=seconds)),
        output_field=models.DateTimeField(),
    )


def database_now(using: str = "default") -> datetime.datetime:
    """Ask the database what time it is (aware, UTC)."""
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute("SELECT " + now_sql(connection.vendor).replace("%%", "%"))
        (value,) = cursor.fetchone()
    if isinstance(value, str):  # SQLite
        value = parse_datetime(value)
    assert isinstance(value, datetime.datetime)
    if timezone.is_naive(value):
        value = timezone.make_aware(value, datetime.UTC)
    return value


def skew(using: str = "default") -> float:
    """How many seconds this process's clock is ahead of the database's (negative: behind),
    to within half the query's round trip."""
    before = time.time()
    database = database_now(using).timestamp()
    after = time.time()
    return (before + after) / 2 - database


def warn_if_skewed(using: str = "default") -> float:
    """Measure :func:`skew` and log it at WARNING when it is over :data:`SKEW_WARNING`."""
    seconds = skew(using)
    if abs(seconds) > SKEW_WARNING:
        logger.warning(
            "This worker's clock is %.1f s %s the database's. Evaluations are claimed and timed "
            "by the database's clock, so this is safe for them, but Celery's countdowns and "
            "this worker's log times use this clock: check its time synchronisation (NTP).",
            abs(seconds),
            "ahead of" if seconds > 0 else "behind",
        )
    return seconds
