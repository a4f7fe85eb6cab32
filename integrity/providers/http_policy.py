"""The retry and rate-limit policy of the providers that call a web API (binance, alpaca, ccxt).

What this module owns, all read from settings at fetch time (``HttpConfig.from_settings``):

- timeouts: ``PROVIDER_HTTP_CONNECT_TIMEOUT`` (default 5 s) to connect, ``PROVIDER_HTTP_READ_TIMEOUT``
  (default 30 s) between bytes of the reply (also used for write and pool waits);
- retries, at most ``PROVIDER_HTTP_MAX_RETRIES`` (default 4) after the first attempt, on timeouts,
  connection errors, 429 and every 5xx (``is_retryable_status``). The wait is the reply's
  ``Retry-After`` (seconds or an HTTP-date, ``parse_retry_after``) when it has one, else
  exponential backoff with jitter: ``PROVIDER_HTTP_BACKOFF_BASE`` × 2^attempt, capped at
  ``PROVIDER_HTTP_BACKOFF_MAX``, then a uniformly drawn point in its upper half ("equal jitter":
  workers that failed together spread out, yet none retries early; ``backoff_delay``).
  A ``Retry-After`` longer than ``PROVIDER_HTTP_RETRY_AFTER_MAX`` is not slept through: the fetch
  fails at once with an error that says how long the server asked to wait. Retrying early would
  only earn more 429s (and, at Binance, an IP ban), and holding a worker for an hour is worse
  than failing the execution, which the next scheduled run resumes from its checkpoint.
- no retry on any other status (4xx: the request itself is wrong; 3xx: redirects are not
  followed, so API keys in headers never travel to another host);
- a client-side rate limit per provider (``<PROVIDER>_MAX_REQUESTS_PER_SECOND``, ``rate_limiter``):
  request starts are spaced at least 1/rate apart, shared by every fetch of that provider in the
  process (the threads of ``backfill --concurrency`` included). With ``REDIS_URL`` set the rate is
  shared by every process on every host instead (``limits.Pacer``); this per-process limiter is
  the fallback when Redis is not configured or not reachable.

The client that applies the policy to HTTP requests is ``http.HttpClient``; ``ccxt_calls`` applies
it to ccxt's calls.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from integrity.conf import conf

from .base import ProviderConfigError


def number_setting(name: str, default: float | None = None, *, provider: str = "", minimum: float = 0.0,
                   integer: bool = False) -> float:
    """A numeric setting read at call time (so tests and deployments can change it); its default is the
    one ``integrity.conf`` declares (``default`` only for a name built at run time)."""
    raw = conf.lookup(name, default)
    try:
        value = int(raw) if integer else float(raw)
    except (TypeError, ValueError):
        raise ProviderConfigError(f"setting {name} must be a number, got {raw!r}", provider=provider) from None
    if value < minimum or value != value:  # value != value: NaN
        raise ProviderConfigError(f"setting {name} must be >= {minimum}, got {raw!r}", provider=provider)
    return value


@dataclass(frozen=True)
class HttpConfig:
    connect_timeout: float = conf.default("PROVIDER_HTTP_CONNECT_TIMEOUT")
    read_timeout: float = conf.default("PROVIDER_HTTP_READ_TIMEOUT")
    max_retries: int = conf.default("PROVIDER_HTTP_MAX_RETRIES")
    backoff_base: float = conf.default("PROVIDER_HTTP_BACKOFF_BASE")
    backoff_max: float = conf.default("PROVIDER_HTTP_BACKOFF_MAX")
    retry_after_max: float = conf.default("PROVIDER_HTTP_RETRY_AFTER_MAX")
    max_requests_per_second: float = 0.0  # 0: no client-side limit

    @classmethod
    def from_settings(cls, provider: str, rate_setting: str | None = None,
                      default_rate: float | None = None) -> HttpConfig:
        def get(name: str, integer: bool = False) -> float:
            return number_setting(name, provider=provider, integer=integer)

        rate = number_setting(rate_setting, default_rate, provider=provider) if rate_setting else 0.0
        return cls(
            connect_timeout=get("PROVIDER_HTTP_CONNECT_TIMEOUT"),
            read_timeout=get("PROVIDER_HTTP_READ_TIMEOUT"),
            max_retries=int(get("PROVIDER_HTTP_MAX_RETRIES", integer=True)),
            backoff_base=get("PROVIDER_HTTP_BACKOFF_BASE"),
            backoff_max=get("PROVIDER_HTTP_BACKOFF_MAX"),
            retry_after_max=get("PROVIDER_HTTP_RETRY_AFTER_MAX"),
            max_requests_per_second=rate,
        )


def is_retryable_status(status: int) -> bool:
    return status == 429 or 500 <= status <= 599


def backoff_delay(config: HttpConfig, attempt: int, jitter: float) -> float:
    """Exponential backoff with equal jitter: a point in [d/2, d], d = base × 2^attempt (capped);
    ``jitter`` is a draw from [0, 1)."""
    delay = min(config.backoff_max, config.backoff_base * (2 ** attempt))
    return delay / 2 + jitter * delay / 2


# --- client-side rate limit ---------------------------------------------------------------------


class RateLimiter:
    """Spaces request starts at least ``1 / rate`` seconds apart (thread-safe).

    ``reserve()`` books the next free slot and returns how long the caller must wait for it; the
    caller sleeps outside the lock, so concurrent threads queue up in slot order.
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.clock = clock
        self._next = 0.0
        self._lock = threading.Lock()

    def reserve(self) -> float:
        if self.rate <= 0:
            return 0.0
        with self._lock:
            now = self.clock()
            slot = max(now, self._next)
            self._next = slot + 1.0 / self.rate
            return slot - now


_limiters: dict[str, RateLimiter] = {}
_limiters_lock = threading.Lock()


def rate_limiter(provider: str, rate: float) -> RateLimiter:
    """The process-wide limiter of ``provider`` (its rate follows the current setting)."""
    with _limiters_lock:
        limiter = _limiters.get(provider)
        if limiter is None:
            limiter = _limiters[provider] = RateLimiter(rate)
        limiter.rate = rate
        return limiter


def reset_rate_limiters() -> None:
    """Forget every limiter's booked slots (tests)."""
    with _limiters_lock:
        _limiters.clear()


# --- Retry-After ----------------------------------------------------------------------------------


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date); None if absent/bad."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)
