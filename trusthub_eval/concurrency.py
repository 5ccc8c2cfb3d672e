"""A cap on concurrent TrustHub requests shared by every process of a fleet, kept in Redis.

Twilio limits concurrent requests per account and answers 429 (code 20429) past the limit.
Each worker and web process takes a slot here before a request and gives it back after, so a
fleet stays under the cap instead of learning about it from 429s. A slot is a member of a sorted
set scored by Redis' own clock; a slot whose holder died is reclaimed once its lease runs out.

Taking a slot is a script Redis keeps by its hash (EVALSHA). Its round trip is spent on the
caller's own work: ``slot(meanwhile)`` writes the request for a slot, runs ``meanwhile`` (the
client prepares its HTTP request there) while Redis answers, then reads the answer, so the
round trip overlaps work the call does anyway. Giving the slot back is another script, written
without waiting for its answer (see ``_Line``); it also pushes a wake-up on a list on which
callers waiting for a slot block (BLPOP), so a freed slot is taken at once rather than at the
next poll.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from trusthub_eval.conf import app_settings
from trusthub_eval.exceptions import ConcurrencyLimited

logger = logging.getLogger(__name__)

T = TypeVar("T")

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

# KEYS[1]: the sorted set, KEYS[2]: the wake-up list; ARGV: limit, lease (ms), tokens...
# Returns how many slots were given back (a token whose lease ran out is no longer there).
_RELEASE = """
local freed = redis.call('ZREM', KEYS[1], unpack(ARGV, 3))
for _ = 1, freed do
  redis.call('RPUSH', KEYS[2], 1)
end
if freed > 0 then
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[1]), -1)
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]) * 2)
end
return freed
"""


class _Line:
    """One thread's own connection to Redis, on which giving a slot back does not wait.

    The release is written and its answer left unread until the line's next command, by which
    time it has long arrived: a call waits for one round trip (taking the slot), not two. Redis
    applies the release as soon as it reads it, so the slot is free at once. Made again in a
    forked process, whose parent's socket it must not share.
    """

    def __init__(self, pool: Any) -> None:
        self.pid = os.getpid()
        self.connection = pool.connection_class(**pool.connection_kwargs)
        self.unanswered: list[list[str | int]] = []  # the releases written, oldest first


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
        self._errors = (redis.ConnectionError, redis.TimeoutError)
        self._no_script = redis.exceptions.NoScriptError
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"<RedisConcurrencyLimiter {self.key} limit={self.limit}>"

    @contextlib.contextmanager
    def slot(self, meanwhile: Callable[[], T] | None = None) -> Iterator[T | None]:
        """Hold one slot for the duration of the block; raise ConcurrencyLimited if none frees.

        ``meanwhile``, if given, runs while Redis answers the first request for a slot, and the
        block gets what it returned. If it raises, a slot it was given is given back. It must
        not use this limiter: its answer is still on the way on this thread's line.
        """
        token = uuid.uuid4().hex
        deadline = time.monotonic() + self.wait
        acquire: list[str | int] = [token, self.limit, self.lease_ms]
        line = self._send(*self._evalsha(_ACQUIRE, [self.key], acquire))
        try:
            result = meanwhile() if meanwhile is not None else None
        except BaseException:
            # Its error is the one to raise; a slot Redis could not tell about expires.
            with contextlib.suppress(*self._errors):
                if self._receive_script(line, _ACQUIRE, [self.key], acquire):
                    self._release(token)
            raise
        taken = self._receive_script(line, _ACQUIRE, [self.key], acquire)
        while not taken:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConcurrencyLimited(
                    f"No free slot under the concurrency limit of {self.limit} "
                    f"within {self.wait:.0f}s."
                )
            self._command("BLPOP", self._keys[1], min(remaining, self.poll))
            taken = self._script(_ACQUIRE, [self.key], acquire)
        try:
            yield result
        finally:
            self._release(token)

    def in_use(self) -> int:
        """Slots held now (including expired ones not yet reclaimed)."""
        return int(self._command("ZCARD", self.key))

    # This thread's line -----------------------------------------------------------------------

    def _line(self) -> _Line:
        line: _Line | None = getattr(self._local, "line", None)
        if line is None or line.pid != os.getpid():
            line = self._local.line = _Line(self._redis.connection_pool)
        return line

    def _command(self, *args: Any) -> Any:
        """Send a command on this thread's line and return its answer."""
        return self._receive(self._send(*args))

    def _send(self, *args: Any) -> _Line:
        """Write a command on this thread's line, behind the releases still unanswered."""
        line = self._line()
        try:
            line.connection.send_packed_command([_pack(args)])
        except self._errors as error:
            self._drop(line, error)
            raise
        return line

    def _receive(self, line: _Line) -> Any:
        """The answer to the command written last by ``_send``; the answers to the releases
        written before it are read first (one round trip for all of them)."""
        try:
            again = self._read_releases(line)
            try:
                return line.connection.read_response()
            finally:
                for release in again:
                    self._send_release(line, release, script=True)
        except self._errors as error:
            self._drop(line, error)
            raise

    def _script(self, script: str, keys: list[str], args: list[str | int]) -> Any:
        return self._receive_script(
            self._send(*self._evalsha(script, keys, args)), script, keys, args
        )

    def _receive_script(
        self, line: _Line, script: str, keys: list[str], args: list[str | int]
    ) -> Any:
        """The answer to ``_evalsha(script, keys, args)`` written on ``line``; sent again with the
        script loaded if Redis no longer had it."""
        try:
            return self._receive(line)
        except self._no_script:  # Redis restarted, or its scripts were flushed
            self._command("SCRIPT", "LOAD", script)
            return self._command(*self._evalsha(script, keys, args))

    @staticmethod
    def _evalsha(script: str, keys: list[str], args: list[str | int]) -> list[Any]:
        return ["EVALSHA", _sha(script), len(keys), *keys, *args]

    def _release(self, token: str) -> None:
        """Give a slot back without waiting for Redis' answer."""
        line = self._line()
        try:
            self._send_release(line, [self.limit, self.lease_ms, token], script=False)
        except self._errors as error:
            self._drop(line, error)

    def _send_release(self, line: _Line, args: list[str | int], *, script: bool) -> None:
        if script:  # after NOSCRIPT: the script itself, and its answer awaited
            line.connection.send_packed_command([_pack(["EVAL", _RELEASE, 2, *self._keys, *args])])
            line.connection.read_response()
        else:
            line.connection.send_packed_command([_pack(self._evalsha(_RELEASE, self._keys, args))])
            line.unanswered.append(args)

    def _read_releases(self, line: _Line) -> list[list[str | int]]:
        """Read the answers to the line's releases; those Redis lacked the script for."""
        again = []
        while line.unanswered:
            release = line.unanswered.pop(0)
            try:
                line.connection.read_response()
            except self._no_script:
                again.append(release)
        return again

    def _drop(self, line: _Line, error: Exception) -> None:
        if line.unanswered:
            logger.warning(
                "Could not give back %d concurrency slot(s) (%s); they expire with their lease.",
                len(line.unanswered),
                type(error).__name__,
            )
            line.unanswered.clear()
        line.connection.disconnect()


@functools.cache
def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()  # noqa: S324


def _pack(args: Sequence[str | int | float]) -> bytes:
    """A command in Redis' protocol (RESP): what redis-py's ``pack_command`` writes for these
    argument types, at a fraction of its cost."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else repr(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


_limiters: dict[tuple[Any, ...], RedisConcurrencyLimiter] = {}
_limiters_lock = threading.Lock()


def limiter_from_settings() -> RedisConcurrencyLimiter | None:
    """The configured limiter, or None when ``CONCURRENCY_LIMIT`` is not set.

    One per process and configuration, shared by its threads (redis-py's pool is thread-safe):
    one connection pool to Redis and one thread giving slots back.
    """
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
    # A holder that died frees its slot once a whole request could have finished.
    lease = app_settings.CONNECT_TIMEOUT + app_settings.READ_TIMEOUT + 5
    wait = app_settings.CONCURRENCY_WAIT
    key = (os.getpid(), url, limit, account, lease, wait)
    with _limiters_lock:
        if key not in _limiters:
            _limiters[key] = RedisConcurrencyLimiter(
                url, limit, account=account, lease=lease, wait=wait
            )
        return _limiters[key]
