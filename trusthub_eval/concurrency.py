"""A cap on concurrent TrustHub requests shared by every process of a fleet, kept in Redis.

Twilio limits concurrent requests per account and answers 429 (code 20429) past the limit.
Each worker and web process takes a slot here before a request and gives it back after, so a
fleet stays under the cap instead of learning about it from 429s. A slot is a member of a sorted
set scored by Redis' own clock; a slot whose holder died is reclaimed once its lease runs out.

One round trip to take a slot and one to give it back, each a script Redis keeps by its hash
(EVALSHA). Giving a slot back also pushes a wake-up on a list on which callers waiting for a
slot block (BLPOP), so a freed slot is taken at once rather than at the next poll.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from trusthub_eval.conf import app_settings
from trusthub_eval.exceptions import ConcurrencyLimited

# The longest a waiter blocks before asking again, in case a wake-up went to a caller that did
# not need it any more or a dead holder's lease ran out (which wakes nobody).
POLL = 0.1

# KEYS[1]: the sorted set; ARGV: token, limit, lease (ms). Returns 1 when the slot is taken.
_ACQUIRE = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - tonumber(ARGV[3]))
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now_ms, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
  return 1
end
return 0
"""

# KEYS[1]: the sorted set, KEYS[2]: the wake-up list; ARGV: token, limit, lease (ms).
_RELEASE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], 1)
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[3]) * 2)
end
return 0
"""


class RedisConcurrencyLimiter:
    """At most ``limit`` requests in flight at once for one account, across processes."""

    def __init__(
        self,
        url: str,
        limit: int,
        *,
        account: str,
        lease: float,
        wait: float,
        client: Any = None,
        poll: float = POLL,
    ) -> None:
        import redis  # an optional dependency: trusthub-eval[redis]

        self.limit = limit
        self.lease_ms = int(lease * 1000)
        self.wait = wait
        self.poll = poll
        self.key = f"trusthub_eval:concurrency:{account}"
        self._keys = [self.key, f"{self.key}:freed"]
        self._redis = client or redis.Redis.from_url(url)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._release = self._redis.register_script(_RELEASE)

    def __repr__(self) -> str:
        return f"<RedisConcurrencyLimiter {self.key} limit={self.limit}>"

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one slot for the duration of the block; raise ConcurrencyLimited if none frees."""
        token = uuid.uuid4().hex
        args: list[str | int] = [token, self.limit, self.lease_ms]
        deadline = time.monotonic() + self.wait
        while not self._acquire(keys=self._keys[:1], args=args):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConcurrencyLimited(
                    f"No free slot under the concurrency limit of {self.limit} "
                    f"within {self.wait:.0f}s."
                )
            self._redis.blpop(self._keys[1:], timeout=min(remaining, self.poll))
        try:
            yield
        finally:
            self._release(keys=self._keys, args=args)

    def in_use(self) -> int:
        """Slots held now (including expired ones not yet reclaimed)."""
        return int(self._redis.zcard(self.key))


def limiter_from_settings() -> RedisConcurrencyLimiter | None:
    """The configured limiter, or None when ``CONCURRENCY_LIMIT`` is not set."""
    limit = app_settings.CONCURRENCY_LIMIT
    if not limit:
        return None
    url = app_settings.CONCURRENCY_REDIS_URL
    if not url:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(
            "TRUSTHUB_EVAL['CONCURRENCY_LIMIT'] needs TRUSTHUB_EVAL['CONCURRENCY_REDIS_URL']."
        )
    account = app_settings.ACCOUNT_SID or app_settings.API_KEY_SID or "default"
    return RedisConcurrencyLimiter(
        url,
        limit,
        account=account,
        # A holder that died frees its slot once a whole request could have finished.
        lease=app_settings.CONNECT_TIMEOUT + app_settings.READ_TIMEOUT + 5,
        wait=app_settings.CONCURRENCY_WAIT,
    )
