"""Put on a worker's PYTHONPATH: its clock (``time.time`` and ``datetime.now``) is off by
TRUSTHUB_TEST_CLOCK_OFFSET seconds, as on a machine whose clock drifted.

Debian's libfaketime does the same below Python, but breaks Python's ``time.sleep()`` there
(``OSError: [Errno 22]``), which Celery's timer threads need.
"""

import datetime
import os
import time

_OFFSET = float(os.environ.get("TRUSTHUB_TEST_CLOCK_OFFSET") or 0)
_time, _time_ns = time.time, time.time_ns
_SHIFT = datetime.timedelta(seconds=_OFFSET)


def _skewed_time() -> float:
    return _time() + _OFFSET


def _skewed_time_ns() -> int:
    return _time_ns() + int(_OFFSET * 1_000_000_000)


class _SkewedDatetime(datetime.datetime):
    @classmethod
    def now(cls, tz=None):  # type: ignore[no-untyped-def]
        return datetime.datetime.fromtimestamp(_skewed_time(), tz)

    @classmethod
    def utcnow(cls):  # type: ignore[no-untyped-def]
        return datetime.datetime.fromtimestamp(_skewed_time(), datetime.UTC).replace(tzinfo=None)


if _OFFSET:
    time.time = _skewed_time
    time.time_ns = _skewed_time_ns
    datetime.datetime = _SkewedDatetime  # type: ignore[misc]
