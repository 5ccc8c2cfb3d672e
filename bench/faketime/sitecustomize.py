"""On the path of the clock-skew scenario's workers only (bench/faults.py): ``time.sleep`` that
works under libfaketime.

Python's ``time.sleep`` waits with ``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)``, which
libfaketime 0.9.10 (Debian 12's) gets wrong when the monotonic clock is left real
(``FAKETIME_DONT_FAKE_MONOTONIC=1``): it moves the deadline by the fake offset, so a sleep fails
with EINVAL, returns at once or lasts minutes. ``select`` with a timeout is left alone, so sleep
with that instead. Nothing else is changed: the wall clock stays skewed.
"""

import os
import select
import time

if os.environ.get("FAKETIME"):

    def _sleep(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            select.select([], [], [], left)

    time.sleep = _sleep
