"""Provider limits shared by every process: request pacing and Binance's weight budget in Redis.

With ``REDIS_URL`` set (or ``PROVIDER_LIMITS_REDIS_URL``, which defaults to it) the limits a provider's
settings configure are the limits of the whole deployment — every worker process on every host
that talks to the same Redis books its requests in the same place:

- **pacing** (``<PROVIDER>_MAX_REQUESTS_PER_SECOND``): request starts are spaced ``1 / rate`` apart
  across all processes. A tiny GCRA in Lua (``PACE``): the key holds the next free slot; a caller
  books it atomically and sleeps until it (the same even spacing as the per-process
  ``http_policy.RateLimiter``, so moving to Redis changes the scope, not the shape).
- **Binance's weight budget** (``BINANCE_WEIGHT_LIMIT`` × ``BINANCE_WEIGHT_THRESHOLD`` per minute):
  each request's weight is counted in the current calendar minute, as Binance counts it per IP
  (``X-MBX-USED-WEIGHT-1M``); a request that would go over waits for the next minute (``WEIGHT``).

Both scripts read the Redis server's clock (``TIME``), so hosts whose clocks disagree still agree.
Keys are ``marketdata-integrity:limits:<provider>:<host:port>:…`` (the endpoint's host, never a URL
path, a query or a credential) and expire on their own.

Why not ``pyrate-limiter``'s Redis bucket: it keeps a sorted-set entry per request and admits bursts
up to the limit within its sliding window, where our pacing spreads requests evenly; and Binance's
budget is a fixed calendar minute. Two short Lua scripts say exactly that, atomically.

Fallback: without ``REDIS_URL`` (or with ``PROVIDER_LIMITS_REDIS_URL=off``), or while Redis cannot be
reached, each process paces itself (``http_policy.rate_limiter``) and keeps its own weight budget — a warning is logged once per
outage and the backfill goes on; Redis is tried again after ``RETRY_AFTER_SECONDS``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from integrity.conf import conf

from .http_policy import rate_limiter

logger = logging.getLogger(__name__)

KEY_PREFIX = "marketdata-integrity:limits"
OFF = ("off", "false", "no", "0")
RETRY_AFTER_SECONDS = 30.0  # after a Redis error, the process paces itself this long before trying again
WINDOW_SECONDS = 60  # Binance counts request weight per calendar minute
MAX_WAITS = 3  # minutes a request waits for room in the weight budget before it goes anyway

# Books the next free slot; returns the microseconds the caller waits for it.
PACE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local slot = math.max(now, tonumber(redis.call('GET', KEYS[1]) or '0'))
local following = slot + tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%d', following), 'PX', math.floor((following - now) / 1000) + 1000)
return slot - now
"""

# Counts ARGV[1] weight in the current minute if it fits ARGV[2] (a request alone in its minute always
# fits); returns 0 when counted, else the microseconds until the next minute starts.
WEIGHT = """
local t = redis.call('TIME')
local seconds = tonumber(t[1])
local minute = math.floor(seconds / 60)
local key = KEYS[1] .. ':' .. minute
local used = tonumber(redis.call('GET', key) or '0')
local weight = tonumber(ARGV[1])
if used == 0 or used + weight <= tonumber(ARGV[2]) then
  redis.call('INCRBY', key, weight)
  redis.call('EXPIRE', key, 120)
  return 0
end
return ((minute + 1) * 60 - seconds) * 1000000 - tonumber(t[2])
"""


class _Redis:
    """The process's connection and scripts, or None while Redis is unusable (warned once an outage)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._url: str | None = None
        self._client = None
        self._scripts: dict[str, Callable] = {}
        self._down_until = 0.0
        self._warned = False

    def script(self, name: str) -> Callable | None:
        url = shared_limits_url()
        if not url:
            return None
        with self._lock:
            if url != self._url:
                self._url, self._client, self._down_until, self._warned = url, None, 0.0, False
            if time.monotonic() < self._down_until:
                return None
            if self._client is None:
                import redis

                self._client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
                self._scripts = {"pace": self._client.register_script(PACE),
                                 "weight": self._client.register_script(WEIGHT)}
            return self._scripts[name]

    def failed(self, exc: Exception) -> None:
        with self._lock:
            self._down_until = time.monotonic() + RETRY_AFTER_SECONDS
            if not self._warned:
                self._warned = True
                logger.warning("provider limits: Redis is unreachable (%s); each process paces itself until it "
                               "is back (the deployment may send more than the configured rate)",
                               exc.__class__.__name__)

    def recovered(self) -> None:
        with self._lock:
            if self._warned:
                self._warned = False
                logger.warning("provider limits: Redis is back; limits are shared again")

    def reset(self) -> None:
        with self._lock:
            self._url, self._client, self._scripts, self._down_until, self._warned = None, None, {}, 0.0, False


_redis = _Redis()


def shared_limits_url() -> str:
    """The Redis the limits are shared through ('' when they are per process)."""
    url = conf.PROVIDER_LIMITS_REDIS_URL
    return "" if url.lower() in OFF else url


def _key(provider: str, host: str, what: str) -> str:
    return f"{KEY_PREFIX}:{provider}:{host}:{what}"


def _run(name: str, keys: list[str], args: list) -> int | None:
    """A script's answer, or None when Redis is not configured or not reachable (the caller falls back)."""
    script = _redis.script(name)
    if script is None:
        return None
    try:
        answer = int(script(keys=keys, args=args))
    except Exception as exc:  # noqa: BLE001 — any Redis trouble: pace per process, never fail the fetch
        _redis.failed(exc)
        return None
    _redis.recovered()
    return answer


class Pacer:
    """Spaces one provider's request starts at least ``1 / rate`` apart: across processes through
    Redis when configured, else in this process (``http_policy.rate_limiter``)."""

    def __init__(self, provider: str, host: str, rate: float):
        self.provider, self.host, self.rate = provider, host, rate

    def reserve(self) -> float:
        """Book the next slot; the seconds to wait for it."""
        if self.rate <= 0:
            return 0.0
        wait_us = _run("pace", [_key(self.provider, self.host, "pace")], [int(1_000_000 / self.rate)])
        if wait_us is None:
            return rate_limiter(self.provider, self.rate).reserve()
        return max(0, wait_us) / 1_000_000


class _LocalWeight:
    """The per-process weight budget (fallback): a count per calendar minute of the local clock."""

    def __init__(self):
        self._lock = threading.Lock()
        self._minute: dict[str, tuple[int, float]] = {}

    def reserve(self, key: str, weight: float, budget: float, clock: Callable[[], float] = time.time) -> float:
        with self._lock:
            now = clock()
            minute = int(now // WINDOW_SECONDS)
            current, used = self._minute.get(key, (minute, 0.0))
            if current != minute:
                used = 0.0
            if used == 0 or used + weight <= budget:
                self._minute[key] = (minute, used + weight)
                return 0.0
            return (minute + 1) * WINDOW_SECONDS - now

    def reset(self) -> None:
        with self._lock:
            self._minute.clear()


_local_weight = _LocalWeight()


class WeightBudget:
    """At most ``budget`` request weight per calendar minute for one provider endpoint (all processes
    through Redis when configured, else this process)."""

    def __init__(self, provider: str, host: str, budget: float):
        self.provider, self.host, self.budget = provider, host, budget

    def reserve(self, weight: float) -> float:
        """Count ``weight`` now if it fits this minute's budget (0.0), else the seconds until the next
        minute, when the caller asks again."""
        key = _key(self.provider, self.host, "weight")
        wait_us = _run("weight", [key], [int(weight), int(self.budget)])
        if wait_us is None:
            return _local_weight.reserve(key, weight, self.budget)
        return max(0, wait_us) / 1_000_000

    def take(self, weight: float, sleep: Callable[[float], None]) -> float:
        """Wait (through ``sleep``) until ``weight`` fits, then count it; the seconds waited in all.

        A minute's budget is raced for by every waiting process when it opens, so a request may wait
        more than one minute; after ``MAX_WAITS`` minutes it goes anyway (the server's own 429 and
        ``X-MBX-USED-WEIGHT-1M`` remain the last word)."""
        waited = 0.0
        for _ in range(MAX_WAITS):
            wait = self.reserve(weight)
            if wait <= 0:
                return waited
            logger.warning("%s: the request weight budget of %g a minute is spent; waiting %.1fs for the "
                           "next minute", self.provider, self.budget, wait)
            sleep(wait)
            waited += wait
        return waited


def reset_shared_limits() -> None:
    """Forget the connection and the per-process weight counts (tests)."""
    _redis.reset()
    _local_weight.reset()
