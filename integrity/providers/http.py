"""The HTTP client of the market-data providers that talk to a web API (binance, alpaca).

``HttpClient`` wraps one ``httpx.Client`` per fetch and gives every HTTP provider the same
resilience and the same error reporting: GET requests with the timeouts, retries, ``Retry-After``
handling and client-side rate limit of ``http_policy`` (its ``HttpConfig``; shared by every process
through Redis when ``REDIS_URL`` is set, ``limits``), an optional request-weight budget (Binance's,
``limits.WeightBudget``), redirects never
followed, ``User-Agent: marketdata-integrity/1.0``, and a request never sent off the endpoint's
host, nor with API keys over plain http (the rules of ``options``).

Every failure is a ``ProviderError`` carrying the provider, the URL *path* (never the host or the
query string), the HTTP status and a short excerpt of the body. Secrets handed to the client
(API keys) and the configured credentials are replaced by ``***`` in anything it puts into an
error or a log line, by the one redaction of ``base.redact``; a log filter applies it to what the
HTTP libraries log about our requests.

Sleeping goes through ``HttpClient.sleep`` and jitter through ``HttpClient.jitter`` (class
attributes, overridable per instance) so tests run fast and deterministically.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import unquote_plus

import httpx

from .base import ProviderConfigError, ProviderError, excerpt, redact
from .http_policy import HttpConfig, backoff_delay, is_retryable_status, parse_retry_after
from .limits import Pacer, WeightBudget
from .options import check_keys_transport, host_port, parse_base_url

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


# --- the client -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    """One verified TLS context for the process: building one loads the CA bundle (slow),
    reusing it for every client costs nothing, and SSLContext is safe to share between threads."""
    return httpx.create_ssl_context()


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
        weight_budget: WeightBudget | None = None,
        request_weight: int = 1,
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
        self.limiter = Pacer(provider, self.endpoint_key, config.max_requests_per_second)
        self.weight_budget, self.request_weight = weight_budget, request_weight
        self._client = httpx.Client(
            headers={"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})},
            timeout=httpx.Timeout(config.read_timeout, connect=config.connect_timeout),
            follow_redirects=False,
            verify=_ssl_context(),
        )

    @property
    def endpoint_key(self) -> str:
        """``host:port`` of the endpoint: what the shared limits are kept per (``limits``)."""
        host, port = host_port(self._endpoint)
        return f"{host}:{port}"

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
        """The policy's backoff (``http_policy.backoff_delay``) with this client's jitter."""
        return backoff_delay(self.config, attempt, self.jitter())

    def _throttle(self) -> None:
        """Before every attempt: room in the weight budget (may wait for the next minute), then a slot."""
        if self.weight_budget is not None:
            self.weight_budget.take(self.request_weight, self.sleep)
        wait = self.limiter.reserve()
        if wait > 0:
            self.sleep(wait)

    # -- requests -------------------------------------------------------------------------------

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> httpx.Response:
        """GET ``base_url + path``; the successful (2xx) response, or ``ProviderError``."""
        url = self.base_url + path
        target = httpx.URL(url)
        url_path = target.path
        if host_port(target) != host_port(self._endpoint):  # a path can never move a request elsewhere
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
                if not is_retryable_status(status):
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
