"""A cap on concurrent TrustHub requests shared by every process of a fleet, kept in Redis.

Twilio limits concurrent requests per account and answers 429 (code 20429) past the limit.
Each worker and web process takes a slot here before a request and gives it back after, so a
fleet stays under the cap instead of learning about it from 429s. A slot is a member of a sorted
set scored by Redis' own clock; a slot whose holder died is reclaimed once its lease runs out.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from trusthub_eval.conf import app_settings
from trusthub_eval.exceptions import ConcurrencyLimited

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
    ) -> None:
        import redis  # an optional dependency: trusthub-eval[redis]

        self.limit = limit
        self.lease_ms = int(lease * 1000)
        self.wait = wait
        self.key = f"trusthub_eval:concurrency:{account}"
        self._redis = client or redis.Redis.from_url(url)
        self._acquire = self._redis.register_script(_ACQUIRE)

    def __repr__(self) -> str:
        return f"<RedisConcurrencyLimiter {self.key} limit={self.limit}>"

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one slot for the duration of the block; raise ConcurrencyLimited if none frees."""
        token = uuid.uuid4().hex
        deadline = time.monotonic() + self.wait
        while not self._acquire(keys=[self.key], args=[token, self.limit, self.lease_ms]):
            if time.monotonic() >= deadline:
                raise ConcurrencyLimited(
                    f"No free slot under the concurrency limit of {self.limit} "
                    f"within {self.wait:.0f}s."
                )
            time.sleep(random.uniform(0.02, 0.1))  # noqa: S311 (jitter, not cryptography)
        try:
            yield
        finally:
            self._redis.zrem(self.key, token)

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
