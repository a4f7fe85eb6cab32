"""Shared HTTP behaviour of the market-data providers that talk to a web API (binance, alpaca).

``HttpClient`` wraps one ``httpx.Client`` per fetch and gives every HTTP provider the same
resilience and the same error reporting:

- timeouts: ``PROVIDER_HTTP_CONNECT_TIMEOUT`` (default 5 s) to connect, ``PROVIDER_HTTP_READ_TIMEOUT``
  (default 30 s) between bytes of the reply (also used for write and pool waits);
- retries, at most ``PROVIDER_HTTP_MAX_RETRIES`` (default 4) after the first attempt, on timeouts,
  connection errors, 429 and every 5xx. The wait is the reply's ``Retry-After`` (seconds or an
  HTTP-date) when it has one, else exponential backoff with jitter: ``PROVIDER_HTTP_BACKOFF_BASE``
  × 2^attempt, capped at ``PROVIDER_HTTP_BACKOFF_MAX``, then a uniformly drawn point in its upper
  half ("equal jitter": workers that failed together spread out, yet none retries early).
  A provider may name another wait a reply carries (``retry_after_of``: Alpaca's
  ``X-RateLimit-Reset``), used when there is no ``Retry-After``.
  A ``Retry-After`` longer than ``PROVIDER_HTTP_RETRY_AFTER_MAX`` is not slept through: the fetch
  fails at once with an error that says how long the server asked to wait. Retrying early would
  only earn more 429s (and, at Binance, an IP ban), and holding a worker for an hour is worse
  than failing the execution, which the next scheduled run resumes from its checkpoint.
- no retry on any other status (4xx: the request itself is wrong; 3xx: redirects are not
  followed, so API keys in headers never travel to another host);
- a client-side rate limit per provider (``<PROVIDER>_MAX_REQUESTS_PER_SECOND``): request starts
  are spaced at least 1/rate apart, shared by every fetch of that provider in the process (the
  threads of ``backfill --concurrency`` included). It is per process: N worker processes may
  together send N × rate.
- ``User-Agent: marketdata-integrity/1.0``.

Where requests go (``resolve_base_url``): the endpoint comes from the provider's setting
(``BINANCE_BASE_URL``, ``ALPACA_DATA_BASE_URL``), which only the operator controls. An instrument's
``base_url`` option may change the path on that endpoint's host and port, but another host only
when ``PROVIDER_ALLOWED_HOSTS`` lists it: provider options are edited by API users, and a free
``base_url`` would let them send our API keys anywhere or probe the network from the server (a
connection error tells an open port from a closed one). API keys travel only over https, except
to a loopback host (127.0.0.0/8, ::1, localhost). The rules are checked when options are saved
(admin/API, through each provider's ``validate_options``), again when a fetch resolves its URL, and
once more by ``HttpClient`` itself before a request carrying keys is sent.

Every failure is a ``ProviderError`` carrying the provider, the URL *path* (never the host or the
query string), the HTTP status and a short excerpt of the body. Secrets handed to the client
(API keys) and the configured credentials are replaced by ``***`` in anything it puts into an
error or a log line, by the one redaction of ``base.redact``.

Sleeping goes through ``HttpClient.sleep`` and jitter through ``HttpClient.jitter`` (class
attributes, overridable per instance) so tests run fast and deterministically.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import unquote_plus

import httpx

from integrity.conf import conf

from .base import ProviderConfigError, ProviderError, excerpt, redact

logger = logging.getLogger(__name__)


class RedactingFilter(logging.Filter):
    """The one redaction (``base.redact``) over what the HTTP libraries log about our requests: the
    URL with its query string (which may carry a reply-derived page token) at INFO, and at DEBUG
    the reply's headers."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        decoded = unquote_plus(redacted)  # a query string spells a secret %-encoded
        if redact(decoded) != decoded:
            redacted = redact(decoded)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


for _name in ("httpx", "httpcore.connection", "httpcore.http11"):
    _logger = logging.getLogger(_name)
    if not any(isinstance(f, RedactingFilter) for f in _logger.filters):
        _logger.addFilter(RedactingFilter())

USER_AGENT = "marketdata-integrity/1.0"
ALLOWED_HOSTS_SETTING = "PROVIDER_ALLOWED_HOSTS"
KEYS_RULE = "API keys are sent only over https, except to a loopback host (127.0.0.0/8, ::1, localhost)"



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


def parse_base_url(value: Any, provider: str, source: str = "base_url", *, allow_userinfo: bool = False) -> httpx.URL:
    """An http(s) URL with a host and without query or fragment; ``ProviderConfigError`` naming
    ``source`` (the option, or the setting it came from) otherwise. User info (``user:password@``)
    only where ``allow_userinfo`` (an operator's setting, e.g. a proxy login): in an option it would
    store a password in the database, and it can make a URL read as if it went to another host."""
    url = str(value).strip()
    try:
        parsed = httpx.URL(url)
        host = parsed.host  # decoding an IDNA host may fail too (http://xn--)
    except (httpx.InvalidURL, TypeError, ValueError):
        parsed = host = None
    if parsed is None or parsed.scheme not in ("http", "https") or not host:
        raise ProviderConfigError(
            f"{source} must be an http(s) URL such as https://api.example.com, got {url!r}", provider=provider
        )
    if parsed.userinfo and not allow_userinfo:
        raise ProviderConfigError(f"{source} must not carry a user name or password", provider=provider)
    if parsed.query or parsed.fragment:
        raise ProviderConfigError(f"{source} must not carry a query string or fragment: {url!r}", provider=provider)
    return parsed


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 (also IPv4-mapped) or ``localhost``: traffic that never leaves the machine."""
    host = host.strip().lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _host_port(url: httpx.URL) -> tuple[str, int | None]:
    port = url.port or {"http": 80, "https": 443}.get(url.scheme)
    return url.host.lower().rstrip("."), port


def allowed_hosts() -> list[tuple[str, int | None]]:
    """``PROVIDER_ALLOWED_HOSTS``: (host, port) pairs; port None allows every port of the host.

    Entries are host names or addresses, optionally with a port: ``md-proxy.internal``,
    ``md-proxy.internal:8443``, ``10.0.0.5``, ``[fd00::5]:8080``. A string is split at commas."""
    raw = conf.raw(ALLOWED_HOSTS_SETTING) or ()
    entries = raw.split(",") if isinstance(raw, str) else list(raw)
    hosts = []
    for entry in entries:
        entry = str(entry).strip()
        if not entry:
            continue
        try:
            url = httpx.URL(f"http://{entry}")
            host = url.host
        except (httpx.InvalidURL, TypeError, ValueError):
            url = host = None
        if url is None or not host or url.path not in ("", "/") or url.query or url.userinfo:
            raise ProviderConfigError(f"setting {ALLOWED_HOSTS_SETTING} must list host names or addresses, "
                                      f"optionally with :port (e.g. md-proxy.internal:8443), got {entry!r}")
        hosts.append((url.host.lower().rstrip("."), url.port))
    return hosts


def check_keys_transport(url: httpx.URL, provider: str, source: str) -> None:
    """API keys go over https, or to a loopback host; ``ProviderConfigError`` naming the rule otherwise."""
    if url.scheme != "https" and not is_loopback_host(url.host):
        raise ProviderConfigError(
            f"{source} {_origin(url)} would send the API keys over plain {url.scheme}: {KEYS_RULE}",
            provider=provider)


def _origin(url: httpx.URL) -> str:
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{url.scheme}://{host}" + (f":{url.port}" if url.port else "")


def resolve_base_url(options: Mapping[str, Any], setting_name: str, default: str, provider: str, *,
                     sends_keys: bool = False) -> str:
    """The endpoint a fetch (or, when options are saved, a future fetch) talks to.

    The setting ``setting_name`` names it (else the public ``default``). An instrument's
    ``base_url`` option is used instead when it keeps the setting's host and port (another path
    there, e.g. a prefix on a proxy) or when its host is listed in ``PROVIDER_ALLOWED_HOSTS``;
    otherwise it is refused. With ``sends_keys`` the result must be https or a loopback host.
    Every refusal is a ``ProviderConfigError`` that names the rule.
    """
    option = options.get("base_url")
    chosen = parse_base_url(option, provider) if option not in (None, "") else None
    source = f"setting {setting_name}"
    configured_value = conf.lookup(setting_name, default)
    configured = parse_base_url(configured_value, provider, source, allow_userinfo=True)
    if chosen is not None and _host_port(chosen) != _host_port(configured):
        host, port = _host_port(chosen)
        if not any(host == allowed and (allowed_port is None or allowed_port == port)
                   for allowed, allowed_port in allowed_hosts()):
            raise ProviderConfigError(
                f"base_url {_origin(chosen)} is not allowed: provider endpoints come from the server's "
                f"settings; an instrument's base_url may only keep the host and port of the setting "
                f"{setting_name} ({_origin(configured)}) or point at a host listed in "
                f"{ALLOWED_HOSTS_SETTING}", provider=provider)
    url, value = (chosen, option) if chosen is not None else (configured, configured_value)
    if sends_keys:
        check_keys_transport(url, provider, "base_url" if chosen is not None else source)
    return str(value).strip().rstrip("/")


def page_limit(options: Mapping[str, Any], maximum: int, provider: str) -> int:
    """The ``limit`` option: an integer 1..maximum (an integral string too), ``maximum`` when unset."""
    raw = options.get("limit")
    if raw is None or raw == "":
        return maximum
    value: int | None = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, float) and raw.is_integer():
        value = int(raw)
    elif isinstance(raw, str) and raw.strip().isdigit():
        value = int(raw.strip())
    if value is None or not 1 <= value <= maximum:
        raise ProviderConfigError(f"limit must be an integer 1..{maximum}, got {raw!r}", provider=provider)
    return value


def check_option_names(options: Any, known: Iterable[str], provider: str) -> dict[str, Any]:
    """``provider_options`` must be a JSON object naming only options this provider knows.

    Used when an instrument's options are edited (admin/API), not at fetch time: a run with
    ``--provider`` overriding the instrument's own may meet options meant for that one.
    """
    if not isinstance(options, Mapping):
        raise ProviderConfigError(f"provider_options must be a JSON object, got {type(options).__name__}",
                                  provider=provider)
    known = tuple(known)
    unknown = sorted(str(k) for k in options if k not in known)
    if unknown:
        raise ProviderConfigError(f"unknown option(s) {', '.join(unknown)}; {provider} accepts "
                                  f"{', '.join(known)}", provider=provider)
    return dict(options)


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


# --- the client -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    """One verified TLS context for the process: building one (loading the CA bundle) costs ~0.1 s,
    reusing it for every client costs nothing, and SSLContext is safe to share between threads."""
    return httpx.create_ssl_context()


def _is_retryable_status(status: int) -> bool:
    return status == 429 or 500 <= status <= 599


class HttpClient:
    """GET requests with timeouts, retries, a rate limit and safe errors, for one provider."""

    sleep: Callable[[float], None] = staticmethod(time.sleep)
    jitter: Callable[[], float] = staticmethod(random.random)  # uniform in [0, 1)

    def __init__(
        self,
        provider: str,
        base_url: str,
        config: HttpConfig,
        *,
        headers: Mapping[str, str] | None = None,
        secrets: Iterable[str] = (),
        explain_status: Callable[[httpx.Response, str], str | None] | None = None,
        retry_after_of: Callable[[httpx.Response], float | None] | None = None,
    ):
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self.config = config
        self.secrets = tuple(s for s in secrets if s)
        self._endpoint = parse_base_url(self.base_url, provider, allow_userinfo=True)
        if self.secrets:
            # The last guard before keys leave the process, whatever resolved the URL.
            check_keys_transport(self._endpoint, provider, "base_url")
        self.explain_status = explain_status
        self.retry_after_of = retry_after_of
        self.limiter = rate_limiter(provider, config.max_requests_per_second)
        self._client = httpx.Client(
            headers={"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})},
            timeout=httpx.Timeout(config.read_timeout, connect=config.connect_timeout),
            follow_redirects=False,
            verify=_ssl_context(),
        )

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    # -- helpers --------------------------------------------------------------------------------

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)

    def excerpt(self, response: httpx.Response) -> str:
        try:
            text = response.text
        except Exception:  # undecodable bytes: show what we can
            text = response.content.decode("utf-8", "replace")
        return excerpt(text, self.secrets)

    def error(self, message: str, *, path: str, response: httpx.Response | None = None,
              cls: type[ProviderError] = ProviderError) -> ProviderError:
        return cls(
            self.redact(message),
            provider=self.provider,
            path=path,
            status=response.status_code if response is not None else None,
            body_excerpt=self.excerpt(response) if response is not None else "",
        )

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with equal jitter: a point in [d/2, d], d = base × 2^attempt (capped)."""
        delay = min(self.config.backoff_max, self.config.backoff_base * (2 ** attempt))
        return delay / 2 + self.jitter() * delay / 2

    def _throttle(self) -> None:
        wait = self.limiter.reserve()
        if wait > 0:
            self.sleep(wait)

    # -- requests -------------------------------------------------------------------------------

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> httpx.Response:
        """GET ``base_url + path``; the successful (2xx) response, or ``ProviderError``."""
        url = self.base_url + path
        target = httpx.URL(url)
        url_path = target.path
        if _host_port(target) != _host_port(self._endpoint):  # a path can never move a request elsewhere
            raise self.error(f"request path {path!r} leaves the endpoint's host", path="",
                             cls=ProviderConfigError)
        attempts = self.config.max_retries + 1
        for attempt in range(attempts):
            self._throttle()
            response: httpx.Response | None = None
            retry_after: float | None = None
            try:
                response = self._client.get(url, params=params)
            except httpx.TimeoutException as exc:
                problem = f"{_timeout_kind(exc)}timeout ({self._timeout_of(exc):g}s)"
            except httpx.UnsupportedProtocol as exc:
                raise self.error(f"unsupported URL: {exc}", path=url_path, cls=ProviderConfigError) from exc
            except (httpx.TransportError, httpx.DecodingError) as exc:
                # Includes a body cut short by the connection (RemoteProtocolError) and a corrupt
                # compressed body: both may be transient.
                problem = f"connection error ({exc.__class__.__name__}: {exc})"
            else:
                status = response.status_code
                if response.is_success:
                    return response
                if not _is_retryable_status(status):
                    message = None
                    if self.explain_status is not None:
                        message = self.explain_status(response, url_path)
                    raise self.error(message or f"request rejected: HTTP {status} {response.reason_phrase}",
                                     path=url_path, response=response)
                problem = f"HTTP {status} {response.reason_phrase}"
                retry_after, source = parse_retry_after(response.headers.get("Retry-After")), "Retry-After"
                if retry_after is None and self.retry_after_of is not None:
                    retry_after, source = self.retry_after_of(response), "rate-limit reset header"
                if retry_after is not None and retry_after > self.config.retry_after_max:
                    raise self.error(
                        f"{problem}: the server asked to wait {retry_after:g}s before retrying ({source}), "
                        f"more than PROVIDER_HTTP_RETRY_AFTER_MAX={self.config.retry_after_max:g}s; giving up",
                        path=url_path, response=response,
                    )
            if attempt + 1 >= attempts:
                raise self.error(f"{problem}; giving up after {attempts} attempt(s)", path=url_path,
                                 response=response)
            delay = retry_after if retry_after is not None else self.backoff(attempt)
            logger.warning("%s: GET %s failed: %s; retry %d/%d in %.2fs", self.provider, url_path,
                           self.redact(problem), attempt + 1, self.config.max_retries, delay)
            self.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def get_json(self, path: str, params: Mapping[str, Any] | None = None) -> tuple[Any, httpx.Response]:
        """GET and decode JSON; a body that is not complete JSON is a ``ProviderError``."""
        response = self.get(path, params)
        try:
            return json.loads(response.content), response
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise self.error(f"malformed JSON in the reply (not JSON, or truncated): {exc}",
                             path=response.url.path, response=response) from None

    def _timeout_of(self, exc: httpx.TimeoutException) -> float:
        if isinstance(exc, httpx.ConnectTimeout):
            return self.config.connect_timeout
        return self.config.read_timeout


def _timeout_kind(exc: httpx.TimeoutException) -> str:
    return {
        httpx.ConnectTimeout: "connect ",
        httpx.ReadTimeout: "read ",
        httpx.WriteTimeout: "write ",
        httpx.PoolTimeout: "pool ",
    }.get(type(exc), "")
